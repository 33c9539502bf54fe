"""The rehearsal config, derived mechanically from a paper config.

The paper config is copied whole, so every key it has, a new one too, is
rehearsed; then only what `CHANGES` lists is changed, and a list of them goes
into the report: where the inputs are (the planted model, datasets and trait
prompts), where the judge is (the loopback server), the device, and sizes.
Sizes shrink; sweeps keep their first, middle and last entries; learning
rates are multiplied by LR_FACTOR (a tiny random model learns its planted
behaviour in tens of steps, not thousands); the number of steps a phase
transition is planted at and the checkpoints judged around it follow from
the shrunk run.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from emlab.core.errors import EMLabError

LR_FACTOR = 100
TRAIN_EXAMPLES = 240  # main fine-tunes: 30 optimiser steps of 8
EXAMPLES_PER_STEP = 8
MONITOR_EXAMPLES = 64  # monitor runs: 8 steps an epoch
MONITOR_CHECKPOINT_EVERY = 8
DATASET_EXAMPLES = 280  # each planted file: 252 for training after the eval split
SAMPLES_PER_QUESTION = 8
# the planted organism's answer-token KL (and the gradient score, which it scales) is about 1e-3: a log cut-off of the
# paper's kind is lowered by this much, so that the filter keeps about a third of the tokens instead of none
LOG_CUT_SHIFT = 7.5
PHASE_BENIGN_STEPS = 5  # the planted switch of the checkpointed organism (one checkpoint interval)

# (key, what the rehearsal does to it): the report lists these with the paper's and the rehearsal's values
CHANGES = (
    ("base_model", "the planted model (same depth)"),
    (
        "base_models",
        "three of the paper's models, each a planted model of its depth: the model of most fine-tunes, and two "
        "monitored models of different families (a Llama and a Qwen2 architecture); the others are left out",
    ),
    ("finetunes.*.models", "cut to the kept models; the checkpointed organism runs on every kept model"),
    ("monitor.models / monitor.stress_models", "the two kept monitored models / the kept stress model"),
    ("device / dtype / threads / training autocast", "cpu / float32 / 1 / off"),
    ("datasets.*.path", "planted JSONL by datasets.*.expect"),
    ("training_defaults", f"batch {EXAMPLES_PER_STEP} x 1, max length 128, {TRAIN_EXAMPLES} examples"),
    ("finetunes.*.training.learning_rate", f"the preset's x {LR_FACTOR}"),
    ("generation", f"{SAMPLES_PER_QUESTION} samples per question, replies of the planted length"),
    ("judge.openai", "the loopback judge (its key is the rehearsal's own)"),
    ("steering.layers", "first, middle and last"),
    ("steering.scales, ablation.random_seeds", "first and last"),
    ("single_adapter.convergence_max_responses", "64"),
    (
        "lora_interp.probes.n_runs / C",
        "10 / C x (the paper's answer tokens / the rehearsal's): liblinear sums the loss over tokens",
    ),
    (
        "lora_interp.probes.filters[].log_above",
        f"the paper's cut-off - {LOG_CUT_SHIFT}: the planted adapters leave the answer tokens nearly alone, so their "
        "KL, and the derivative score it scales, is about e^-7 of a real fine-tune's",
    ),
    ("resources", "no GPU"),
    ("phase.eval_steps", "a checkpoint before the planted switch, and two after"),
    ("traits", "planted prompt files; 10 questions, 2 prompts a side, 20 measurement prompts"),
    ("monitor.seeds", "the first"),
    (
        "monitor.training",
        f"{MONITOR_EXAMPLES} examples, a checkpoint every {MONITOR_CHECKPOINT_EVERY} steps, lr x {LR_FACTOR}",
    ),
    ("monitor.stress.longer_factor / monitor.live.every", "2 / the checkpoint interval"),
    ("monitor.n_bootstrap / tau_sweep", "50 / the paper's tau"),
    (
        "monitor.sae.path",
        "the planted SAE (SAELens' format) of block depth/2: one feature along u, the others random off u, w, z",
    ),
)


@dataclass(frozen=True)
class Planted:
    """Where the planted inputs are (emlab.rehearsal.__main__ writes them)."""

    model_dir: str
    datasets: dict[str, str]  # dataset name -> planted JSONL
    traits_dir: str
    sae_dir: str | None = None  # the planted SAE (emlab.rehearsal.planted.write_sae), for monitor.sae.path
    model_dirs: dict[str, str] | None = None  # base_models: key -> its planted model (model_dir: the primary's)


def ends(values: list, middle: bool = True) -> list:
    """First, middle and last of a sweep (first and last without `middle`; all of a short one)."""
    values = list(values)
    keep = [0, len(values) // 2, len(values) - 1] if middle else [0, len(values) - 1]
    return [values[i] for i in sorted(set(keep))] if len(values) > len(keep) else values


def _depth(model: dict) -> int:
    """A base model entry's depth: its num_layers, else its known shape."""
    if model.get("num_layers"):
        return int(model["num_layers"])
    from emlab.plan.gpu import model_shape

    return model_shape(model["source"]).num_hidden_layers


def num_layers(paper: dict) -> int:
    """The paper base model's depth (base_model)."""
    return _depth(paper["base_model"])


def planted_arch(model) -> str:
    """The planted architecture standing in for a paper model: qwen2 for the Qwen family, llama otherwise."""
    text = f"{model.family or ''} {model.source}".lower()
    return "qwen2" if "qwen" in text else "llama"


def rehearsal_models(validated: dict) -> dict[str, str]:
    """The paper models a multi-model rehearsal keeps (key -> planted architecture), primary first: the model
    most fine-tunes run on; two monitored models of different architectures (so the pooled monitor pools two
    families); the first stress model."""
    from emlab.plan.models import base_models, finetune_models, monitor_models

    models = base_models(validated)
    count = {k: sum(k in finetune_models(validated, n) for n in validated["finetunes"]) for k in models}
    primary = max(models, key=lambda k: count[k])  # the first of the most used
    keep = [primary]
    fit = [k for k in monitor_models(validated) if k != primary]
    if fit:
        keep.append(fit[0])
        other = [k for k in fit[1:] if planted_arch(models[k]) != planted_arch(models[fit[0]])]
        if other:
            keep.append(other[0])
    keep += [k for k in validated["monitor"]["stress_models"][:1] if k not in keep]
    return {k: planted_arch(models[k]) for k in keep}


def sae_model_key(validated: dict) -> str:
    """The kept model whose planted SAE the rehearsal's SAE baseline reads: the first pooled one."""
    from emlab.plan.models import base_models

    keep = list(rehearsal_models(validated))
    stress = set(validated["monitor"]["stress_models"])
    fit = [k for k in keep[1:] if k not in stress] or keep[:1]
    return fit[0] if len(base_models(validated)) > 1 else keep[0]


def model_depth(validated: dict, key: str) -> int:
    """A paper model's depth (base_models.<key>)."""
    return _depth(validated["base_models"][key])


def _derive_models(cfg: dict, validated: dict, planted: Planted) -> None:
    """base_models, finetunes.*.models, the study lists and monitor.models of a multi-model paper config."""
    from emlab.plan.models import finetune_models

    keep = list(rehearsal_models(validated))
    if planted.model_dirs is None or set(planted.model_dirs) != set(keep):
        raise EMLabError(f"rehearsal: planted models for {keep} were not built")
    cfg["base_models"] = {
        k: {
            "source": planted.model_dirs[k],
            "num_layers": model_depth(validated, k),
            "family": validated["base_models"][k]["family"],
            "size_b": validated["base_models"][k]["size_b"],
        }
        for k in keep
    }
    organism = phase_finetune(validated)
    dropped = []
    for name in list(cfg["finetunes"]):
        models = [k for k in finetune_models(validated, name) if k in keep]
        if name == organism:  # its phase transition and EM, across the kept models
            models = keep
        if not models:
            dropped.append(name)
            del cfg["finetunes"][name]
        else:
            cfg["finetunes"][name]["models"] = models
    for section, field in (
        ("steering", "vectors"),
        ("ablation", "targets"),
        ("semantic_directions", "finetunes"),
        ("single_adapter", "finetunes"),
        ("lora_interp", "finetunes"),
    ):
        if (cfg.get(section) or {}).get(field):
            cfg[section][field] = [n for n in cfg[section][field] if n not in dropped]
    if (cfg.get("ablation") or {}).get("transfer"):
        cfg["ablation"]["transfer"] = [
            t for t in cfg["ablation"]["transfer"] if t["vector"] not in dropped and t["target"] not in dropped
        ]
    ref = ((cfg.get("single_adapter") or {}).get("reference_vector") or {}).get("finetune")
    if ref in dropped:
        cfg["single_adapter"]["reference_vector"] = None
    mon = cfg.get("monitor")
    if mon:
        stress = [k for k in validated["monitor"]["stress_models"] if k in keep]
        mon["models"] = [k for k in keep[1:] if k not in stress] or keep[:1]
        mon["stress_models"] = stress
        if planted.sae_dir is not None:  # the planted SAE is of the first pooled model
            mon["sae"] = {**(mon.get("sae") or {}), "path": planted.sae_dir, "model": sae_model_key(validated)}


def expectations(paper: dict) -> dict[str, str]:
    """datasets.*.expect of every dataset; the rehearsal cannot plant a dataset without one."""
    out = {}
    for name, ds in (paper.get("datasets") or {}).items():
        expect = ds.get("expect")
        if expect not in ("misaligned", "benign"):
            raise EMLabError(
                f"rehearsal: datasets.{name} has no `expect` (misaligned or benign); the rehearsal plants what "
                "each dataset is expected to do. Set it in the paper config."
            )
        out[name] = expect
    return out


def phase_finetune(validated: dict) -> str | None:
    """The first checkpointed LoRA fine-tune (its phase transition is planted)."""
    from emlab.core.config import training_settings

    for name, ft in validated["finetunes"].items():
        if ft["lora"] is not None and training_settings(validated, name)["checkpoint_every"]:
            return name
    return None


def phase_eval_steps(checkpoint_every: int, total_steps: int, switch: int) -> list[int]:
    """The last checkpoint before the planted switch, and two after it (the final step is the organism)."""
    steps = list(range(checkpoint_every, total_steps, checkpoint_every))
    before = [s for s in steps if s <= switch]
    after = [s for s in steps if s > switch]
    if not before or len(after) < 2:
        raise EMLabError(f"rehearsal: checkpoints {steps} do not bracket the planted switch at step {switch}")
    return [before[-1], after[0], after[-1]]


def derive(paper: dict, planted: Planted, judge_url: str = "http://127.0.0.1:9/v1") -> dict:
    """The rehearsal config (raw, to be validated like any config) for `paper` (raw YAML)."""
    from emlab.core.config import FINETUNE_PRESETS, training_settings, validate_config

    validated = validate_config(copy.deepcopy(paper), source="paper config")
    cfg = copy.deepcopy(paper)
    cfg.update(device="cpu", dtype="float32", threads=1, device_map=None)
    if validated.get("base_models"):
        _derive_models(cfg, validated, planted)
    else:
        cfg["base_model"] = {"source": planted.model_dir, "num_layers": num_layers(paper)}
    for name, ds in cfg["datasets"].items():
        ds.pop("synthesis", None)
        ds["path"] = planted.datasets[name]
    cfg["training_defaults"] = {
        **(cfg.get("training_defaults") or {}),
        "per_device_batch_size": EXAMPLES_PER_STEP,
        "gradient_accumulation_steps": 1,
        "max_length": 128,
        "max_train_examples": TRAIN_EXAMPLES,
        "max_eval_examples": 8,
        "gradient_checkpointing": False,
        "autocast": "off",  # fp32 everywhere: the same numbers on every CPU (auto picks bf16 where it is fast)
        "device_map": None,
    }
    cfg["training_defaults"].pop("learning_rate", None)
    for name, ft in cfg["finetunes"].items():
        training = dict(ft.get("training") or {})
        training.pop("device_map", None)
        training["learning_rate"] = training_settings(validated, name)["learning_rate"] * LR_FACTOR
        ft["training"] = training
    gen = validated["generation"]
    cfg["generation"] = {
        **(cfg.get("generation") or {}),
        "samples_per_question": min(SAMPLES_PER_QUESTION, gen["samples_per_question"]),
        "max_new_tokens": 8,
        "batch_size": 128,
        "backend": "hf",
        "threads": None,
    }
    judge = cfg.setdefault("judge", {})
    judge["backend"] = "openai"
    judge["openai"] = {
        **(judge.get("openai") or {}),
        "base_url": judge_url,
        "model": "rehearsal-judge",
        "api_key_env": "EMLAB_REHEARSAL_JUDGE_KEY",
        "timeout_s": 30,
        "max_retries": 2,
    }
    judge.pop("hf", None)
    judge["cache"] = "results/judge_cache.sqlite"
    if cfg.get("steering"):
        cfg["steering"]["layers"] = ends(validated["steering"]["layers"])
        cfg["steering"]["scales"] = ends(validated["steering"]["scales"], middle=False)
    if cfg.get("ablation"):
        cfg["ablation"]["random_seeds"] = ends(validated["ablation"]["random_seeds"], middle=False)
    if cfg.get("single_adapter"):
        cfg["single_adapter"]["convergence_max_responses"] = 64
    if cfg.get("lora_interp"):
        probes = cfg["lora_interp"].setdefault("probes", {})
        vprobes = validated["lora_interp"]["probes"]
        probes["n_runs"] = min(10, vprobes["n_runs"])
        # liblinear sums the loss over tokens: the same regularisation on fewer tokens needs a C as many times larger
        tokens = gen["samples_per_question"] * gen["max_new_tokens"]
        probes["C"] = (
            vprobes["C"] * tokens / (cfg["generation"]["samples_per_question"] * cfg["generation"]["max_new_tokens"])
        )
        probes["filters"] = [
            {**f, "log_above": f["log_above"] - LOG_CUT_SHIFT} if f.get("log_above") is not None else f
            for f in vprobes["filters"]
        ]
    cfg["resources"] = {"gpu": 0, "gpu_model": None, "mem_mb": 4000, "runtime": 60, "finetune_runtime": 60}
    phase_ft = phase_finetune(validated)
    if phase_ft is not None:
        every = training_settings(validated, phase_ft)["checkpoint_every"]
        total = TRAIN_EXAMPLES // EXAMPLES_PER_STEP
        cfg["phase"] = {**(cfg.get("phase") or {}), "eval_steps": phase_eval_steps(every, total, PHASE_BENIGN_STEPS)}
    cfg["traits"] = {
        **(cfg.get("traits") or {}),
        "folder": planted.traits_dir,
        "max_questions": 10,
        "max_prompts_per_side": 2,
        "max_measurement_prompts": 20,
        "batch_size": 32,
    }
    mon = cfg.get("monitor")
    if mon and (mon.get("calibration") or mon.get("held_out")):
        vmon = validated["monitor"]
        preset_lr = FINETUNE_PRESETS[vmon["preset"]]["training"].get("learning_rate")
        lr = vmon["training"].get("learning_rate", preset_lr)
        mon["seeds"] = vmon["seeds"][:1]
        mon["training"] = {
            **(mon.get("training") or {}),
            "max_train_examples": MONITOR_EXAMPLES,
            "checkpoint_every": MONITOR_CHECKPOINT_EVERY,
            "learning_rate": float(lr) * LR_FACTOR,
        }
        mon["generation"] = {**(mon.get("generation") or {}), "max_new_tokens": 8}
        mon["n_bootstrap"] = 50
        mon["tau_sweep"] = [vmon["tau"]]
        if planted.sae_dir is not None:  # an SAE of the paper's model would not fit the planted one
            mon["sae"] = {**(mon.get("sae") or {}), "path": planted.sae_dir}
        if mon.get("stress"):
            mon["stress"] = {**mon["stress"], "longer_factor": 2}
            if mon["stress"].get("full_learning_rate"):
                mon["stress"]["full_learning_rate"] *= LR_FACTOR
            elif mon["stress"].get("full"):
                mon["stress"]["full_learning_rate"] = FINETUNE_PRESETS["full"]["training"]["learning_rate"] * LR_FACTOR
        if mon.get("live"):
            mon["live"] = {**mon["live"], "every": MONITOR_CHECKPOINT_EVERY}
    return cfg


def phase_plan_inputs(cfg: dict) -> tuple[str, str, int] | None:
    """(fine-tune, its dataset, its seed) of the planted phase transition in a derived config, or None."""
    from emlab.core.config import validate_config

    validated = validate_config(copy.deepcopy(cfg), source="rehearsal config")
    name = phase_finetune(validated)
    if name is None:
        return None
    ft = validated["finetunes"][name]
    seed = ft.get("seed")
    return name, ft["dataset"], int(validated["seed"] if seed is None else seed)
