# Config loading and validation, the study plan, path helpers, input
# functions and wildcard constraints. No rules here.
import json
import os
import sys

sys.path.insert(0, os.path.join(workflow.basedir, "workflow", "src"))

from emlab.config import model_num_layers, validate_config, lora_layers, training_settings  # noqa: E402
from emlab.errors import EMLabError  # noqa: E402
from emlab.plan import conditions, direction_finetunes  # noqa: E402
from emlab.phase import em_steps as phase_em_steps, phase_finetunes  # noqa: E402
from emlab.plan import condition_metrics, semantic_vectors, single_adapter_layer  # noqa: E402
from emlab.monitor_plan import register_runs  # noqa: E402
from emlab.traits import load_trait_set  # noqa: E402

try:
    _validated = validate_config(dict(config), source="config")
except EMLabError as _exc:
    raise WorkflowError(str(_exc)) from None
config.clear()
config.update(_validated)

RESULTS = "results"
SCRIPTS = os.path.join(workflow.basedir, "workflow", "scripts")
ENV = os.path.join(workflow.basedir, "envs", "emlab.yaml")
EMBEDDED = config["base_model"]["source"] == "embedded"
BASE_MODEL_DIR = f"{RESULTS}/base_model" if EMBEDDED else config["base_model"]["source"]

try:
    N_LAYERS = model_num_layers(config["base_model"]["source"], config["base_model"]["num_layers"])
    CONDITIONS = conditions(config, N_LAYERS)
    FINETUNE_LAYERS = {
        name: lora_layers(ft["lora"], N_LAYERS, f"finetunes.{name}.lora.layers")
        for name, ft in config["finetunes"].items()
    }
except EMLabError as _exc:
    raise WorkflowError(f"config: {_exc}") from None
DIRECTION_FINETUNES = direction_finetunes(config)
PHASE_FINETUNES = phase_finetunes(config)  # LoRA fine-tunes with training.checkpoint_every > 0
SEMANTIC_VECTORS = semantic_vectors(config)  # [(finetune, split)]
try:
    SINGLE_ADAPTERS = {ft: single_adapter_layer(config, ft, N_LAYERS) for ft in config["single_adapter"]["finetunes"]}
except EMLabError as _exc:
    raise WorkflowError(f"config: {_exc}") from None


wildcard_constraints:
    dataset=r"[a-z][a-z0-9_]*",
    finetune=r"[a-z][a-z0-9_]*",
    condition=r"[A-Za-z0-9_.\-]+",


def repo_path(path):
    """A config path: as given if it exists (relative to the working directory), else in the repository."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    return os.path.join(workflow.basedir, path)


def model_resources(runtime_key="runtime"):
    """Resources of a model job; GPU settings come from config.resources."""
    res = config["resources"]
    out = {"mem_mb": res["mem_mb"], "runtime": res[runtime_key]}
    if res["gpu"]:
        out["gpu"] = res["gpu"]
        if res["gpu_model"]:
            out["gpu_model"] = res["gpu_model"]
    return out


def base_model_input():
    """The converted embedded model is a workflow output; any other source is used as is."""
    return [BASE_MODEL_DIR] if EMBEDDED else []


def dataset_source(dataset):
    """The JSONL a dataset is prepared from: its path, or the file rule synthesize_dataset writes."""
    ds = config["datasets"][dataset]
    if "synthesis" in ds:
        return f"{RESULTS}/synthetic/{ds['synthesis']}.jsonl"
    return repo_path(ds["path"])


def synthesis_params(name):
    """Everything that changes a synthesized dataset or its cost (never the API key)."""
    entry = dict(config["synthesis"][name])
    if entry["seed"] is None:
        entry["seed"] = config["seed"]
    return entry


def adapter_dir(finetune):
    return f"{RESULTS}/finetunes/{finetune}/adapter"


def checkpoint_adapter_dir(finetune, step):
    """A checkpoint's adapter exported out of the live checkpoints/ folder (rules/phase.smk)."""
    return f"{RESULTS}/finetunes/{finetune}/checkpoint_adapters/step-{step}"


def generation_inputs(wildcards):
    spec = CONDITIONS[wildcards.condition]
    inputs = {"questions": repo_path(spec.get("questions", config["questions"])), "base_model": base_model_input()}
    if spec["model"] != "base":
        inputs["adapter"] = checkpoint_adapter_dir(spec["model"], spec["checkpoint"]) if spec.get("checkpoint") else adapter_dir(spec["model"])
    if spec["intervention"]["kind"] != "none":
        inputs["vectors"] = direction_file(spec["intervention"]["vector"], spec["intervention"].get("split", "general"))
    return inputs


def direction_file(finetune, split="general"):
    """The general mean-diff vectors of a fine-tune, or one of its semantic vectors."""
    if split == "general":
        return f"{RESULTS}/directions/{finetune}.safetensors"
    return f"{RESULTS}/directions/semantic/{finetune}/{split}.safetensors"


def judge_metrics(condition=None):
    """judge.metrics, plus the extra (semantic, bad_stuff) judges of that condition (emlab.plan.condition_metrics)."""
    if condition is None:
        return config["judge"]["metrics"]
    return condition_metrics(config, CONDITIONS[condition])


def rubric_files(condition=None):
    return [repo_path(os.path.join(config["judge"]["rubrics_dir"], f"{m}.yaml")) for m in judge_metrics(condition)]


def judge_model_input():
    if config["judge"]["backend"] == "hf" and config["judge"]["hf"]["model"] == "base":
        return base_model_input()
    return []


def judge_model_path():
    model = config["judge"]["hf"]["model"]
    return BASE_MODEL_DIR if model == "base" else model


def judge_params(condition=None):
    """Everything that changes a judge score (never the API key)."""
    j = config["judge"]
    p = {"backend": j["backend"], "metrics": judge_metrics(condition), "min_number_mass": j["min_number_mass"], "cache": j["cache"]}
    if j["backend"] == "hf":
        p["hf"] = dict(j["hf"], model=judge_model_path())
    else:
        p["openai"] = dict(j["openai"], seed=config["seed"])
    return p


def condition_table():
    """JSON-able table of every condition (model, group, intervention) for metrics and figures."""
    return {cid: spec for cid, spec in CONDITIONS.items()}


# Trait monitoring (rules/traits.smk, rules/monitor.smk): the trait files are checked now, and the
# calibration grid's fine-tunes join `finetunes` only after the main study above is planned.
try:
    TRAIT_SET = load_trait_set(repo_path(config["traits"]["folder"]))
    MONITOR_RUNS = register_runs(config)
    FINETUNE_LAYERS.update({name: lora_layers(config["finetunes"][name]["lora"], N_LAYERS, f"monitor run {name}")
                            for name in MONITOR_RUNS})
except EMLabError as _exc:
    raise WorkflowError(f"config: {_exc}") from None


def final_targets():
    targets = [
        f"{RESULTS}/metrics/em_by_condition.csv",
        f"{RESULTS}/metrics/em_by_question.csv",
        f"{RESULTS}/figures/em_by_condition.png",
    ]
    if DIRECTION_FINETUNES:
        targets.append(f"{RESULTS}/directions/cosine_by_layer.csv")
        targets.append(f"{RESULTS}/figures/direction_cosine.png")
    if any(s["group"] == "steering" for s in CONDITIONS.values()):
        targets.append(f"{RESULTS}/figures/steering_sweep.png")
    if any(s["group"] in ("ablation", "transfer") for s in CONDITIONS.values()):
        targets.append(f"{RESULTS}/figures/ablation.png")
    for ft in PHASE_FINETUNES:
        targets.append(f"{RESULTS}/phase/{ft}/rotation.csv")
        targets.append(f"{RESULTS}/figures/phase/{ft}.png")
    if SEMANTIC_VECTORS:
        targets.append(f"{RESULTS}/directions/semantic_cosine.csv")
        targets.append(f"{RESULTS}/figures/semantic_vectors.png")
    if any(s["group"] == "steering" for s in CONDITIONS.values()):
        targets.append(f"{RESULTS}/figures/steering_metrics.png")
    if SINGLE_ADAPTERS:
        targets.append(f"{RESULTS}/figures/single_adapter.png")
    targets += [f"{RESULTS}/traits/directions.json", f"{RESULTS}/traits/cosine.csv"]  # rules/traits.smk
    if MONITOR_RUNS:  # rules/monitor.smk (figure_monitor writes every monitor figure)
        targets += [f"{RESULTS}/monitor/evaluation.csv", f"{RESULTS}/monitor/monitor.skops",
                    f"{RESULTS}/figures/monitor/pc1_drift.png"]
    return targets
