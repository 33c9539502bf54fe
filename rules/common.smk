# Config loading and validation, the study plan, path helpers, input
# functions and wildcard constraints. No rules here.
import os
import re
import sys

sys.path.insert(0, os.path.join(workflow.basedir, "workflow", "src"))

from types import SimpleNamespace

from emlab.core.config import model_num_layers, validate_config, lora_layers, training_settings
from emlab.core.errors import EMLabError
from emlab.plan.study import condition_plan, direction_finetunes, em_steps as phase_em_steps, phase_finetunes
from emlab.plan.study import condition_metrics, semantic_vectors, single_adapter_layer, single_adapter_vectors
from emlab.plan.study import finetune_seed, generation_settings, lora_interp_finetunes, role_reference_layers
from emlab.core.settings import canonical
from emlab.plan.conditions import Group
from emlab.plan.models import check_models, is_multi, model_view, monitor_role, run_qualifier, sae_model
from emlab.plan.monitor import register_live_run, register_model_runs
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
EMBEDDED_DIR = f"{RESULTS}/base_model"  # the embedded model, converted once (rules/base_model.smk)
MULTI = is_multi(config)  # base_models: several base models, each under results/models/<key>/
try:
    BASE_MODELS = check_models(config)  # key -> emlab.plan.models.BaseModel
except EMLabError as _exc:
    raise WorkflowError(f"config: {_exc}") from None


def repo_path(path):
    """A config path: as given if it exists (relative to the working directory), else in the repository."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    return os.path.join(workflow.basedir, path)


def rubric_path(metric):
    return repo_path(os.path.join(config["judge"]["rubrics_dir"], f"{metric}.yaml"))


def model_dir(source):
    """The folder (or hub id) a base model is loaded from: the converted embedded model, or its source."""
    return EMBEDDED_DIR if source == "embedded" else source


def plan_model(key):
    """One base model's study, planned from its view of the config (emlab.plan.models.model_view): the
    single-model plan of every stage, under the model's root folder (results/ or results/models/<key>/)."""
    bm = BASE_MODELS[key]
    where = bm.config_key
    cfg = model_view(config, key)
    try:
        n_layers = model_num_layers(bm.source, bm.num_layers)
    except EMLabError as exc:
        raise EMLabError(f"{where}: {exc}") from None
    role = monitor_role(config, key)
    qualifier = run_qualifier(config, key)
    p = SimpleNamespace(key=key, root=bm.root, cfg=cfg, source=bm.source, base_dir=model_dir(bm.source),
                        embedded=bm.source == "embedded", n_layers=n_layers, monitor_role=role)
    p.conditions = condition_plan(cfg, n_layers, qualifier, role == "stress")  # id -> Condition
    p.finetune_layers = {name: lora_layers(ft["lora"], n_layers, f"finetunes.{name}.lora.layers ({where})")
                         for name, ft in cfg["finetunes"].items()}
    p.direction_finetunes = direction_finetunes(cfg)
    p.phase_finetunes = phase_finetunes(cfg)  # LoRA fine-tunes with training.checkpoint_every > 0
    p.semantic_vectors = semantic_vectors(cfg)  # [(finetune, split)]
    p.single_adapters = {ft: single_adapter_layer(cfg, ft, n_layers) for ft in cfg["single_adapter"]["finetunes"]}
    # fine-tune -> the vectors its B is compared with: its own, then single_adapter.reference_vector (if set)
    p.single_adapter_vectors = {ft: single_adapter_vectors(cfg, ft, n_layers) for ft in p.single_adapters}
    p.lora_interp = lora_interp_finetunes(cfg, n_layers)  # fine-tune -> adapter layers (rules/lora_interp.smk)
    # Trait monitoring (rules/traits.smk, rules/monitor.smk): the calibration grid's fine-tunes join the
    # view's `finetunes` only after the main study above is planned.
    p.traits = not MULTI or role is not None  # the base model's trait directions
    if p.traits and cfg["traits"]["layer"] != "auto":  # a layer beyond the model fails here, not in a job
        choose_trait_layer(cfg["traits"]["layer"], n_layers)
    p.monitor_runs = register_model_runs(cfg, config, key)
    p.live_run = register_live_run(cfg, qualifier)  # monitor.live: trained while the fitted monitor watches
    # monitor.sae: an SAE in SAELens' format, its hook within the model's depth and d_in its width (or None)
    p.sae = (sae_baseline(cfg, n_layers, cfg["monitor"]["sae"]["path"] and repo_path(cfg["monitor"]["sae"]["path"]),
                          p.base_dir) if p.monitor_runs and key == sae_model(config) else None)
    p.finetune_layers.update({name: lora_layers(cfg["finetunes"][name]["lora"], n_layers, f"monitor run {name}")
                              for name in [*p.monitor_runs, *([p.live_run] if p.live_run else [])]})
    # The label conditions of each monitor run's own checkpoints (condition -> step) are generated and judged
    # in one job per run (the monitor_labels__<run> rules of rules/traits.smk); each is a few seconds of work,
    # and a job of its own would spend most of its time starting up. Rules generate and judge take the others.
    p.analysed_runs = set(runs_by_role(p.monitor_runs, *ANALYSIS_ROLES))  # their labels get the trait judges
    p.label_bundles = {name: {checkpoint_condition_id(name, s): s for s in run.checkpoint_steps}
                       for name, run in p.monitor_runs.items()}
    p.unbundled = [c for c in p.conditions if not any(c in b for b in p.label_bundles.values())]
    return p


try:
    TRAIT_SET = load_trait_set(repo_path(config["traits"]["folder"]))
    MODELS = {}  # key -> its plan (plan_model)
    for _key in BASE_MODELS:
        try:
            MODELS[_key] = plan_model(_key)
        except EMLabError as _exc:  # e.g. a layer beyond this model's depth: say which model
            raise EMLabError(f"{_exc} (while planning base_models.{_key})" if MULTI else str(_exc)) from None
    MONITOR_RUNS = {name: run for p in MODELS.values() for name, run in p.monitor_runs.items()}  # every model's
    RUN_MODEL = {name: p for p in MODELS.values() for name in p.monitor_runs}  # run -> its model's plan
    if MONITOR_RUNS:  # monitor.analyses.trait_judges: a rubric per alignment trait
        check_trait_rubrics(config, TRAIT_SET.alignment.names, rubric_path)
    LIVE = next((p for p in MODELS.values() if p.live_run), None)  # the model of the live-monitor run
    LIVE_RUN = LIVE.live_run if LIVE else None
    SAE_BASELINE = next((p.sae for p in MODELS.values() if p.sae is not None), None)
except EMLabError as _exc:
    raise WorkflowError(f"config: {_exc}") from None
MODEL_BY_ROOT = {p.root: p for p in MODELS.values()}
FIT_MODELS = [p for p in MODELS.values() if p.monitor_role == "fit" and p.monitor_runs]  # the pooled monitor's


def mp(wildcards):
    """The plan of the model whose root the {mroot} wildcard names."""
    return MODEL_BY_ROOT[wildcards.mroot]


def _longest_first(name):
    """Sort key: longer names first (so an alternation never stops at a prefix), then by name."""
    return (-len(name), name)


def one_of(names):
    """A wildcard constraint matching exactly the given names (none: matches nothing)."""
    names = sorted({str(n) for n in names}, key=_longest_first)
    return "|".join(re.escape(n) for n in names) if names else r"(?!)"


def model_resources(runtime_key="runtime"):
    """Resources of a model job; GPU settings come from config.resources."""
    res = config["resources"]
    out = {"mem_mb": res["mem_mb"], "runtime": res[runtime_key]}
    if res["gpu"]:
        out["gpu"] = res["gpu"]
        if res["gpu_model"]:
            out["gpu_model"] = res["gpu_model"]
    return out


def base_model_input(p):
    """The converted embedded model is a workflow output; any other source is used as is."""
    return [EMBEDDED_DIR] if p.embedded else []


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


def adapter_dir(p, finetune):
    return f"{p.root}/finetunes/{finetune}/adapter"


def checkpoint_adapter_dir(p, finetune, step):
    """A checkpoint's adapter exported out of the live checkpoints/ folder (rules/phase.smk)."""
    return f"{p.root}/finetunes/{finetune}/checkpoint_adapters/step-{step}"


def generation_inputs(wildcards):
    p = mp(wildcards)
    condition = p.conditions[wildcards.condition]
    questions = config["monitor"]["questions"] if condition.group is Group.MONITOR else config["questions"]
    inputs = {"questions": repo_path(questions), "base_model": base_model_input(p)}
    if condition.model != "base":
        inputs["adapter"] = (adapter_dir(p, condition.model) if condition.checkpoint is None
                             else checkpoint_adapter_dir(p, condition.model, condition.checkpoint))
    if condition.direction is not None:
        inputs["vectors"] = direction_file(p, *condition.direction)
    if condition.group is Group.SCALAR_PATCHING and condition.needs_medical_questions:
        inputs["medical_questions"] = repo_path(config["lora_interp"]["patching"]["medical_questions"])
    if condition.group is Group.ADAPTER_STEERING and condition.roles_at_run_time:
        # lora_interp.roles.source rule: the job reads the roles the fine-tune's own probes gave (rule lora_probes)
        inputs["roles"] = f"{p.root}/lora_interp/{condition.model}/roles.json"
    return inputs


def direction_file(p, finetune, split="general"):
    """The general mean-diff vectors of a fine-tune, or one of its semantic vectors."""
    if split == "general":
        return f"{p.root}/directions/{finetune}.safetensors"
    return f"{p.root}/directions/semantic/{finetune}/{split}.safetensors"


_JUDGE_METRICS = {}  # (model, condition) -> its metrics: asked once per job and per input function


def judge_metrics(p=None, condition=None):
    """judge.metrics, plus the extra (semantic, bad_stuff, trait) judges of that condition (emlab.plan.study.condition_metrics)."""
    if condition is None:
        return config["judge"]["metrics"]
    if (p.key, condition) not in _JUDGE_METRICS:
        _JUDGE_METRICS[p.key, condition] = condition_metrics(p.cfg, p.conditions[condition], TRAIT_SET.alignment.names,
                                                             p.analysed_runs)
    return list(_JUDGE_METRICS[p.key, condition])


def rubric_paths(metrics):
    return [rubric_path(m) for m in metrics]


def rubric_files(p=None, condition=None):
    return rubric_paths(judge_metrics(p, condition))


def judge_model_path():
    """The judge's folder or hub id: `base` (the one base model), a key of base_models, or as given."""
    model = config["judge"]["hf"]["model"]
    if model == "base":
        return next(iter(MODELS.values())).base_dir
    if model in MODELS:
        return MODELS[model].base_dir
    return model


def judge_model_input():
    if config["judge"]["backend"] == "hf" and judge_model_path() == EMBEDDED_DIR:
        return [EMBEDDED_DIR]
    return []


def judge_params(p=None, condition=None):
    """Everything that changes a judge score (never the API key)."""
    j = config["judge"]
    out = {"backend": j["backend"], "metrics": judge_metrics(p, condition), "min_number_mass": j["min_number_mass"],
           "cache": j["cache"]}
    if j["backend"] == "hf":
        out["hf"] = dict(j["hf"], model=judge_model_path())
    else:
        out["openai"] = dict(j["openai"], seed=config["seed"])
    return canonical(out)


def lora_probe_params():
    """lora_interp.probes with its seed resolved (null: the top-level seed)."""
    probes = dict(config["lora_interp"]["probes"])
    if probes["seed"] is None:
        probes["seed"] = config["seed"]
    return canonical(probes)


def adapter_steering_figure_conditions(p):
    """Each lora_interp fine-tune (the unsteered reference) followed by its adapter-steering conditions."""
    out = []
    for ft in p.lora_interp:
        out.append(ft)
        out += [cid for cid, c in p.conditions.items() if c.group is Group.ADAPTER_STEERING and c.model == ft]
    return out


def scalar_patching_finetunes(p):
    return list(dict.fromkeys(c.model for c in p.conditions.values() if c.group is Group.SCALAR_PATCHING))


def scalar_patching_conditions_of(p, ft):
    """The scalar-patching conditions of one fine-tune, `same` (the reference) first, in plan order."""
    return [cid for cid, c in p.conditions.items() if c.group is Group.SCALAR_PATCHING and c.model == ft]


def adapter_steering_cases(p):
    """condition id -> bar label of the adapter-steering figure."""
    return {cid: (f"{cid} (unsteered)" if p.conditions[cid].group is not Group.ADAPTER_STEERING
                  else f"{p.conditions[cid].model}: {p.conditions[cid].case}")
            for cid in adapter_steering_figure_conditions(p)}


def condition_table(p):
    """Every condition's params form by id (canonical: sorted by id). The metrics rows follow the plan
    order through the order of the rule's judgments input, which, unlike params, no re-run compares."""
    return canonical({cid: c.to_params() for cid, c in p.conditions.items()})


def _all(attr):
    """The union over models of a per-model name collection (for the wildcard constraints)."""
    return [name for p in MODELS.values() for name in getattr(p, attr)]


# Wildcards match only what the config plans, so a stray file name never becomes a job. Every model's
# files are under its root ({mroot}: results, or results/models/<key> with base_models).
wildcard_constraints:
    mroot=one_of(MODEL_BY_ROOT),
    dataset=one_of(config["datasets"]),
    finetune=one_of(name for p in MODELS.values() for name in p.cfg["finetunes"]),
    condition=one_of(_all("conditions")),
    split=one_of(split for p in MODELS.values() for _, split in p.semantic_vectors),
    synthesis=one_of(ds["synthesis"] for ds in config["datasets"].values() if "synthesis" in ds),
    step=one_of(c.checkpoint for p in MODELS.values() for c in p.conditions.values() if c.checkpoint is not None),
    ft=one_of(_all("lora_interp")),


def start_adapter_input(p, finetune):
    """A fine-tune with `start_from` (the monitor's start-from-misaligned stress runs) continues that adapter."""
    start = p.cfg["finetunes"][finetune].get("start_from")
    return {"start_adapter": adapter_dir(p, start)} if start else {}


def live_monitor_inputs(p, finetune):
    """A fine-tune with training.monitor also reads the saved monitor and the trait directions."""
    monitor = training_settings(p.cfg, finetune).get("monitor")
    if not monitor:
        return {}
    return {"monitor": monitor["model"], "monitor_sidecar": monitor["model"] + ".json",
            "directions": f"{p.root}/traits/directions.safetensors", "directions_meta": f"{p.root}/traits/directions.json"}


# Input functions (get_*) of the rule files, by file in include order, after the ones several
# files share. They live here because Snakemake's linter wants no functions beside rules.
# shared
def get_base_model_input(wildcards):
    """For unpack(): the named input base_model (the converted embedded model, or nothing)."""
    return {"base_model": base_model_input(mp(wildcards))}


def get_base_model_dir(wildcards):
    """Param: the folder (or hub id) of the {mroot} model."""
    return mp(wildcards).base_dir


def get_model_source(wildcards):
    """Param: the {mroot} model's source as configured (embedded, a hub id or a folder)."""
    return mp(wildcards).source


def get_model_key(wildcards):
    """Param: the {mroot} model's key (default for the short form base_model)."""
    return mp(wildcards).key


def get_finetune_adapter(wildcards):
    """The finished adapter of the {finetune} wildcard."""
    return adapter_dir(mp(wildcards), wildcards.finetune)


def single_adapter_reference(p, finetune):
    """The reference vector (single_adapter.reference_vector) a single-adapter fine-tune is compared with, or None."""
    return next((c for c in p.single_adapter_vectors[finetune] if c.role == "reference"), None)


def get_single_adapter_vectors(wildcards):
    """For unpack(): the named direction files of a single-adapter fine-tune: `vectors` (its own) and, with
    single_adapter.reference_vector set, `reference_vectors` (that fine-tune's)."""
    p = mp(wildcards)
    inputs = {"vectors": direction_file(p, wildcards.finetune)}
    reference = single_adapter_reference(p, wildcards.finetune)
    if reference is not None:
        inputs["reference_vectors"] = direction_file(p, reference.finetune)
    return inputs


def get_single_adapter_reference(wildcards):
    """Param: {"finetune", "layer"} of the reference vector of a single-adapter fine-tune, or None."""
    reference = single_adapter_reference(mp(wildcards), wildcards.finetune)
    return None if reference is None else {"finetune": reference.finetune, "layer": reference.layer}


def get_single_adapter_compared(wildcards):
    """Param: the vectors a single-adapter fine-tune is compared with (own and reference), as plain dicts."""
    return [c.to_params() for c in mp(wildcards).single_adapter_vectors[wildcards.finetune]]


def get_checkpoint_dir(wildcards):
    """The live checkpoints/ folder of the {finetune} wildcard (never a declared output: see rules/phase.smk)."""
    return f"{wildcards.mroot}/finetunes/{wildcards.finetune}/checkpoints"


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
    p = mp(wildcards)
    return {"base_model": base_model_input(p), **live_monitor_inputs(p, wildcards.finetune),
            **start_adapter_input(p, wildcards.finetune)}


def get_finetune_train(wildcards):
    return f"{RESULTS}/datasets/{mp(wildcards).cfg['finetunes'][wildcards.finetune]['dataset']}/train.jsonl"


def get_finetune_eval(wildcards):
    return f"{RESULTS}/datasets/{mp(wildcards).cfg['finetunes'][wildcards.finetune]['dataset']}/eval.jsonl"


def get_finetune_lora(wildcards):
    """The lora spec with concrete layer indices; None for a full fine-tune."""
    p = mp(wildcards)
    lora = p.cfg["finetunes"][wildcards.finetune]["lora"]
    return None if lora is None else canonical(dict(lora, resolved_layers=p.finetune_layers[wildcards.finetune]))


def get_finetune_training(wildcards):
    return canonical(training_settings(mp(wildcards).cfg, wildcards.finetune))


def get_live_monitor_settings(wildcards):
    """training.monitor only: the trait files and measurement settings the live monitor uses."""
    p = mp(wildcards)
    if not live_monitor_inputs(p, wildcards.finetune):
        return None
    return canonical({"folder": repo_path(config["traits"]["folder"]), "subsample": TRAIT_SUBSAMPLE,
                      "model_id": p.source, "batch_size": config["traits"]["batch_size"]})


def get_finetune_seed(wildcards):
    return canonical(finetune_seed(mp(wildcards).cfg, wildcards.finetune))


# rules/generate.smk
def get_condition_id(wildcards):
    return wildcards.condition


def get_condition_spec(wildcards):
    return canonical(mp(wildcards).conditions[wildcards.condition].to_params())


def get_generation_settings(wildcards):
    """The monitor's label conditions and scalar patching carry their own settings (emlab.plan.study)."""
    p = mp(wildcards)
    return canonical(generation_settings(p.cfg, p.conditions[wildcards.condition]))


# rules/judge.smk
def get_condition_rubrics(wildcards):
    return rubric_files(mp(wildcards), wildcards.condition)


def get_condition_judge_params(wildcards):
    return judge_params(mp(wildcards), wildcards.condition)


# rules/activations.smk, rules/directions.smk
def get_direction_cosine_vectors(wildcards):
    return [direction_file(mp(wildcards), ft) for ft in mp(wildcards).direction_finetunes]


def get_direction_finetunes(wildcards):
    return list(mp(wildcards).direction_finetunes)


def get_semantic_general_vectors(wildcards):
    """The general vectors of every fine-tune with a semantic vector, each once."""
    p = mp(wildcards)
    return list(dict.fromkeys(direction_file(p, ft) for ft, _ in p.semantic_vectors))


def get_semantic_vectors(wildcards):
    p = mp(wildcards)
    return [direction_file(p, ft, split) for ft, split in p.semantic_vectors]


def get_semantic_pairs(wildcards):
    return [list(k) for k in mp(wildcards).semantic_vectors]


# rules/metrics.smk
def get_condition_judgments(wildcards):
    """Every condition's judgments, in plan order (the row order of the tables)."""
    return [f"{wildcards.mroot}/judgments/{cid}.parquet" for cid in mp(wildcards).conditions]


def get_condition_table(wildcards):
    return condition_table(mp(wildcards))


# rules/lora_interp.smk
def get_lora_interp_adapter(wildcards):
    """The finished adapter of the {ft} wildcard."""
    return adapter_dir(mp(wildcards), wildcards.ft)


def get_adapter_reference_layers(wildcards):
    return role_reference_layers(mp(wildcards).cfg, wildcards.ft)


def get_n_layers(wildcards):
    return mp(wildcards).n_layers


def get_adapter_steering_judgments(wildcards):
    return [f"{wildcards.mroot}/judgments/{cid}.parquet" for cid in adapter_steering_figure_conditions(mp(wildcards))]


def get_adapter_steering_conditions(wildcards):
    return adapter_steering_figure_conditions(mp(wildcards))


def get_adapter_steering_cases(wildcards):
    return adapter_steering_cases(mp(wildcards))


def get_scalar_patching_judgments(wildcards):
    p = mp(wildcards)
    return [f"{p.root}/judgments/{cid}.parquet" for cid in scalar_patching_conditions_of(p, wildcards.ft)]


def get_scalar_patching_conditions(wildcards):
    return scalar_patching_conditions_of(mp(wildcards), wildcards.ft)


def get_scalar_patching_pairs(wildcards):
    p = mp(wildcards)
    return {cid: p.conditions[cid].pair for cid in scalar_patching_conditions_of(p, wildcards.ft)}


# rules/figures.smk
def steering_judgments(p):
    """The judgments of the base model and of every steering condition."""
    return [f"{p.root}/judgments/{cid}.parquet" for cid, c in p.conditions.items()
            if cid == "base" or c.group is Group.STEERING]


def get_semantic_steering_judgments(wildcards):
    """The base model's and every steering condition's judgments, plus (figures.semantic_steering.baseline:
    finetune, the paper's Fig. 3) the unsteered fine-tune of every semantic steering vector: its own condition,
    judged with the semantic splits (emlab.plan.study.condition_metrics)."""
    p = mp(wildcards)
    paths = steering_judgments(p)
    if config["figures"]["semantic_steering"]["baseline"] == "finetune":
        fts = sorted({ft for ft, _ in p.semantic_vectors if ft in p.cfg["steering"]["vectors"]})
        paths += [f"{p.root}/judgments/{ft}.parquet" for ft in fts if ft in p.conditions]
    return paths


def get_single_adapter_tables(wildcards):
    """For unpack(): the b_cosine and convergence tables of every single-adapter fine-tune of the model."""
    p = mp(wildcards)
    return {"b_cosine": [f"{p.root}/single_adapter/{ft}/b_cosine.csv" for ft in p.single_adapters],
            "convergence": [f"{p.root}/single_adapter/{ft}/convergence.csv" for ft in p.single_adapters]}


def get_single_adapter_finetunes(wildcards):
    return list(mp(wildcards).single_adapters)


# rules/phase.smk
def get_checkpoint_step(wildcards):
    return int(wildcards.step)


def get_phase_em_steps(wildcards):
    return canonical(phase_em_steps(mp(wildcards).conditions, wildcards.finetune))


# rules/traits.smk
def get_trait_folder(wildcards, input):
    """The folder of the trait files (from the rule's input, so it names the files the job read)."""
    return os.path.dirname(input.traits[0])


def get_drift_adapters(wildcards):
    """The exported adapter of each checkpoint step of the {run} wildcard."""
    p = mp(wildcards)
    return [checkpoint_adapter_dir(p, wildcards.run, s) for s in p.monitor_runs[wildcards.run].checkpoint_steps]


def get_drift_reference(wildcards):
    """A start-from run's step 0 is the adapter it starts from (emlab.plan.monitor.start_adapter)."""
    p = mp(wildcards)
    run = p.monitor_runs[wildcards.run]
    return [monitor_start_adapter(run, p.root)] if run.start else []


def get_drift_steps(wildcards):
    return list(mp(wildcards).monitor_runs[wildcards.run].checkpoint_steps)


def get_sae_layer(wildcards):
    """Param: the SAE's block (monitor.sae), where trait_drift also keeps Δh̄; None without an SAE."""
    sae = mp(wildcards).sae
    return None if sae is None else sae.layer


# rules/monitor.smk: the SAE baseline's files (monitor.sae.path), read by name; none without an SAE
def sae_inputs():
    if SAE_BASELINE is None:
        return {}
    return {"sae_cfg": os.path.join(SAE_BASELINE.path, SAE_CFG_FILENAME),
            "sae_weights": os.path.join(SAE_BASELINE.path, SAE_WEIGHTS_FILENAME)}


def label_bundle_inputs(p, run):
    """The input function of the monitor_labels__<run> rules, what rules generate and judge would read for
    each of the run's label conditions."""

    def get_label_bundle_inputs(wildcards):
        return {"questions": repo_path(config["monitor"]["questions"]), "base_model": base_model_input(p),
                "adapters": [checkpoint_adapter_dir(p, run, step) for step in p.label_bundles[run].values()],
                "rubrics": rubric_files(p, next(iter(p.label_bundles[run]))), "judge_model": judge_model_input()}

    return get_label_bundle_inputs


def label_bundle_params(p, run):
    """Each label condition's step and spec, and the generation and judge settings they share: every param
    rules generate and judge would compare for a re-run."""
    generation = [canonical(generation_settings(p.cfg, p.conditions[c])) for c in p.label_bundles[run]]
    judge = [judge_params(p, c) for c in p.label_bundles[run]]
    if any(g != generation[0] for g in generation) or any(j != judge[0] for j in judge):
        raise WorkflowError(f"monitor run {run}: its label conditions differ in generation or judge settings")
    return {"run": run, "generation": generation[0], "judge": judge[0],
            "conditions": canonical({c: {"step": step, "spec": p.conditions[c].to_params()}
                                     for c, step in p.label_bundles[run].items()})}


def get_drift_label_judgments(wildcards):
    """Each step's label condition, in step order (emlab.plan.monitor.run_conditions)."""
    p = mp(wildcards)
    return [f"{p.root}/judgments/{cid}.parquet" for _, cid in
            sorted(monitor_run_conditions(p.monitor_runs[wildcards.run], p.monitor_runs).items())]


def get_drift_label_conditions(wildcards):
    p = mp(wildcards)
    return canonical({str(k): v for k, v in monitor_run_conditions(p.monitor_runs[wildcards.run], p.monitor_runs).items()})


def drift_path(run, suffix=".csv"):
    """A monitor run's drift file, under its model's root."""
    return f"{RUN_MODEL[run].root}/monitor/drift/{run}{suffix}"


def monitor_run_params(names):
    """run -> {perturbation, role, model} of the named monitor runs, as the monitor scripts read them."""
    return canonical({r: {"perturbation": MONITOR_RUNS[r].dataset, "role": MONITOR_RUNS[r].role,
                          "model": RUN_MODEL[r].key} for r in names})


def get_cross_model_inputs(wildcards):
    """For unpack(): every model's em_by_condition.csv (`em`) and each checkpointed organism's phase summary
    and EM-by-step table (`phase_summaries`, `em_by_step`), each under its model's root."""
    return {"em": [f"{p.root}/metrics/em_by_condition.csv" for p in MODELS.values()],
            "phase_summaries": [f"{p.root}/phase/{ft}/rotation_summary.json" for p in MODELS.values()
                                for ft in p.phase_finetunes],
            "em_by_step": [f"{p.root}/phase/{ft}/em_by_step.csv" for p in MODELS.values() for ft in p.phase_finetunes]}


def recipe_kind(ft):
    """A recipe's kind for the cross-model table: its preset, or full / lora_r<rank>."""
    if ft.get("preset"):
        return ft["preset"]
    return "full" if ft["lora"] is None else f"lora_r{ft['lora']['rank']}"


def cross_model_recipes():
    """recipe (a fine-tune of the config) -> {models, kind, dataset}; the monitor's generated runs are not recipes."""
    return canonical({name: {"models": [k for k, p in MODELS.items() if name in p.cfg["finetunes"]],
                             "kind": recipe_kind(ft), "dataset": ft["dataset"]}
                      for name, ft in config["finetunes"].items()})


def model_params():
    """key -> {source, family, size_b, root} of every model (the cross-model tables and the pooled monitor)."""
    return canonical({key: BASE_MODELS[key].to_params() for key in MODELS})


# monitor_analyses (rules/monitor.smk) reads the calibration and held-out runs: they share step 0, the base model
def analysis_runs():
    return runs_by_role(MONITOR_RUNS, *ANALYSIS_ROLES)


def analysis_label_conditions():
    """run -> step -> its label condition, for every analysed run (step 0: its model's mon__base)."""
    return {r: {str(s): c for s, c in monitor_run_conditions(MONITOR_RUNS[r], RUN_MODEL[r].monitor_runs).items()}
            for r in analysis_runs()}


def trait_judge_inputs():
    """The label judgments the trait-against-behaviour analysis reads: every analysed checkpoint's, each once,
    when monitor.analyses.trait_judges is on; none otherwise."""
    if not trait_judge_metrics(config, TRAIT_SET.alignment.names):
        return []
    paths = {}
    for r, steps in analysis_label_conditions().items():
        for c in steps.values():
            paths.setdefault(f"{RUN_MODEL[r].root}/judgments/{c}.parquet", None)
    return list(paths)


def model_targets(p):
    """Every final output of one model's study, under its root."""
    R = p.root
    targets = [f"{R}/metrics/em_by_condition.csv", f"{R}/metrics/em_by_question.csv", f"{R}/figures/em_by_condition.png"]
    if p.direction_finetunes:
        targets.append(f"{R}/directions/cosine_by_layer.csv")
        targets.append(f"{R}/figures/direction_cosine.png")
    if any(c.group is Group.STEERING for c in p.conditions.values()):
        targets.append(f"{R}/figures/steering_sweep.png")
    if any(c.group in (Group.ABLATION, Group.TRANSFER) for c in p.conditions.values()):
        targets.append(f"{R}/figures/ablation.png")
    for ft in p.phase_finetunes:
        targets.append(f"{R}/phase/{ft}/rotation.csv")
        targets.append(f"{R}/figures/phase/{ft}.png")
    if p.semantic_vectors:
        targets.append(f"{R}/directions/semantic_cosine.csv")
        targets.append(f"{R}/figures/semantic_vectors.png")
    if any(c.group is Group.STEERING for c in p.conditions.values()):
        targets.append(f"{R}/figures/steering_metrics.png")
    if p.single_adapters:
        targets.append(f"{R}/figures/single_adapter.png")
        targets += [f"{R}/single_adapter/{ft}/comparison.csv" for ft in p.single_adapters]
    for ft in p.lora_interp:  # rules/lora_interp.smk
        targets += [f"{R}/lora_interp/{ft}/probes.csv", f"{R}/lora_interp/{ft}/roles.json",
                    f"{R}/figures/lora_interp/{ft}/probe_table.png",
                    f"{R}/figures/lora_interp/{ft}/coefficients.png", f"{R}/lora_interp/{ft}/token_view.html"]
    if any(c.group is Group.ADAPTER_STEERING for c in p.conditions.values()):
        targets.append(f"{R}/figures/adapter_steering.png")
    for ft in scalar_patching_finetunes(p):
        targets.append(f"{R}/figures/lora_interp/{ft}/patching.png")
    if p.traits:  # rules/traits.smk
        targets += [f"{R}/traits/directions.json", f"{R}/traits/cosine.csv"]
    return targets


def final_targets():
    targets = [t for p in MODELS.values() for t in model_targets(p)]
    if MONITOR_RUNS:  # rules/monitor.smk (figure_monitor writes every monitor figure)
        targets += [f"{RESULTS}/monitor/evaluation.csv", f"{RESULTS}/monitor/monitor.skops",
                    f"{RESULTS}/figures/monitor/pc1_drift.png"]
    if LIVE_RUN:
        targets.append(f"{RESULTS}/figures/monitor/live.png")
    targets += cross_model_targets()  # rules/cross_model.smk (base_models only)
    return targets


def cross_model_targets():
    """The tables and figure across base models (rules/cross_model.smk); none for one model."""
    if not MULTI:
        return []
    return [f"{RESULTS}/cross_model/em_by_model.csv", f"{RESULTS}/cross_model/phase_steps.csv",
            f"{RESULTS}/figures/cross_model/em_by_size.png"]


def validate_small_inputs():
    """Load every small input the plan reads (questions, the rubric of every judged metric, the prompt of
    every synthesized dataset) with the library's own loaders, so a bad one fails the dry run with one
    clear error instead of a job hours later. Datasets are checked by prepare_dataset, the first job."""
    from emlab.em.judging.rubrics import load_rubric
    from emlab.em.questions import load_questions

    load_questions(repo_path(config["questions"]))
    if any(scalar_patching_finetunes(p) for p in MODELS.values()):
        load_questions(repo_path(config["lora_interp"]["patching"]["medical_questions"]))
    metrics = dict.fromkeys(m for p in MODELS.values() for cid in p.conditions for m in judge_metrics(p, cid))
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
