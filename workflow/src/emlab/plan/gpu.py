"""GPU-memory estimate per model stage, from the model's shape and the config.

A user choosing nodes before submitting wants to know, per stage, what the
weights, the KV cache and the transient activations need. The numbers are
computed from the architecture (no weights are loaded, nothing runs):

- weights: every parameter of a Llama/Qwen-style decoder (embeddings, q/k/v/o
  with optional q/k/v biases, gated MLP, RMS norms, an untied lm_head) times
  the bytes of the dtype; a known-answer test checks the count against a real
  model built from a config.
- KV cache: 2 (keys and values) x layers x kv_heads x head_dim x bytes per
  token, times batch x tokens; a test checks it against a real cache.
- transient activations (documented upper-bound approximations):
  generation, one decoding step: the fp32 logits of the batch (batch x vocab x 4);
  activation caching, one teacher-forced forward without a KV cache:
  the largest per-layer intermediates, batch x seq x (2 x intermediate + 4 x d)
  in the dtype, plus the fp32 copy the reading hook makes (batch x seq x d x 4)
  and the [batch, L, 2, d] sums;
  LoRA scalars and token significance: the activation-caching forward twice
  (fine-tune and base), plus the fp32 next-token distributions of both and
  their KL terms (3 x batch x seq x vocab x 4);
  fine-tuning: the activations autograd keeps for every layer, about
  batch x seq x layers x (6 x d + 3 x intermediate) in the dtype (halved by
  gradient checkpointing to about one layer's worth), the fp32 logits of the
  micro-batch for the loss (batch x seq x vocab x 4, twice for their gradient),
  and trainable parameters in fp32 with their gradient and two AdamW moments
  (16 bytes each).
Attention scores are not counted: PyTorch's SDPA kernels on a GPU do not
materialise [batch, heads, seq, seq]. The known shapes of Gemma 3 4B and up are
their text decoder's: their vision tower (about 0.4B parameters) is not counted.

A config with several base models (`base_models`) gets one row per model
(`plan_models`): each model's own fine-tunes (its view of the config, with its
trait-monitor runs), its weights from its shape or from
`base_models.<key>.memory_gb` when that is set.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
from pathlib import Path

from emlab.core.config import model_config
from emlab.core.errors import EMLabError

GIB = 1024**3
DTYPE_BYTES = {"bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2, "fp32": 4, "float32": 4}
# Published architecture facts of models the paper configs name, for planning
# offline (their config.json on the hub holds the same numbers).
KNOWN_SHAPES_FILE = Path(__file__).with_name("model_shapes.json")


@dataclasses.dataclass(frozen=True)
class ModelShape:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    attention_bias: bool  # q, k and v projections carry biases (Qwen2), o_proj does not

    @classmethod
    def from_hf_config(cls, cfg: dict) -> ModelShape:
        cfg = cfg.get("text_config") or cfg
        heads = int(cfg["num_attention_heads"])
        bias = cfg.get("attention_bias")
        if bias is None:  # Qwen2 configs do not spell it: their q/k/v always have biases
            bias = cfg.get("model_type") == "qwen2"
        return cls(
            hidden_size=int(cfg["hidden_size"]),
            intermediate_size=int(cfg["intermediate_size"]),
            num_hidden_layers=int(cfg["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads),
            vocab_size=int(cfg["vocab_size"]),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(bias),
        )

    def n_parameters(self) -> int:
        d, i, hd = self.hidden_size, self.intermediate_size, self.head_dim
        q, kv = self.num_attention_heads * hd, self.num_key_value_heads * hd
        attn = d * q + 2 * d * kv + q * d + ((q + 2 * kv) if self.attention_bias else 0)
        mlp = 3 * d * i
        per_layer = attn + mlp + 2 * d  # two RMS norms
        embed = self.vocab_size * d
        return embed * (1 if self.tie_word_embeddings else 2) + self.num_hidden_layers * per_layer + d

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * dtype_bytes


def model_shape(source: str) -> ModelShape:
    """The shape of a local model folder, a known model id (offline), or any hub id (needs the network)."""
    if (Path(source) / "config.json").is_file():
        return ModelShape.from_hf_config(model_config(source))
    known = json.loads(KNOWN_SHAPES_FILE.read_text())
    if source in known:
        return ModelShape.from_hf_config(known[source])
    try:
        return ModelShape.from_hf_config(model_config(source))
    except (OSError, ValueError) as exc:
        raise EMLabError(
            f"cannot read the shape of base model {source!r} ({exc.__class__.__name__}); "
            f"point base_model.source at a local folder, or add it to {KNOWN_SHAPES_FILE.name}"
        ) from None


@dataclasses.dataclass(frozen=True)
class StageEstimate:
    stage: str
    weights_gib: float
    cache_gib: float
    activations_gib: float
    note: str

    @property
    def total_gib(self) -> float:
        return self.weights_gib + self.cache_gib + self.activations_gib


def lora_trainable_parameters(shape: ModelShape, rank: int, modules: list[str], n_layers: int) -> int:
    d, i = shape.hidden_size, shape.intermediate_size
    q, kv = shape.num_attention_heads * shape.head_dim, shape.num_key_value_heads * shape.head_dim
    dims = {
        "q_proj": (d, q),
        "k_proj": (d, kv),
        "v_proj": (d, kv),
        "o_proj": (q, d),
        "gate_proj": (d, i),
        "up_proj": (d, i),
        "down_proj": (i, d),
    }
    unknown = sorted(set(modules) - set(dims))
    if unknown:
        raise EMLabError(f"gpu plan: unknown target module(s) {unknown} (known: {', '.join(dims)})")
    return n_layers * sum(rank * (dims[m][0] + dims[m][1]) for m in modules)


def estimate_stages(
    shape: ModelShape,
    *,
    dtype_bytes: int,
    generation_batch: int,
    generation_tokens: int,
    activation_batch: int,
    activation_tokens: int,
    train_batch: int,
    train_tokens: int,
    trainable_parameters: int,
    gradient_checkpointing: bool,
) -> list[StageEstimate]:
    """Per-stage memory (GiB) of one model job, by the rules in the module docstring."""
    d, i, L, V = shape.hidden_size, shape.intermediate_size, shape.num_hidden_layers, shape.vocab_size
    weights = shape.n_parameters() * dtype_bytes / GIB
    kv = shape.kv_bytes_per_token(dtype_bytes) * generation_batch * generation_tokens / GIB
    gen_act = generation_batch * V * 4 / GIB
    bt = activation_batch * activation_tokens
    act = (bt * (2 * i + 4 * d) * dtype_bytes + bt * d * 4 + activation_batch * L * 2 * d * 4) / GIB
    tt = train_batch * train_tokens
    kept_layers = 1 if gradient_checkpointing else L
    train_act = (
        tt * kept_layers * (6 * d + 3 * i) * dtype_bytes
        + (tt * d * L * dtype_bytes if gradient_checkpointing else 0)
        + 2 * tt * V * 4
    ) / GIB
    trainable = trainable_parameters * 16 / GIB
    return [
        StageEstimate(
            "generate",
            weights,
            kv,
            gen_act,
            f"KV cache at batch {generation_batch} x {generation_tokens} tokens; fp32 logits of one step",
        ),
        StageEstimate(
            "cache_activations",
            weights,
            0.0,
            act,
            f"one forward of {activation_batch} x {activation_tokens} tokens, no KV cache",
        ),
        StageEstimate(
            "lora_scalars",
            weights,
            0.0,
            act + 3 * bt * V * 4 / GIB,
            f"teacher-forced fine-tune and base forwards of {activation_batch} x {activation_tokens} tokens "
            "with their fp32 next-token distributions",
        ),
        StageEstimate(
            "finetune",
            weights,
            0.0,
            train_act + trainable,
            f"micro-batch {train_batch} x {train_tokens} tokens, {trainable_parameters:,} trainable "
            f"parameters{', gradient checkpointing' if gradient_checkpointing else ''}",
        ),
    ]


def _dtype_bytes(cfg: dict) -> int:
    dtype = cfg["dtype"]
    dtype_bytes = DTYPE_BYTES.get("bf16" if dtype == "auto" else dtype)
    if dtype_bytes is None:
        raise EMLabError(f"gpu plan: dtype {dtype!r} is not one of auto, {', '.join(DTYPE_BYTES)}")
    return dtype_bytes


@dataclasses.dataclass(frozen=True)
class TrainingLoad:
    """What the finetune stage is sized for: the fine-tune with the most trainable parameters."""

    finetune: str | None
    trainable: int
    gradient_checkpointing: bool
    batch: int  # the largest micro-batch and length of any of the model's fine-tunes
    length: int


def training_load(cfg: dict, shape: ModelShape) -> TrainingLoad:
    from emlab.core.config import lora_layers, training_settings

    largest, trainable, checkpointing, batch, length = None, 0, False, 1, 1
    for name, ft in cfg["finetunes"].items():
        tr = training_settings(cfg, name)
        if ft["lora"] is None:
            n = shape.n_parameters()
        else:
            n = lora_trainable_parameters(
                shape,
                int(ft["lora"]["rank"]),
                list(ft["lora"]["target_modules"]),
                len(lora_layers(ft["lora"], shape.num_hidden_layers)),
            )
        if n >= trainable:
            largest, trainable, checkpointing = name, n, bool(tr["gradient_checkpointing"])
        batch, length = max(batch, int(tr["per_device_batch_size"])), max(length, int(tr["max_length"]))
    return TrainingLoad(largest, trainable, checkpointing, batch, length)


def config_stages(cfg: dict, shape: ModelShape, dtype_bytes: int, load: TrainingLoad) -> list[StageEstimate]:
    gen = cfg["generation"]
    prompt_tokens = 600  # a generous chat prompt (system turn, question, template) before the answer
    total_tokens = prompt_tokens + int(gen["max_new_tokens"])
    return estimate_stages(
        shape,
        dtype_bytes=dtype_bytes,
        generation_batch=int(gen["batch_size"]),
        generation_tokens=total_tokens,
        activation_batch=int(cfg["activations"]["batch_size"]),
        activation_tokens=total_tokens,
        train_batch=load.batch,
        train_tokens=load.length,
        trainable_parameters=load.trainable,
        gradient_checkpointing=load.gradient_checkpointing,
    )


def plan_config(cfg: dict) -> tuple[ModelShape, list[StageEstimate], int]:
    """The estimate for a validated one-model config (base_model), in bf16 unless its dtype says otherwise."""
    from emlab.plan.models import is_multi

    if is_multi(cfg):
        raise EMLabError("gpu plan: the config names its models under base_models; plan them with plan_models")
    source = cfg["base_model"]["source"]
    if source == "embedded":
        raise EMLabError(
            "gpu plan: the embedded demo model needs no GPU plan; run it on a config with a GPU model "
            "(e.g. --configfile data/configs/paper.yaml)"
        )
    shape = model_shape(source)
    dtype_bytes = _dtype_bytes(cfg)
    return shape, config_stages(cfg, shape, dtype_bytes, training_load(cfg, shape)), dtype_bytes


@dataclasses.dataclass(frozen=True)
class ModelPlan:
    """One base model's row of a several-model plan (GiB)."""

    key: str
    source: str
    n_parameters: int | None  # from its shape; None when it is not known
    weights_gib: float | None  # None: neither its shape nor memory_gb is known
    stages: dict[str, StageEstimate]  # the stages this model runs (empty without a shape)
    load: TrainingLoad | None  # its finetune stage's fine-tune (None: it fine-tunes nothing)
    note: str  # where the weights come from when not from the shape, or why there is no estimate


def plan_models(cfg: dict) -> list[ModelPlan]:
    """One plan per base model of a validated config (either form), in config order.

    Each model is planned on its own view of the config (emlab.plan.models.model_view) with its trait-monitor
    runs registered, so its finetune stage is sized for the fine-tunes it runs. Its weights come from its
    shape (model_shape), replaced by base_models.<key>.memory_gb (GB at bf16) when that is set; a model with
    neither gets a row saying so.
    """
    from emlab.plan.models import check_models, model_view
    from emlab.plan.monitor import register_model_runs
    from emlab.plan.study import lora_interp_finetunes

    dtype_bytes = _dtype_bytes(cfg)
    plans = []
    for key, bm in check_models(cfg).items():
        where = bm.config_key
        if bm.source == "embedded":
            plans.append(ModelPlan(key, bm.source, None, None, {}, None, "the embedded demo model needs no GPU plan"))
            continue
        view = copy.deepcopy(model_view(cfg, key))
        register_model_runs(view, cfg, key)
        given = None if bm.memory_gb is None else bm.memory_gb * 1e9 / GIB * dtype_bytes / 2
        try:
            shape = model_shape(bm.source)
        except EMLabError:
            shape = None
        if shape is None:
            note = (
                f"{where}.memory_gb only: add its shape to {KNOWN_SHAPES_FILE.name} for the stages"
                if given is not None
                else f"no shape for {bm.source}: add it to {KNOWN_SHAPES_FILE.name}, point {where}.source at a "
                f"local folder, or set {where}.memory_gb"
            )
            plans.append(ModelPlan(key, bm.source, None, given, {}, None, note))
            continue
        load = training_load(view, shape) if view["finetunes"] else None
        stages = config_stages(view, shape, dtype_bytes, load or TrainingLoad(None, 0, False, 1, 1))
        if given is not None:
            stages = [dataclasses.replace(s, weights_gib=given) for s in stages]
        keep = {"generate", "cache_activations"}
        if lora_interp_finetunes(view, shape.num_hidden_layers):
            keep.add("lora_scalars")
        if load is not None:
            keep.add("finetune")
        plans.append(
            ModelPlan(
                key,
                bm.source,
                shape.n_parameters(),
                stages[0].weights_gib,
                {s.stage: s for s in stages if s.stage in keep},
                load,
                f"weights from {where}.memory_gb" if given is not None else "",
            )
        )
    return plans


def format_plan(source: str, shape: ModelShape, stages: list[StageEstimate], dtype_bytes: int) -> str:
    lines = [
        f"GPU memory per model job: {source}, {shape.n_parameters() / 1e9:.2f}B parameters, {dtype_bytes}-byte weights",
        f"{'stage':<18} {'weights':>8} {'KV cache':>9} {'activ.':>8} {'total':>8}  (GiB)",
    ]
    for s in stages:
        lines.append(
            f"{s.stage:<18} {s.weights_gib:8.1f} {s.cache_gib:9.1f} {s.activations_gib:8.1f} "
            f"{s.total_gib:8.1f}  {s.note}"
        )
    lines.append(
        "Approximations are documented in emlab/plan/gpu.py; generation halves its batch on an "
        "out-of-memory error, so the KV cache is the first thing to shrink."
    )
    return "\n".join(lines)


STAGE_COLUMNS = ("generate", "cache_activations", "lora_scalars", "finetune")


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"


def format_models(plans: list[ModelPlan], dtype_bytes: int) -> str:
    """The several-model plan: one row per base model, each stage's total (weights + KV cache + activations)."""
    key_w = max(len("model"), *(len(p.key) for p in plans))
    src_w = max(len("source"), *(len(p.source) for p in plans))
    widths = {stage: max(len(stage), 8) for stage in STAGE_COLUMNS}
    header = f"{'model':<{key_w}} {'source':<{src_w}} {'params':>7} {'weights':>8} "
    header += (
        " ".join(f"{stage:>{widths[stage]}}" for stage in STAGE_COLUMNS)
        + f" {'max':>6}  (GiB)  the finetune stage is sized for"
    )
    lines = [
        f"GPU memory per model job and base model ({len(plans)} models, {dtype_bytes}-byte weights; each stage: "
        "weights + KV cache + activations; -: the model does not run that stage)",
        header,
    ]
    for p in plans:
        params = _count(p.n_parameters) if p.n_parameters else "?"
        weights = f"{p.weights_gib:8.1f}" if p.weights_gib is not None else f"{'?':>8}"
        cells = []
        for stage in STAGE_COLUMNS:
            est = p.stages.get(stage)
            cells.append(
                f"{est.total_gib:{widths[stage]}.1f}" if est else f"{'-' if p.stages else '?':>{widths[stage]}}"
            )
        peak = f"{max(s.total_gib for s in p.stages.values()):6.1f}" if p.stages else f"{'?':>6}"
        detail = []
        if p.load is not None:
            ckpt = ", gradient checkpointing" if p.load.gradient_checkpointing else ""
            detail.append(f"{p.load.finetune} ({_count(p.load.trainable)} trainable{ckpt})")
        if p.note:
            detail.append(p.note)
        lines.append(
            f"{p.key:<{key_w}} {p.source:<{src_w}} {params:>7} {weights} {' '.join(cells)} {peak}  " + "; ".join(detail)
        )
    first = next((p for p in plans if p.stages), None)
    if first is not None:
        for stage in ("generate", "cache_activations", "lora_scalars"):
            est = next((p.stages[stage] for p in plans if stage in p.stages), None)
            if est is not None:
                lines.append(f"{stage}: {est.note}")
        batches = sorted({(p.load.batch, p.load.length) for p in plans if p.load is not None and p.stages})
        if batches:
            lines.append(
                "finetune: micro-batch "
                + ", ".join(f"{b} x {t}" for b, t in batches)
                + " tokens, sized for the model's fine-tune with the most trainable parameters (its own study's "
                "and its trait-monitor runs'); a device_map spreads this total over several GPUs"
            )
    lines.append(
        "Weights: from the model's shape (model_shapes.json or a local config.json), or base_models.<key>.memory_gb "
        "(GB at bf16) when set. Approximations are documented in emlab/plan/gpu.py; generation halves its batch "
        "on an out-of-memory error, so the KV cache is the first thing to shrink."
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    from emlab.core.config import load_config
    from emlab.plan.models import is_multi

    ap = argparse.ArgumentParser(description="GPU-memory estimate per model stage for a config")
    ap.add_argument("--configfile", default="data/configs/paper.yaml")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.configfile)
        if is_multi(cfg):
            print(format_models(plan_models(cfg), _dtype_bytes(cfg)))
            return 0
        shape, stages, dtype_bytes = plan_config(cfg)
    except EMLabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_plan(cfg["base_model"]["source"], shape, stages, dtype_bytes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
