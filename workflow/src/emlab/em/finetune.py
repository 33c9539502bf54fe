"""Fine-tuning (LoRA with peft, or full) with a plain PyTorch loop (no HF Trainer).

Loss is on the final assistant reply and its end-of-turn tokens only (the same
span emlab.model.chat uses everywhere). The loop follows the reference recipe: AdamW,
linear warm-up then linear decay to 0, weight decay, grad-norm clipping at 1.0,
gradient accumulation, seeded shuffling. Every optimiser step logs the loss,
learning rate, grad norm and the norms of every adapter's A and B matrices
(the rank-1 phase-transition analysis reads these). Optional checkpoints hold a
loadable adapter plus optimiser/scheduler/RNG state, and a restarted run
resumes from the last one and ends with the same adapter.

Training is one function, `fine_tune`, in named steps: prepare_data, build_model,
build_progress (optimiser, schedule, fingerprint), resume_or_start, train_steps
(with per-step callbacks, e.g. a live monitor) and write_outputs. Settings come
typed (TrainingSettings, LoraSettings) from the validated config.

Full fine-tuning (lora None) trains every weight with the same loop and
writes a complete model folder (config, weights, tokenizer) in place of the
adapter folder; models.load_model tells the two apart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from emlab.core.atomic import atomic_dir, write_csv, write_json
from emlab.core.errors import EMLabError
from emlab.em.datasets import file_sha256, load_chat_jsonl, prompt_and_answer
from emlab.model.batching import pad_batch, pad_sequences, pad_token_id
from emlab.model.chat import encode_exchange
from emlab.model.loading import decoder_layers, decoder_layers_path, resolve_device, resolve_dtype

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
CLIP_GRAD_NORM = 1.0
# Checkpoint-time eval uses only the first examples of the eval split, so frequent
# checkpoints (the phase-transition analysis) do not cost more than the training;
# the full split is evaluated before training and at the end (column eval_loss).
EVAL_SUBSET = 64
TRAINING_STATE = "training_state.pt"
FULL_WEIGHTS = "model.safetensors"
AUTOCAST_CHOICES = ("auto", "bf16", "off")


@dataclass(frozen=True)
class TrainingSettings:
    """The `training` section of a fine-tune (schema definitions.training; defaults live there)."""

    learning_rate: float
    epochs: int
    per_device_batch_size: int
    gradient_accumulation_steps: int
    warmup_steps: int
    weight_decay: float
    max_length: int
    max_train_examples: int | None
    max_eval_examples: int | None
    checkpoint_every: int
    gradient_checkpointing: bool
    autocast: str
    device_map: str | dict | None


@dataclass(frozen=True)
class LoraSettings:
    """A fine-tune's `lora` section with its layers resolved to this model's indices (`resolved_layers`).

    The config keys `layers` and `layers_reference_depth` are what the plan resolves
    into `resolved_layers`; training needs only the result (see `lora_settings`).
    """

    rank: int
    alpha: float
    rslora: bool
    dropout: float
    target_modules: list[str]
    resolved_layers: list[int]


def lora_settings(lora: dict | None, where: str = "lora") -> LoraSettings | None:
    """LoraSettings from a fine-tune's resolved lora params (None: a full fine-tune)."""
    from emlab.core.settings import build

    if lora is None:
        return None
    resolved = {k: v for k, v in lora.items() if k not in ("layers", "layers_reference_depth")}
    return build(LoraSettings, resolved, where)


# --- data ------------------------------------------------------------------------


@dataclass
class TrainExample:
    """One tokenised conversation: ids and labels (IGNORE_INDEX outside the trained span)."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool

    @property
    def n_loss_tokens(self) -> int:
        """Tokens that are predicted and trained on (the first position is never predicted)."""
        return sum(label != IGNORE_INDEX for label in self.labels[1:])


def encode_example(tokenizer, record: dict, max_length: int) -> TrainExample:
    """Tokenise a conversation; only the final assistant reply (+ end-of-turn) is trained on.

    Longer than max_length: cut from the right (flagged as truncated).
    """
    prompt, answer = prompt_and_answer(record)
    enc = encode_exchange(tokenizer, prompt, answer)
    mask = enc.loss_mask()
    ids = list(enc.input_ids)
    labels = [tok if m else IGNORE_INDEX for tok, m in zip(ids, mask)]
    truncated = len(ids) > max_length
    return TrainExample(ids[:max_length], labels[:max_length], truncated)


def encode_dataset(tokenizer, records: list[dict], max_length: int, what: str) -> tuple[list[TrainExample], int, int]:
    """Encode records; returns (examples with at least one loss token, n_truncated, n_dropped)."""
    examples, n_truncated, n_dropped = [], 0, 0
    for rec in records:
        ex = encode_example(tokenizer, rec, max_length)
        n_truncated += ex.truncated
        if ex.n_loss_tokens == 0:
            n_dropped += 1
            continue
        examples.append(ex)
    if n_truncated:
        log.warning(
            "%s: %d conversation(s) longer than max_length=%d were truncated (%d dropped: "
            "the prompt alone filled max_length)",
            what,
            n_truncated,
            max_length,
            n_dropped,
        )
    return examples, n_truncated, n_dropped


def collate(examples: list[TrainExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch (emlab.model.batching): input_ids, attention_mask, labels, each [batch, seq]."""
    ids, attn = pad_batch([ex.input_ids for ex in examples], pad_id, "right")
    labels = pad_sequences([ex.labels for ex in examples], IGNORE_INDEX, "right")
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


def summed_token_loss(model, batch: dict[str, torch.Tensor], autocast: bool = False) -> torch.Tensor:
    """Sum (not mean) of next-token cross-entropy over the labelled tokens of a batch, in fp32.

    autocast: run the forward pass's matmuls in bf16 (weights and the loss stay fp32).
    """
    with torch.autocast(device_type=batch["input_ids"].device.type, dtype=torch.bfloat16, enabled=autocast):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # Shift the labels, not the logits: slicing [batch, seq, vocab] logits copies them (and their gradient).
    targets = torch.nn.functional.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE_INDEX)  # [batch, seq]
    logits = logits.float()  # [batch, seq, vocab]; a no-op without autocast
    return torch.nn.functional.cross_entropy(
        logits.view(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """Seeded shuffle of example indices for one epoch (recomputable on resume)."""
    order = list(range(n))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return order


def optimiser_steps(examples: list[TrainExample], batch_size: int, accumulation: int) -> list[list[list[TrainExample]]]:
    """Group an epoch (already ordered) into optimiser steps, each a list of micro-batches.

    A short final group still makes a step (its loss is normalised by its own token count).
    """
    micro = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
    return [micro[i : i + accumulation] for i in range(0, len(micro), accumulation)]


# --- model and adapter -----------------------------------------------------------


def linear_module_names(model) -> list[str]:
    """Leaf names of the linear layers inside the decoder blocks (what LoRA can target)."""
    names = set()
    for block in decoder_layers(model):
        for name, mod in block.named_modules():
            if isinstance(mod, torch.nn.Linear) or type(mod).__name__ in ("Conv1D", "Linear8bitLt", "Linear4bit"):
                names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def validate_lora_spec(model, lora: LoraSettings) -> list[int]:
    """Check target modules and layers against the architecture before training; return the layers."""
    n_layers = len(decoder_layers(model))
    layers = [int(x) for x in lora.resolved_layers]
    bad_layers = [x for x in layers if not 0 <= x < n_layers]
    if bad_layers:
        raise EMLabError(
            f"lora layers {bad_layers} are out of range for this model with {n_layers} layers "
            f"(0..{n_layers - 1}); fix finetunes.<name>.lora.layers"
        )
    if not layers:
        raise EMLabError("lora: no layers to adapt")
    known = linear_module_names(model)
    unknown = [t for t in lora.target_modules if t.rsplit(".", 1)[-1] not in known]
    if unknown:
        raise EMLabError(
            f"lora target_modules {unknown} do not exist in {type(model).__name__}; "
            f"its linear modules are: {', '.join(known)}"
        )
    return sorted(set(layers))


def lora_config(lora: LoraSettings, layers: list[int], model=None):
    """peft's LoraConfig of the settings on `layers`. With `model`, a module of a target's name outside its
    decoder blocks (a vision tower's q/k/v_proj, whose blocks peft would number as layers too) is excluded."""
    from peft import LoraConfig

    exclude = None
    if model is not None:
        blocks = decoder_layers_path(model) + "."
        targets = {t.rsplit(".", 1)[-1] for t in lora.target_modules}
        if any(n.rsplit(".", 1)[-1] in targets and not n.startswith(blocks) for n, _ in model.named_modules()):
            exclude = rf"(?!{re.escape(blocks)}).*"  # every module name not under the decoder's blocks
    return LoraConfig(
        exclude_modules=exclude,
        r=int(lora.rank),
        lora_alpha=float(lora.alpha),
        use_rslora=bool(lora.rslora),
        lora_dropout=float(lora.dropout),
        target_modules=list(lora.target_modules),
        layers_to_transform=list(layers),
        bias="none",
        task_type="CAUSAL_LM",
    )


def adapter_key(name: str) -> tuple[str, str] | None:
    """('L9.down_proj', 'A') for a LoRA parameter or saved-tensor name, None for any other name."""
    if "lora_A" not in name and "lora_B" not in name:
        return None
    m = re.search(r"\.(\d+)\.(?:.*\.)?([A-Za-z0-9_]+)\.lora_([AB])\.", name)
    return (f"L{m.group(1)}.{m.group(2)}", m.group(3)) if m else None


def sort_adapters(adapters: dict) -> dict:
    """Adapters ordered by layer, then module name."""
    return dict(sorted(adapters.items(), key=lambda kv: (int(kv[0].split(".")[0][1:]), kv[0])))


def saved_adapter_weights(adapter_dir) -> dict[str, dict[str, torch.Tensor]]:
    """adapter_weights of a saved peft adapter folder, in fp32, without loading any model."""
    from safetensors.torch import load_file

    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.is_file():
        raise EMLabError(f"{adapter_dir} holds no adapter_model.safetensors (is it a LoRA adapter folder?)")
    out: dict = {}
    for name, tensor in load_file(str(path)).items():
        key = adapter_key(name)
        if key is not None:
            out.setdefault(key[0], {})[key[1]] = tensor.float()
    if not out:
        raise EMLabError(f"{path} contains no LoRA A/B matrices")
    return sort_adapters(out)


def adapter_weights(model) -> dict[str, dict[str, torch.nn.Parameter]]:
    """{'L9.down_proj': {'A': param [r, in], 'B': param [out, r]}} for every LoRA module."""
    out: dict[str, dict[str, torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        key = adapter_key(name)
        if key is not None:
            out.setdefault(key[0], {})[key[1]] = param
    return sort_adapters(out)


def adapter_norms(adapters: dict) -> dict[str, float]:
    """Frobenius norms of each adapter's A and B: columns a_norm.L9.down_proj, b_norm.L9.down_proj."""
    row = {}
    with torch.no_grad():
        for key, ab in adapters.items():
            row[f"a_norm.{key}"] = float(ab["A"].float().norm())
            row[f"b_norm.{key}"] = float(ab["B"].float().norm())
    return row


def linear_schedule(warmup_steps: int, total_steps: int):
    """LR multiplier: linear warm-up from 0, then linear decay to 0 at total_steps (reference schedule)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


@torch.no_grad()
def mean_eval_loss(
    model, examples: list[TrainExample], batch_size: int, pad_id: int, device, autocast: bool = False
) -> float:
    """Token-mean loss over the trained spans of `examples` (NaN when there are none)."""
    if not examples:
        return float("nan")
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[i : i + batch_size], pad_id).items()}
        total += float(summed_token_loss(model, batch, autocast))
        count += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    model.train(was_training)
    return total / max(1, count)


def decay_groups(model, weight_decay: float, full: bool) -> list[dict]:
    """AdamW parameter groups. LoRA: every A/B matrix is decayed. Full fine-tuning: like
    transformers.Trainer, biases and normalisation weights (1-D parameters) are not."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not full:
        return [{"params": [p for _, p in params], "weight_decay": weight_decay}]
    decayed = [p for _, p in params if p.ndim >= 2]
    plain = [p for _, p in params if p.ndim < 2]
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


# --- precision and placement -------------------------------------------------------


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def resolve_autocast(setting: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether to run forward passes under bf16 autocast.

    auto: only for fp32 weights on a CPU with native bf16 instructions (measured
    faster there, see README); a GPU run already holds bf16 weights.
    bf16: always (fp32 master weights, bf16 matmuls). off: never.
    """
    if setting not in AUTOCAST_CHOICES:
        raise EMLabError(f"training.autocast: {setting!r} is not one of {', '.join(AUTOCAST_CHOICES)}")
    if setting == "off":
        return False
    if setting == "bf16":
        return True
    return device.type == "cpu" and dtype == torch.float32 and cpu_has_bf16()


def input_device(model, fallback: torch.device) -> torch.device:
    """Where a batch must go: the input embedding's device (differs from `fallback` under a device_map)."""
    try:
        return model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        return fallback


# --- checkpoints -----------------------------------------------------------------


def run_fingerprint(**parts) -> str:
    """Hash of everything that determines the training trajectory (guards resuming a stale checkpoint).

    Parts are canonicalised first (sorted keys, 256.0 == 256), so the spelling of a value does not matter.
    """
    from emlab.core.settings import canonical

    return hashlib.sha256(json.dumps(canonical(parts), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _rng_state() -> dict:
    """Torch, CUDA and Python RNG states as tensors and plain values (loadable with weights_only=True)."""
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "python_version": int(version),
        "python_state": torch.tensor(internal, dtype=torch.int64),
        "python_gauss_next": gauss_next,
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "python_state" in state:
        random.setstate(
            (state["python_version"], tuple(int(x) for x in state["python_state"].tolist()), state["python_gauss_next"])
        )
    else:  # a checkpoint written before the RNG states were stored as tensors
        random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_training_state(path: str | os.PathLike) -> dict:
    """A checkpoint's training_state.pt, loaded with weights_only=True: tensors and plain values only.

    A file holding any other (pickled) object is refused, because unpickling it
    could run code as whoever resumes the run.
    """
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise EMLabError(
            f"refusing to load {path}: it is not a plain training state (tensors and plain values "
            f"only; {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Delete its "
            "checkpoint folder to resume from an earlier checkpoint or start over"
        ) from None
    if not isinstance(state, dict):
        raise EMLabError(f"{path} is not a training state (a dict); delete its checkpoint folder")
    return state


def save_checkpoint(
    checkpoint_dir: Path, step: int, model, optimiser, scheduler, rows: list[dict], fingerprint: str, tokenizer=None
) -> Path:
    """checkpoint_dir/step-N: a peft adapter folder (a full model folder, with the
    tokenizer, for a full fine-tune) plus the state needed to resume (tensors and
    plain values only, see load_training_state)."""
    path = Path(checkpoint_dir) / f"step-{step}"
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        torch.save(
            {
                "step": step,
                "optimizer": optimiser.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": _rng_state(),
                "log_rows": rows,
                "fingerprint": fingerprint,
            },
            tmp / TRAINING_STATE,
        )
    return path


def latest_checkpoint(checkpoint_dir: str | os.PathLike | None, fingerprint: str) -> Path | None:
    """The highest step-N folder whose state matches this run's fingerprint, if any."""
    if not checkpoint_dir or not Path(checkpoint_dir).is_dir():
        return None
    found = []
    for p in Path(checkpoint_dir).iterdir():
        m = re.fullmatch(r"step-(\d+)", p.name)
        if m and (p / TRAINING_STATE).is_file():
            found.append((int(m.group(1)), p))
    for _, p in sorted(found, reverse=True):
        state = load_training_state(p / TRAINING_STATE)
        if state.get("fingerprint") == fingerprint:
            return p
        log.warning("ignoring checkpoint %s: it belongs to a run with different settings or data", p)
        return None
    return None


def load_checkpoint_weights(model, ckpt: Path, full: bool) -> None:
    """Put a checkpoint's trained weights back into the model (adapter, or every weight)."""
    from safetensors.torch import load_file

    if not full:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(ckpt / "adapter_model.safetensors")))
        return
    state = {}
    for shard in sorted(ckpt.glob("*.safetensors")):
        state.update(load_file(str(shard)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied and not (k == "lm_head.weight" and model.config.tie_word_embeddings)]
    if missing or unexpected:
        raise EMLabError(
            f"checkpoint {ckpt} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}; "
            "delete the checkpoints folder to start over"
        )


def load_init_adapter(tm: TrainingModel, adapter_dir) -> None:
    """Start from another LoRA fine-tune's adapter (continued training; the monitor's start-from-misaligned
    stress run): its weights replace the fresh initialisation. Its rank, alpha and modules must match."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    if tm.full:
        raise EMLabError(f"start adapter {adapter_dir}: a full fine-tune cannot start from a LoRA adapter")
    path = Path(adapter_dir)
    try:
        cfg = json.loads((path / "adapter_config.json").read_text())
        state = load_file(str(path / "adapter_model.safetensors"))
    except (OSError, ValueError) as exc:
        raise EMLabError(
            f"start adapter {adapter_dir} cannot be read ({exc}); re-run the fine-tune it comes from"
        ) from None
    lora = tm.lora
    if int(cfg.get("r", -1)) != lora.rank or sorted(cfg.get("target_modules") or []) != sorted(lora.target_modules):
        raise EMLabError(
            f"start adapter {adapter_dir} has rank {cfg.get('r')} on {cfg.get('target_modules')}; this fine-tune "
            f"trains rank {lora.rank} on {lora.target_modules}: both must use the same LoRA recipe"
        )
    result = set_peft_model_state_dict(tm.model, state)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise EMLabError(f"start adapter {adapter_dir} has weights this model lacks: {unexpected[:5]}")
    log.info("started from the adapter %s (%d tensors)", adapter_dir, len(state))


# --- the training run: prepare data, build model, resume, train steps, write outputs ----------


@runtime_checkable
class StepCallback(Protocol):
    """Called after every optimiser step (after its log row and any checkpoint are written) with
    (step, loss of that step, model). The model is in training mode; a callback that runs it must not
    change its weights, and must restore the mode it found. The live trait monitor
    (emlab.monitor.live.LiveMonitorCallback) is one; a plain function is wrapped in `PlainStep`."""

    @property
    def stop_requested(self) -> object:
        """Truthy: end training after this step, keeping its adapter."""
        ...

    def start(self, model, tokenizer) -> None:
        """Called once before the first step (after any resume)."""
        ...

    def __call__(self, step: int, loss: float, model) -> object: ...

    def log_columns(self, step: int) -> dict:
        """Extra columns of that step's train_log.csv row."""
        ...

    def summary_fields(self) -> dict:
        """Extra keys of summary.json."""
        ...


@dataclass(frozen=True)
class PlainStep:
    """A function of (step, loss, model) as a StepCallback that adds nothing and never stops training."""

    fn: Callable[[int, float, Any], object]
    stop_requested: object = None

    def start(self, model, tokenizer) -> None:
        return None

    def __call__(self, step: int, loss: float, model) -> object:
        return self.fn(step, loss, model)

    def log_columns(self, step: int) -> dict:
        return {}

    def summary_fields(self) -> dict:
        return {}


def step_callbacks(on_step: Sequence[StepCallback | Callable]) -> list[StepCallback]:
    """Every callback as a StepCallback (a plain function wrapped in PlainStep)."""
    return [c if isinstance(c, StepCallback) else PlainStep(c) for c in on_step]


@dataclass
class TrainingData:
    """The tokenised train and eval splits (and what encoding them dropped or cut)."""

    tokenizer: Any
    pad_id: int
    train: list[TrainExample]
    eval: list[TrainExample]
    n_truncated: int
    n_truncated_eval: int
    n_dropped: int

    @property
    def eval_subset(self) -> list[TrainExample]:
        """What checkpoint-time eval uses (the first EVAL_SUBSET eval examples)."""
        return self.eval[:EVAL_SUBSET]


@dataclass
class TrainingModel:
    """The model being trained, where it runs, and what is trained (adapters, or every weight)."""

    model: Any
    full: bool
    lora: LoraSettings | None
    layers: list[int]
    adapters: dict
    params: list[torch.nn.Parameter]
    device: torch.device
    dtype: torch.dtype
    autocast: bool

    @property
    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.params)

    def eval_loss(self, examples: list[TrainExample], batch_size: int, pad_id: int) -> float:
        return mean_eval_loss(self.model, examples, batch_size, pad_id, self.device, self.autocast)


@dataclass
class TrainingProgress:
    """Optimiser, schedule and log rows: the state a checkpoint saves and a resume restores."""

    optimiser: torch.optim.Optimizer
    scheduler: Any
    steps_per_epoch: int
    total_steps: int
    fingerprint: str
    rows: list[dict] = field(default_factory=list)
    start_step: int = 0
    resumed_from: str | None = None
    step: int = 0
    tokens_seen: int = 0
    loss_tokens_seen: int = 0
    train_seconds: float = 0.0
    stopped_early: bool = False  # a step callback (the live monitor) asked training to end


def prepare_data(base_model_path, train_path, eval_path, training: TrainingSettings) -> TrainingData:
    """Load and tokenise both splits; a bad file fails here, before any model is loaded."""
    from emlab.model.loading import load_tokenizer

    train_records = load_chat_jsonl(train_path)
    eval_records = load_chat_jsonl(eval_path) if eval_path and Path(eval_path).stat().st_size > 0 else []
    if training.max_train_examples:
        train_records = train_records[: int(training.max_train_examples)]
    if training.max_eval_examples:
        eval_records = eval_records[: int(training.max_eval_examples)]
    tokenizer = load_tokenizer(base_model_path)
    train_set, n_truncated, n_dropped = encode_dataset(tokenizer, train_records, training.max_length, "train")
    eval_set, n_truncated_eval, _ = encode_dataset(tokenizer, eval_records, training.max_length, "eval")
    if not train_set:
        raise EMLabError(
            f"{train_path}: no training example has an assistant token within max_length={training.max_length}"
        )
    return TrainingData(
        tokenizer, pad_token_id(tokenizer), train_set, eval_set, n_truncated, n_truncated_eval, n_dropped
    )


def build_model(
    base_model_path, lora: LoraSettings | None, training: TrainingSettings, seed: int, device: str, dtype: str
) -> TrainingModel:
    """The base model, with fresh LoRA adapters (seeded A initialisation) or every weight trainable."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    full = lora is None
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    use_autocast = resolve_autocast(training.autocast, dev, dt)
    device_map = training.device_map or None  # "" or {} means none, as null does
    load_kwargs = {"dtype": dt}
    if device_map is not None:
        load_kwargs["device_map"] = device_map  # spread a model too large for one GPU over several
    try:
        model = AutoModelForCausalLM.from_pretrained(str(base_model_path), **load_kwargs)
    except OSError as exc:
        raise EMLabError(f"cannot load base model from {base_model_path!r}: {exc}") from exc
    layers = list(range(len(decoder_layers(model)))) if full else validate_lora_spec(model, lora)
    model.config.use_cache = False
    if training.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    torch.manual_seed(seed)  # LoRA A initialisation
    if full:
        model.requires_grad_(True)
    else:
        model = get_peft_model(model, lora_config(lora, layers, model))
    if device_map is None:
        model.to(dev)
    dev = input_device(model, dev)
    built = TrainingModel(
        model,
        full,
        lora,
        layers,
        adapter_weights(model),
        [p for p in model.parameters() if p.requires_grad],
        dev,
        dt,
        use_autocast,
    )
    if full:
        log.info("full fine-tuning of all %d layers: %d trainable parameters", len(layers), built.n_trainable)
    else:
        log.info(
            "LoRA r=%s alpha=%s on %s of layers %s: %d adapters, %d trainable parameters",
            lora.rank,
            lora.alpha,
            lora.target_modules,
            layers,
            len(built.adapters),
            built.n_trainable,
        )
    log.info(
        "bf16 autocast: %s (training.autocast=%s, device %s, weights %s)",
        use_autocast,
        training.autocast,
        dev,
        str(dt).replace("torch.", ""),
    )
    return built


def build_progress(
    tm: TrainingModel,
    data: TrainingData,
    training: TrainingSettings,
    base_model_path,
    train_path,
    seed: int,
    init_adapter=None,
) -> TrainingProgress:
    """AdamW with the linear schedule, and the fingerprint that ties checkpoints to this run."""
    batch_size, accumulation = training.per_device_batch_size, training.gradient_accumulation_steps
    steps_per_epoch = math.ceil(math.ceil(len(data.train) / batch_size) / accumulation)
    total_steps = steps_per_epoch * training.epochs
    optimiser = torch.optim.AdamW(decay_groups(tm.model, training.weight_decay, tm.full), lr=training.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, linear_schedule(training.warmup_steps, total_steps))
    lora = tm.lora
    fingerprint = run_fingerprint(
        base=str(base_model_path),
        train=file_sha256(train_path),
        lora="full"
        if lora is None
        else {
            "rank": lora.rank,
            "alpha": lora.alpha,
            "rslora": lora.rslora,
            "dropout": lora.dropout,
            "target_modules": lora.target_modules,
        },
        layers=tm.layers,
        training=dataclasses.asdict(training),
        seed=seed,
        dtype=str(tm.dtype),
        autocast=tm.autocast,
        **({"init": file_sha256(Path(init_adapter) / "adapter_model.safetensors")} if init_adapter else {}),
    )
    return TrainingProgress(optimiser, scheduler, steps_per_epoch, total_steps, fingerprint)


def resume_or_start(
    tm: TrainingModel, data: TrainingData, progress: TrainingProgress, training: TrainingSettings, checkpoint_dir
) -> None:
    """Restore the latest matching checkpoint into model, optimiser, schedule, RNG and log rows;
    without one, log the step-0 row (eval loss before training)."""
    ckpt = latest_checkpoint(checkpoint_dir, progress.fingerprint) if training.checkpoint_every else None
    if ckpt is not None:
        state = load_training_state(ckpt / TRAINING_STATE)
        load_checkpoint_weights(tm.model, ckpt, tm.full)
        progress.optimiser.load_state_dict(state["optimizer"])
        progress.scheduler.load_state_dict(state["scheduler"])
        progress.rows = state["log_rows"]
        progress.start_step = progress.step = int(state["step"])
        _set_rng_state(state["rng"])
        progress.resumed_from = str(ckpt)
        log.info("resuming from %s (step %d of %d)", ckpt, progress.start_step, progress.total_steps)
        return
    batch_size = training.per_device_batch_size
    eval0 = tm.eval_loss(data.eval, batch_size, data.pad_id)
    subset0 = eval0 if len(data.eval) <= EVAL_SUBSET else tm.eval_loss(data.eval_subset, batch_size, data.pad_id)
    progress.rows.append(
        {
            "step": 0,
            "epoch": 0.0,
            "loss": float("nan"),
            "eval_loss": eval0,
            "eval_subset_loss": subset0,
            "learning_rate": 0.0,
            "grad_norm": float("nan"),
            "tokens": 0,
            **adapter_norms(tm.adapters),
        }
    )
    log.info("eval loss before training: %.4f", eval0)


def train_steps(
    tm: TrainingModel,
    data: TrainingData,
    progress: TrainingProgress,
    training: TrainingSettings,
    seed: int,
    checkpoint_dir,
    on_step: Sequence[StepCallback],
    show_progress: bool,
) -> None:
    """Every optimiser step after progress.start_step: accumulate, clip, step, log, checkpoint, call back."""
    from tqdm.auto import tqdm

    model, pad_id, dev = tm.model, data.pad_id, tm.device
    batch_size, every = training.per_device_batch_size, training.checkpoint_every
    model.train()
    t_train = time.time()
    bar = tqdm(
        total=progress.total_steps, initial=progress.start_step, desc="finetune", unit="step", disable=not show_progress
    )
    for epoch in range(training.epochs):
        order = epoch_order(len(data.train), seed, epoch)
        groups = optimiser_steps([data.train[i] for i in order], batch_size, training.gradient_accumulation_steps)
        for j, group in enumerate(groups):
            global_step = epoch * progress.steps_per_epoch + j + 1
            if global_step <= progress.start_step:
                continue
            n_group_tokens = sum(ex.n_loss_tokens for mb in group for ex in mb)
            loss_sum = 0.0
            for mb in group:
                batch = {k: v.to(dev) for k, v in collate(mb, pad_id).items()}
                loss = summed_token_loss(model, batch, tm.autocast) / n_group_tokens
                loss.backward()
                loss_sum += float(loss.detach())
                progress.tokens_seen += int(batch["attention_mask"].sum())
            progress.loss_tokens_seen += n_group_tokens
            lr = progress.optimiser.param_groups[0]["lr"]
            grad_norm = float(torch.nn.utils.clip_grad_norm_(tm.params, CLIP_GRAD_NORM))
            progress.optimiser.step()
            progress.scheduler.step()
            progress.optimiser.zero_grad(set_to_none=True)
            progress.step = step = global_step
            row = {
                "step": step,
                "epoch": epoch + (j + 1) / len(groups),
                "loss": loss_sum,
                "eval_loss": float("nan"),
                "eval_subset_loss": float("nan"),
                "learning_rate": lr,
                "grad_norm": grad_norm,
                "tokens": n_group_tokens,
                **adapter_norms(tm.adapters),
            }
            if every and step % every == 0:
                row["eval_subset_loss"] = tm.eval_loss(data.eval_subset, batch_size, pad_id)
                progress.rows.append(row)
                save_checkpoint(
                    checkpoint_dir,
                    step,
                    model,
                    progress.optimiser,
                    progress.scheduler,
                    progress.rows,
                    progress.fingerprint,
                    data.tokenizer if tm.full else None,
                )
            else:
                progress.rows.append(row)
            for callback in on_step:
                callback(step, loss_sum, model)
                row.update(callback.log_columns(step))
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum:.3f}", lr=f"{lr:.2e}")
            if any(callback.stop_requested for callback in on_step):
                progress.stopped_early = True
                log.warning("training stopped at step %d of %d by a step callback", step, progress.total_steps)
                break
        if progress.stopped_early:
            break
    bar.close()
    progress.train_seconds = time.time() - t_train


def write_outputs(
    tm: TrainingModel,
    data: TrainingData,
    progress: TrainingProgress,
    training: TrainingSettings,
    seed: int,
    out_dir,
    log_csv,
    summary_json,
    t_start: float,
    extra_summary: dict | None = None,
) -> dict:
    """Final eval, then the adapter (or full model) folder, train_log.csv and summary.json (plus
    `extra_summary`, e.g. the live monitor's stopped_by_monitor); returns the summary."""
    import pandas as pd

    rows, step, batch_size = progress.rows, progress.step, training.per_device_batch_size
    final_eval = tm.eval_loss(data.eval, batch_size, data.pad_id)
    if rows and rows[-1]["step"] == step and step > 0:
        last = rows[-1]
        last["eval_loss"] = final_eval
        if math.isnan(last["eval_subset_loss"]):  # not evaluated at this step yet
            last["eval_subset_loss"] = (
                final_eval if len(data.eval) <= EVAL_SUBSET else tm.eval_loss(data.eval_subset, batch_size, data.pad_id)
            )
    log.info("final eval loss: %.4f", final_eval)

    tm.model.eval()
    with atomic_dir(out_dir) as tmp:
        tm.model.save_pretrained(tmp)
        if tm.full:  # a self-contained model folder: generation, judging and activations load it directly
            data.tokenizer.save_pretrained(tmp)
    write_csv(log_csv, pd.DataFrame(rows))
    train_rows = [r for r in rows if r["step"] > 0]
    lora, every, seconds, tokens = tm.lora, training.checkpoint_every, progress.train_seconds, progress.tokens_seen
    summary = {
        "steps": step,
        "total_steps": progress.total_steps,
        "epochs": training.epochs,
        "n_train_examples": len(data.train),
        "n_eval_examples": len(data.eval),
        "n_truncated": data.n_truncated,
        "n_truncated_eval": data.n_truncated_eval,
        "n_dropped": data.n_dropped,
        "effective_batch_size": batch_size * training.gradient_accumulation_steps,
        "tokens_trained": tokens,
        "loss_tokens_trained": progress.loss_tokens_seen,
        "train_seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 2) if seconds > 0 and tokens else None,
        "wall_seconds": round(time.time() - t_start, 3),
        "initial_eval_loss": rows[0]["eval_loss"] if rows and rows[0]["step"] == 0 else None,
        "final_train_loss": train_rows[-1]["loss"] if train_rows else None,
        "final_eval_loss": final_eval,
        "trainable_parameters": tm.n_trainable,
        "method": "full" if tm.full else "lora",
        "n_adapters": len(tm.adapters),
        "resolved_layers": tm.layers,
        "target_modules": [] if lora is None else list(lora.target_modules),
        "rank": None if lora is None else int(lora.rank),
        "alpha": None if lora is None else float(lora.alpha),
        "rslora": None if lora is None else bool(lora.rslora),
        "learning_rate": float(training.learning_rate),
        "seed": seed,
        "device": str(tm.device),
        "dtype": str(tm.dtype).replace("torch.", ""),
        "autocast_bf16": tm.autocast,
        "device_map": training.device_map or None,
        "checkpoint_every": every,
        "checkpoint_steps": [r["step"] for r in rows if every and r["step"] > 0 and r["step"] % every == 0],
        "fingerprint": progress.fingerprint,
        "resumed_from": progress.resumed_from,
        "stopped_early": progress.stopped_early,
        **(extra_summary or {}),
    }
    write_json(summary_json, summary)
    return summary


def fine_tune(
    base_model_path,
    train_path,
    eval_path,
    lora: LoraSettings | None,
    training: TrainingSettings,
    out_dir,
    log_csv,
    summary_json,
    checkpoint_dir,
    seed: int,
    device: str,
    dtype: str,
    on_step: Sequence[StepCallback | Callable] = (),
    progress: bool = True,
    init_adapter=None,
) -> dict:
    """Fine-tune on the assistant replies of `train_path` (LoRA adapters, or every weight when
    `lora` is None); write the adapter (full: a complete model folder) to out_dir, the
    per-step log and the summary. Resumes from the latest matching checkpoint in
    checkpoint_dir (None: no checkpoints). `on_step`: callbacks after each optimiser step
    (see StepCallback). `init_adapter`: a LoRA adapter folder to continue from instead of a
    fresh initialisation (load_init_adapter). Returns the summary dict.
    """
    t_start = time.time()
    data = prepare_data(base_model_path, train_path, eval_path, training)
    tm = build_model(base_model_path, lora, training, seed, device, dtype)
    if init_adapter is not None:
        load_init_adapter(tm, init_adapter)
    state = build_progress(tm, data, training, base_model_path, train_path, seed, init_adapter)
    resume_or_start(tm, data, state, training, checkpoint_dir)
    on_step = step_callbacks(on_step)
    for callback in on_step:
        callback.start(tm.model, data.tokenizer)
    train_steps(tm, data, state, training, seed, checkpoint_dir, on_step, progress)
    extra = {}
    for callback in on_step:
        extra.update(callback.summary_fields())
    return write_outputs(tm, data, state, training, seed, out_dir, log_csv, summary_json, t_start, extra)
