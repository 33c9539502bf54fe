# Config loading and validation, the study plan, path helpers, input
# functions and wildcard constraints. No rules here.
import os
import re
import sys

sys.path.insert(0, os.path.join(workflow.basedir, "workflow", "src"))

from emlab.core.config import model_num_layers, validate_config, lora_layers, training_settings
from emlab.core.errors import EMLabError
from emlab.plan.study import condition_plan, direction_finetunes, em_steps as phase_em_steps, phase_finetunes
from emlab.plan.study import condition_metrics, semantic_vectors, single_adapter_layer, single_adapter_vectors
from emlab.plan.study import finetune_seed, generation_settings, lora_interp_finetunes, role_reference_layers
from emlab.core.settings import canonical
from emlab.plan.conditions import Group
from emlab.plan.monitor import register_live_run, register_runs
from emlab.plan.monitor import run_conditions as monitor_run_conditions, start_adapter as monitor_start_adapter
from emlab.plan.monitor import checkpoint_condition_id, check_trait_rubrics, trait_judge_metric, trait_judge_metrics
from emlab.plan.monitor import ANALYSIS_ROLES, runs_by_role, sae_baseline
from emlab.plan.sae import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME
from emlab.plan.traits import choose_layer as choose_trait_layer, load_trait_set

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
    CONDITIONS = condition_plan(config, N_LAYERS)  # condition id -> emlab.interventions.Condition
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
    # fine-tune -> the vectors its B is compared with: its own, then single_adapter.reference_vector (if set)
    SINGLE_ADAPTER_VECTORS = {ft: single_adapter_vectors(config, ft, N_LAYERS) for ft in SINGLE_ADAPTERS}
    LORA_INTERP = lora_interp_finetunes(config, N_LAYERS)  # fine-tune -> adapter layers (rules/lora_interp.smk)
except EMLabError as _exc:
    raise WorkflowError(f"config: {_exc}") from None


def _longest_first(name):
    """Sort key: longer names first (so an alternation never stops at a prefix), then by name."""
    return (-len(name), name)


def one_of(names):
    """A wildcard constraint matching exactly the given names (none: matches nothing)."""
    names = sorted({str(n) for n in names}, key=_longest_first)
    return "|".join(re.escape(n) for n in names) if names else r"(?!)"


# Wildcards match only what the config plans, so a stray file name never becomes a job.
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
    return canonical(entry)


def adapter_dir(finetune):
    return f"{RESULTS}/finetunes/{finetune}/adapter"


def checkpoint_adapter_dir(finetune, step):
    """A checkpoint's adapter exported out of the live checkpoints/ folder (rules/phase.smk)."""
    return f"{RESULTS}/finetunes/{finetune}/checkpoint_adapters/step-{step}"


def generation_inputs(wildcards):
    condition = CONDITIONS[wildcards.condition]
    questions = config["monitor"]["questions"] if condition.group is Group.MONITOR else config["questions"]
    inputs = {"questions": repo_path(questions), "base_model": base_model_input()}
    if condition.model != "base":
        inputs["adapter"] = (adapter_dir(condition.model) if condition.checkpoint is None
                             else checkpoint_adapter_dir(condition.model, condition.checkpoint))
    if condition.direction is not None:
        inputs["vectors"] = direction_file(*condition.direction)
    if condition.group is Group.SCALAR_PATCHING and condition.needs_medical_questions:
        inputs["medical_questions"] = repo_path(config["lora_interp"]["patching"]["medical_questions"])
    if condition.group is Group.ADAPTER_STEERING and condition.roles_at_run_time:
        # lora_interp.roles.source rule: the job reads the roles the fine-tune's own probes gave (rule lora_probes)
        inputs["roles"] = f"{RESULTS}/lora_interp/{condition.model}/roles.json"
    return inputs


def direction_file(finetune, split="general"):
    """The general mean-diff vectors of a fine-tune, or one of its semantic vectors."""
    if split == "general":
        return f"{RESULTS}/directions/{finetune}.safetensors"
    return f"{RESULTS}/directions/semantic/{finetune}/{split}.safetensors"


def judge_metrics(condition=None):
    """judge.metrics, plus the extra (semantic, bad_stuff, trait) judges of that condition (emlab.plan.study.condition_metrics)."""
    if condition is None:
        return config["judge"]["metrics"]
    return condition_metrics(config, CONDITIONS[condition], TRAIT_SET.alignment.names)


def rubric_path(metric):
    return repo_path(os.path.join(config["judge"]["rubrics_dir"], f"{metric}.yaml"))


def rubric_paths(metrics):
    return [rubric_path(m) for m in metrics]


def rubric_files(condition=None):
    return rubric_paths(judge_metrics(condition))


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
    return canonical(p)


def lora_probe_params():
    """lora_interp.probes with its seed resolved (null: the top-level seed)."""
    probes = dict(config["lora_interp"]["probes"])
    if probes["seed"] is None:
        probes["seed"] = config["seed"]
    return canonical(probes)


def adapter_steering_figure_conditions():
    """Each lora_interp fine-tune (the unsteered reference) followed by its adapter-steering conditions."""
    out = []
    for ft in LORA_INTERP:
        out.append(ft)
        out += [cid for cid, c in CONDITIONS.items() if c.group is Group.ADAPTER_STEERING and c.model == ft]
    return out


def scalar_patching_finetunes():
    return list(dict.fromkeys(c.model for c in CONDITIONS.values() if c.group is Group.SCALAR_PATCHING))


def scalar_patching_conditions_of(ft):
    """The scalar-patching conditions of one fine-tune, `same` (the reference) first, in plan order."""
    return [cid for cid, c in CONDITIONS.items() if c.group is Group.SCALAR_PATCHING and c.model == ft]


def adapter_steering_cases():
    """condition id -> bar label of the adapter-steering figure."""
    return {cid: (f"{cid} (unsteered)" if CONDITIONS[cid].group is not Group.ADAPTER_STEERING
                  else f"{CONDITIONS[cid].model}: {CONDITIONS[cid].case}") for cid in adapter_steering_figure_conditions()}


def condition_table():
    """Every condition's params form by id (canonical: sorted by id). The metrics rows follow the plan
    order through the order of the rule's judgments input, which, unlike params, no re-run compares."""
    return canonical({cid: c.to_params() for cid, c in CONDITIONS.items()})


# Trait monitoring (rules/traits.smk, rules/monitor.smk): the trait files are checked now, and the
# calibration grid's fine-tunes join `finetunes` only after the main study above is planned.
try:
    TRAIT_SET = load_trait_set(repo_path(config["traits"]["folder"]))
    if config["traits"]["layer"] != "auto":  # a layer beyond the model fails here, not in trait_directions
        choose_trait_layer(config["traits"]["layer"], N_LAYERS)
    MONITOR_RUNS = register_runs(config)
    if MONITOR_RUNS:  # monitor.analyses.trait_judges: a rubric per alignment trait
        check_trait_rubrics(config, TRAIT_SET.alignment.names, rubric_path)
    LIVE_RUN = register_live_run(config)  # monitor.live: trained while the fitted monitor watches
    # monitor.sae: an SAE in SAELens' format, its hook within the model's depth and d_in its width (or None)
    SAE_BASELINE = sae_baseline(config, N_LAYERS, config["monitor"]["sae"]["path"] and
                                repo_path(config["monitor"]["sae"]["path"]), BASE_MODEL_DIR) if MONITOR_RUNS else None
    FINETUNE_LAYERS.update({name: lora_layers(config["finetunes"][name]["lora"], N_LAYERS, f"monitor run {name}")
                            for name in [*MONITOR_RUNS, *([LIVE_RUN] if LIVE_RUN else [])]})
except EMLabError as _exc:
    raise WorkflowError(f"config: {_exc}") from None


# The label conditions of each monitor run's own checkpoints (condition -> step) are generated and judged
# in one job per run (the monitor_labels__<run> rules of rules/traits.smk); each is a few seconds of work,
# and a job of its own would spend most of its time starting up. Rules generate and judge take the others.
LABEL_BUNDLES = {name: {checkpoint_condition_id(name, s): s for s in run.checkpoint_steps}
                 for name, run in MONITOR_RUNS.items()}
UNBUNDLED_CONDITIONS = [c for c in CONDITIONS if not any(c in bundle for bundle in LABEL_BUNDLES.values())]


# After the monitor runs joined `finetunes`, so their fine-tune jobs match too.
wildcard_constraints:
    dataset=one_of(config["datasets"]),
    finetune=one_of(config["finetunes"]),
    condition=one_of(CONDITIONS),
    split=one_of(split for _, split in SEMANTIC_VECTORS),
    synthesis=one_of(ds["synthesis"] for ds in config["datasets"].values() if "synthesis" in ds),
    step=one_of(c.checkpoint for c in CONDITIONS.values() if c.checkpoint is not None),
    ft=one_of(LORA_INTERP),


def start_adapter_input(wildcards):
    """A fine-tune with `start_from` (the monitor's start-from-misaligned stress runs) continues that adapter."""
    start = config["finetunes"][wildcards.finetune].get("start_from")
    return {"start_adapter": adapter_dir(start)} if start else {}


def live_monitor_inputs(wildcards):
    """A fine-tune with training.monitor also reads the saved monitor and the trait directions."""
    monitor = training_settings(config, wildcards.finetune).get("monitor")
    if not monitor:
        return {}
    return {"monitor": monitor["model"], "monitor_sidecar": monitor["model"] + ".json",
            "directions": f"{RESULTS}/traits/directions.safetensors", "directions_meta": f"{RESULTS}/traits/directions.json"}


# Input functions (get_*) of the rule files, by file in include order, after the ones several
# files share. They live here because Snakemake's linter wants no functions beside rules.
# shared
def get_base_model_input(wildcards):
    """For unpack(): the named input base_model (the converted embedded model, or nothing)."""
    return {"base_model": base_model_input()}


def get_finetune_adapter(wildcards):
    """The finished adapter of the {finetune} wildcard."""
    return adapter_dir(wildcards.finetune)


def single_adapter_reference(finetune):
    """The reference vector (single_adapter.reference_vector) a single-adapter fine-tune is compared with, or None."""
    return next((c for c in SINGLE_ADAPTER_VECTORS[finetune] if c.role == "reference"), None)


def get_single_adapter_vectors(wildcards):
    """For unpack(): the named direction files of a single-adapter fine-tune: `vectors` (its own) and, with
    single_adapter.reference_vector set, `reference_vectors` (that fine-tune's)."""
    inputs = {"vectors": direction_file(wildcards.finetune)}
    reference = single_adapter_reference(wildcards.finetune)
    if reference is not None:
        inputs["reference_vectors"] = direction_file(reference.finetune)
    return inputs


def get_single_adapter_reference(wildcards):
    """Param: {"finetune", "layer"} of the reference vector of a single-adapter fine-tune, or None."""
    reference = single_adapter_reference(wildcards.finetune)
    return None if reference is None else {"finetune": reference.finetune, "layer": reference.layer}


def get_single_adapter_compared(wildcards):
    """Param: the vectors a single-adapter fine-tune is compared with (own and reference), as plain dicts."""
    return [c.to_params() for c in SINGLE_ADAPTER_VECTORS[wildcards.finetune]]


def get_checkpoint_dir(wildcards):
    """The live checkpoints/ folder of the {finetune} wildcard (never a declared output: see rules/phase.smk)."""
    return f"{RESULTS}/finetunes/{wildcards.finetune}/checkpoints"


# rules/synthesis.smk
def get_synthesis_prompt(wildcards):
    return repo_path(config["synthesis"][wildcards.synthesis]["prompt_file"])


def get_synthesis_settings(wildcards):
    return synthesis_params(wildcards.synthesis)


# rules/data.smk
def get_dataset_source(wildcards):
    return dataset_source(wildcards.dataset)


def get_eval_fraction(wildcards):
    return canonical(config["datasets"][wildcards.dataset]["eval_fraction"])


# rules/finetune.smk (TRAIT_SUBSAMPLE: rules/traits.smk, read when a job is planned)
def get_finetune_inputs(wildcards):
    """For unpack(): the base model, the live monitor's files (training.monitor) and the adapter a
    `start_from` fine-tune continues."""
    return {"base_model": base_model_input(), **live_monitor_inputs(wildcards), **start_adapter_input(wildcards)}


def get_finetune_train(wildcards):
    return f"{RESULTS}/datasets/{config['finetunes'][wildcards.finetune]['dataset']}/train.jsonl"


def get_finetune_eval(wildcards):
    return f"{RESULTS}/datasets/{config['finetunes'][wildcards.finetune]['dataset']}/eval.jsonl"


def get_finetune_lora(wildcards):
    """The lora spec with concrete layer indices; None for a full fine-tune."""
    lora = config["finetunes"][wildcards.finetune]["lora"]
    return None if lora is None else canonical(dict(lora, resolved_layers=FINETUNE_LAYERS[wildcards.finetune]))


def get_finetune_training(wildcards):
    return canonical(training_settings(config, wildcards.finetune))


def get_live_monitor_settings(wildcards):
    """training.monitor only: the trait files and measurement settings the live monitor uses."""
    if not live_monitor_inputs(wildcards):
        return None
    return canonical({"folder": repo_path(config["traits"]["folder"]), "subsample": TRAIT_SUBSAMPLE,
                      "model_id": config["base_model"]["source"], "batch_size": config["traits"]["batch_size"]})


def get_finetune_seed(wildcards):
    return canonical(finetune_seed(config, wildcards.finetune))


# rules/generate.smk
def get_condition_id(wildcards):
    return wildcards.condition


def get_condition_spec(wildcards):
    return canonical(CONDITIONS[wildcards.condition].to_params())


def get_generation_settings(wildcards):
    """The monitor's label conditions and scalar patching carry their own settings (emlab.plan.study)."""
    return canonical(generation_settings(config, CONDITIONS[wildcards.condition]))


# rules/judge.smk
def get_condition_rubrics(wildcards):
    return rubric_files(wildcards.condition)


def get_condition_judge_params(wildcards):
    return judge_params(wildcards.condition)


# rules/directions.smk
def get_semantic_general_vectors(wildcards):
    """The general vectors of every fine-tune with a semantic vector, each once."""
    return list(dict.fromkeys(direction_file(ft) for ft, _ in SEMANTIC_VECTORS))


def get_semantic_vectors(wildcards):
    return [direction_file(ft, split) for ft, split in SEMANTIC_VECTORS]


# rules/lora_interp.smk
def get_lora_interp_adapter(wildcards):
    """The finished adapter of the {ft} wildcard."""
    return adapter_dir(wildcards.ft)


def get_adapter_reference_layers(wildcards):
    return role_reference_layers(config, wildcards.ft)


def get_adapter_steering_judgments(wildcards):
    return [f"{RESULTS}/judgments/{cid}.parquet" for cid in adapter_steering_figure_conditions()]


def get_scalar_patching_judgments(wildcards):
    return [f"{RESULTS}/judgments/{cid}.parquet" for cid in scalar_patching_conditions_of(wildcards.ft)]


def get_scalar_patching_conditions(wildcards):
    return scalar_patching_conditions_of(wildcards.ft)


def get_scalar_patching_pairs(wildcards):
    return {cid: CONDITIONS[cid].pair for cid in scalar_patching_conditions_of(wildcards.ft)}


# rules/figures.smk
def get_steering_judgments(wildcards):
    """The judgments of the base model and of every steering condition."""
    return [f"{RESULTS}/judgments/{cid}.parquet" for cid, c in CONDITIONS.items()
            if cid == "base" or c.group is Group.STEERING]


def get_semantic_steering_judgments(wildcards):
    """get_steering_judgments, plus (figures.semantic_steering.baseline: finetune, the paper's Fig. 3) the
    unsteered fine-tune of every semantic steering vector: its own condition, judged with the semantic splits
    (emlab.plan.study.condition_metrics)."""
    paths = get_steering_judgments(wildcards)
    if config["figures"]["semantic_steering"]["baseline"] == "finetune":
        fts = sorted({ft for ft, _ in SEMANTIC_VECTORS if ft in config["steering"]["vectors"]})
        paths += [f"{RESULTS}/judgments/{ft}.parquet" for ft in fts if ft in CONDITIONS]
    return paths


# rules/phase.smk
def get_checkpoint_step(wildcards):
    return int(wildcards.step)


def get_phase_em_steps(wildcards):
    return canonical(phase_em_steps(CONDITIONS, wildcards.finetune))


# rules/traits.smk
def get_trait_folder(wildcards, input):
    """The folder of the trait files (from the rule's input, so it names the files the job read)."""
    return os.path.dirname(input.traits[0])


def get_drift_adapters(wildcards):
    """The exported adapter of each checkpoint step of the {run} wildcard."""
    return [checkpoint_adapter_dir(wildcards.run, s) for s in MONITOR_RUNS[wildcards.run].checkpoint_steps]


def get_drift_reference(wildcards):
    """A start-from run's step 0 is the adapter it starts from (emlab.plan.monitor.start_adapter)."""
    run = MONITOR_RUNS[wildcards.run]
    return [monitor_start_adapter(run)] if run.start else []


def get_drift_steps(wildcards):
    return list(MONITOR_RUNS[wildcards.run].checkpoint_steps)


# rules/monitor.smk: the SAE baseline's files (monitor.sae.path), read by name; none without an SAE
def sae_inputs():
    if SAE_BASELINE is None:
        return {}
    return {"sae_cfg": os.path.join(SAE_BASELINE.path, SAE_CFG_FILENAME),
            "sae_weights": os.path.join(SAE_BASELINE.path, SAE_WEIGHTS_FILENAME)}


def label_bundle_inputs(run):
    """The input function of the monitor_labels__<run> rules, what rules generate and judge would read for
    each of the run's label conditions."""

    def get_label_bundle_inputs(wildcards):
        return {"questions": repo_path(config["monitor"]["questions"]), "base_model": base_model_input(),
                "adapters": [checkpoint_adapter_dir(run, step) for step in LABEL_BUNDLES[run].values()],
                "rubrics": rubric_files(next(iter(LABEL_BUNDLES[run]))), "judge_model": judge_model_input()}

    return get_label_bundle_inputs


def label_bundle_params(run):
    """Each label condition's step and spec, and the generation and judge settings they share: every param
    rules generate and judge would compare for a re-run."""
    generation = [canonical(generation_settings(config, CONDITIONS[c])) for c in LABEL_BUNDLES[run]]
    judge = [judge_params(c) for c in LABEL_BUNDLES[run]]
    if any(g != generation[0] for g in generation) or any(j != judge[0] for j in judge):
        raise WorkflowError(f"monitor run {run}: its label conditions differ in generation or judge settings")
    return {"run": run, "generation": generation[0], "judge": judge[0],
            "conditions": canonical({c: {"step": step, "spec": CONDITIONS[c].to_params()}
                                     for c, step in LABEL_BUNDLES[run].items()})}


def get_drift_label_judgments(wildcards):
    """Each step's label condition, in step order (emlab.plan.monitor.run_conditions)."""
    return [f"{RESULTS}/judgments/{cid}.parquet" for _, cid in
            sorted(monitor_run_conditions(MONITOR_RUNS[wildcards.run], MONITOR_RUNS).items())]


def get_drift_label_conditions(wildcards):
    return canonical({str(k): v for k, v in monitor_run_conditions(MONITOR_RUNS[wildcards.run], MONITOR_RUNS).items()})


# monitor_analyses (rules/monitor.smk) reads the calibration and held-out runs: they share step 0, the base model
def analysis_runs():
    return runs_by_role(MONITOR_RUNS, *ANALYSIS_ROLES)


def analysis_label_conditions():
    """run -> step -> its label condition, for every analysed run (step 0: mon__base)."""
    return {r: {str(s): c for s, c in monitor_run_conditions(MONITOR_RUNS[r], MONITOR_RUNS).items()}
            for r in analysis_runs()}


def trait_judge_inputs():
    """The label judgments the trait-against-behaviour analysis reads: every analysed checkpoint's, each once,
    when monitor.analyses.trait_judges is on; none otherwise."""
    if not trait_judge_metrics(config, TRAIT_SET.alignment.names):
        return []
    conditions = dict.fromkeys(c for steps in analysis_label_conditions().values() for c in steps.values())
    return [f"{RESULTS}/judgments/{c}.parquet" for c in conditions]


def final_targets():
    targets = [
        f"{RESULTS}/metrics/em_by_condition.csv",
        f"{RESULTS}/metrics/em_by_question.csv",
        f"{RESULTS}/figures/em_by_condition.png",
    ]
    if DIRECTION_FINETUNES:
        targets.append(f"{RESULTS}/directions/cosine_by_layer.csv")
        targets.append(f"{RESULTS}/figures/direction_cosine.png")
    if any(c.group is Group.STEERING for c in CONDITIONS.values()):
        targets.append(f"{RESULTS}/figures/steering_sweep.png")
    if any(c.group in (Group.ABLATION, Group.TRANSFER) for c in CONDITIONS.values()):
        targets.append(f"{RESULTS}/figures/ablation.png")
    for ft in PHASE_FINETUNES:
        targets.append(f"{RESULTS}/phase/{ft}/rotation.csv")
        targets.append(f"{RESULTS}/figures/phase/{ft}.png")
    if SEMANTIC_VECTORS:
        targets.append(f"{RESULTS}/directions/semantic_cosine.csv")
        targets.append(f"{RESULTS}/figures/semantic_vectors.png")
    if any(c.group is Group.STEERING for c in CONDITIONS.values()):
        targets.append(f"{RESULTS}/figures/steering_metrics.png")
    if SINGLE_ADAPTERS:
        targets.append(f"{RESULTS}/figures/single_adapter.png")
        targets += [f"{RESULTS}/single_adapter/{ft}/comparison.csv" for ft in SINGLE_ADAPTERS]
    for ft in LORA_INTERP:  # rules/lora_interp.smk
        targets += [f"{RESULTS}/lora_interp/{ft}/probes.csv", f"{RESULTS}/lora_interp/{ft}/roles.json",
                    f"{RESULTS}/figures/lora_interp/{ft}/probe_table.png",
                    f"{RESULTS}/figures/lora_interp/{ft}/coefficients.png", f"{RESULTS}/lora_interp/{ft}/token_view.html"]
    if any(c.group is Group.ADAPTER_STEERING for c in CONDITIONS.values()):
        targets.append(f"{RESULTS}/figures/adapter_steering.png")
    for ft in scalar_patching_finetunes():
        targets.append(f"{RESULTS}/figures/lora_interp/{ft}/patching.png")
    targets += [f"{RESULTS}/traits/directions.json", f"{RESULTS}/traits/cosine.csv"]  # rules/traits.smk
    if MONITOR_RUNS:  # rules/monitor.smk (figure_monitor writes every monitor figure)
        targets += [f"{RESULTS}/monitor/evaluation.csv", f"{RESULTS}/monitor/monitor.skops",
                    f"{RESULTS}/figures/monitor/pc1_drift.png"]
    if LIVE_RUN:
        targets.append(f"{RESULTS}/figures/monitor/live.png")
    return targets


def validate_small_inputs():
    """Load every small input the plan reads (questions, the rubric of every judged metric, the prompt of
    every synthesized dataset) with the library's own loaders, so a bad one fails the dry run with one
    clear error instead of a job hours later. Datasets are checked by prepare_dataset, the first job."""
    from emlab.em.judging.rubrics import load_rubric
    from emlab.em.questions import load_questions

    load_questions(repo_path(config["questions"]))
    if scalar_patching_finetunes():
        load_questions(repo_path(config["lora_interp"]["patching"]["medical_questions"]))
    metrics = dict.fromkeys(m for cid in CONDITIONS for m in judge_metrics(cid))
    for path in rubric_paths(metrics):
        load_rubric(path)
    names = sorted({ds["synthesis"] for ds in config["datasets"].values() if "synthesis" in ds})
    if names:
        from emlab.em.synthesis import load_prompt

        for name in names:
            load_prompt(repo_path(config["synthesis"][name]["prompt_file"]))


try:
    validate_small_inputs()
except EMLabError as _exc:
    raise WorkflowError(str(_exc)) from None
