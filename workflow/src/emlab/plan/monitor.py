"""The plan of the trait-monitor calibration grid (config `monitor:`, docs/trait-monitoring.md).

Runs are perturbation datasets x seeds, each a generated fine-tune named
`mon__{dataset}__s{seed}`. The stress runs (first seed) add a suffix: `__long`
(more examples), `__full` (a full fine-tune beside its LoRA run) and
`__from_{start}` (LoRA training continued from the final adapter of the grid's
run on perturbation `start`, i.e. from an already misaligned model; its drift
is measured from its own step 0, that start adapter, and its step-0 label is
the start run's last checkpoint). The
double underscore cannot occur in a user's fine-tune name (the schema forbids
it), so generated runs never clash with written ones. Each run trains with the
`monitor.preset` recipe overlaid with `monitor.training`, checkpointing every
`monitor.training.checkpoint_every` steps. Every checkpoint is generated and
judged as condition `{run}__step{N}` (group "monitor") with the cheaper
`monitor.generation` / `monitor.questions`; condition `mon__base` is the same
for the base model (step 0). Its EM rate (em_by_condition.csv) is the label.

The generated runs are kept out of `finetunes:` while the main study is
planned (no final-adapter condition, no activations, no phase analysis for
them) and added to it afterwards (`register_runs`), so rule `finetune`
trains them like any other fine-tune.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

from emlab.core.errors import EMLabError

PREFIX = "mon"
BASE_CONDITION = "mon__base"


@dataclass(frozen=True)
class MonitorRun:
    """One calibration/held-out/stress run of the grid."""

    name: str
    dataset: str
    seed: int
    role: str  # calibration | held_out | stress_long | stress_full | stress_start
    finetune: dict  # the fine-tune entry registered under finetunes.<name>
    checkpoint_steps: tuple[int, ...]
    start: str | None = None  # stress_start: the run whose final adapter this one continues from
    total_steps: int = 0
    model: str | None = None  # the base model's key in a study of several (names are then mon__<model>__...)

    @property
    def full(self) -> bool:
        """A full fine-tune: its checkpoints are whole model folders."""
        return self.finetune.get("lora") is None


def enabled(cfg: dict) -> bool:
    mon = cfg.get("monitor") or {}
    return bool(mon.get("calibration")) or bool(mon.get("held_out"))


def run_name(dataset: str, seed: int, suffix: str = "", model: str | None = None) -> str:
    """mon__<dataset>__s<seed>[__<suffix>]; in a study of several base models mon__<model>__<dataset>__..."""
    head = f"{PREFIX}__{model}" if model else PREFIX
    return f"{head}__{dataset}__s{int(seed)}" + (f"__{suffix}" if suffix else "")


def base_condition(model: str | None = None) -> str:
    """The label condition of step 0, the base model: mon__base (mon__<model>__base with several models)."""
    return f"{PREFIX}__{model}__base" if model else BASE_CONDITION


def planned_steps(training: dict, where: str) -> tuple[int, tuple[int, ...]]:
    """(total optimiser steps, checkpoint steps) of a run, as finetune.train_lora will count them.

    Needs max_train_examples (the datasets are larger than any demo cut); the
    drift stage checks the fine-tune's summary.json lists exactly these steps.
    """
    n = training.get("max_train_examples")
    every = int(training.get("checkpoint_every") or 0)
    if not n:
        raise EMLabError(
            f"{where}: monitor runs need training.max_train_examples (the checkpoints are planned from it)"
        )
    if every < 1:
        raise EMLabError(
            f"{where}: monitor runs need training.checkpoint_every >= 1 (each checkpoint is a monitor row)"
        )
    batch, accum = int(training["per_device_batch_size"]), int(training["gradient_accumulation_steps"])
    total = math.ceil(math.ceil(int(n) / batch) / accum) * int(training["epochs"])
    steps = tuple(s for s in range(1, total + 1) if s % every == 0)
    if not steps:
        raise EMLabError(f"{where}: checkpoint_every {every} exceeds the run's {total} optimiser steps; lower it")
    return total, steps


def _finetune_entry(cfg: dict, dataset: str, preset: str, overrides: dict, where: str) -> dict:
    from emlab.core.config import FINETUNE_PRESETS

    if dataset not in cfg["datasets"]:
        raise EMLabError(f"{where}: '{dataset}' is not a key of datasets ({', '.join(cfg['datasets'])})")
    spec = FINETUNE_PRESETS[preset]
    # The calibration recipe is the preset's, then monitor.training: training_defaults fill only the rest.
    training = {**spec["training"], **overrides}
    return {"dataset": dataset, "preset": preset, "lora": copy.deepcopy(spec["lora"]), "training": training}


def monitor_runs(cfg: dict, model: str | None = None, stress_arm: bool = False) -> dict[str, MonitorRun]:
    """Every run of the grid, by name, in config order (calibration, held-out, stress). `model`: the base
    model's key in a study of several (it joins the names); `stress_arm`: the model is outside the fit, so its
    held-out runs have role stress_model (emlab.plan.models.model_view puts every perturbation there)."""
    if not enabled(cfg):
        return {}
    mon = cfg["monitor"]
    clash = sorted(set(mon["calibration"]) & set(mon["held_out"]))
    if clash:
        raise EMLabError(
            f"monitor: perturbation(s) {clash} are both calibration and held_out; a held-out "
            "perturbation must be unseen by the monitor"
        )
    out: dict[str, MonitorRun] = {}

    def add(dataset, seed, role, preset, overrides, suffix="", start=None):
        name = run_name(dataset, seed, suffix, model)
        if stress_arm and role == "held_out":
            role = "stress_model"
        where = f"monitor.{STRESS_KEYS.get(role, role)} ({name})"
        entry = _finetune_entry(cfg, dataset, preset, overrides, where)
        entry["seed"] = int(seed)  # the replicate's own LoRA initialisation, dropout and example order
        if start is not None:
            entry["start_from"] = start
        training = {**cfg["training_defaults"], **entry["training"]}
        total, steps = planned_steps(training, where)
        out[name] = MonitorRun(name, dataset, int(seed), role, entry, steps, start, total, model)

    for role in ("calibration", "held_out"):
        for dataset in mon[role]:
            for seed in mon["seeds"]:
                add(dataset, seed, role, mon["preset"], mon["training"])
    stress, seed0 = mon["stress"], mon["seeds"][0]
    from emlab.core.config import FINETUNE_PRESETS

    for dataset in stress["longer"]:
        base = {**cfg["training_defaults"], **FINETUNE_PRESETS[mon["preset"]]["training"], **mon["training"]}
        longer = dict(
            mon["training"], max_train_examples=int(base["max_train_examples"]) * int(stress["longer_factor"])
        )
        add(dataset, seed0, "stress_long", mon["preset"], longer, "long")
    for dataset in stress["full"]:
        # the full recipe's own learning rate (LoRA rates wreck every weight), unless stress.full_learning_rate
        lr = stress["full_learning_rate"] or FINETUNE_PRESETS["full"]["training"]["learning_rate"]
        # the grid's schedule (epochs, examples, checkpoints) beside its LoRA run, with the full learning rate
        recipe = {**FINETUNE_PRESETS[mon["preset"]]["training"], **mon["training"], "learning_rate": float(lr)}
        add(dataset, seed0, "stress_full", "full", recipe, "full")
    for item in stress["start_from_misaligned"]:
        start = run_name(item["start"], seed0, model=model)
        if start not in out or out[start].role not in ("calibration", "held_out"):
            raise EMLabError(
                f"monitor.stress.start_from_misaligned: start '{item['start']}' is not a calibration or "
                f"held_out perturbation of the grid ({', '.join([*mon['calibration'], *mon['held_out']])})"
            )
        if out[start].checkpoint_steps[-1] != out[start].total_steps:
            raise EMLabError(
                f"monitor.stress.start_from_misaligned: the start run {start} ends at step "
                f"{out[start].total_steps}, which is not a checkpoint, so no label condition holds the adapter "
                "the new run starts from; make monitor.training.checkpoint_every divide its steps"
            )
        add(item["dataset"], seed0, "stress_start", mon["preset"], mon["training"], f"from_{item['start']}", start)
    return out


STRESS_KEYS = {
    "stress_long": "stress.longer",
    "stress_full": "stress.full",
    "stress_start": "stress.start_from_misaligned",
}


def checkpoint_condition_id(run: str, step: int) -> str:
    return f"{run}__step{int(step)}"


def label_conditions(cfg: dict, model: str | None = None, stress_arm: bool = False) -> list:
    """The generated-and-judged conditions that label the monitor's checkpoints (step 0: mon__base)."""
    from emlab.plan.conditions import MonitorLabel

    runs = monitor_runs(cfg, model, stress_arm)
    if not runs:
        return []
    return [MonitorLabel("base", 0, model or "")] + [
        MonitorLabel(run.name, step) for run in runs.values() for step in run.checkpoint_steps
    ]


def label_generation(cfg: dict) -> dict:
    """The generation settings of the label conditions: `generation` overlaid with `monitor.generation`."""
    return dict(cfg["generation"], **cfg["monitor"]["generation"])


def register_runs(cfg: dict, model: str | None = None, stress_arm: bool = False) -> dict[str, MonitorRun]:
    """Add the grid's fine-tunes to cfg['finetunes'] (after the main study is planned); returns the runs."""
    runs = monitor_runs(cfg, model, stress_arm)
    for name, run in runs.items():
        if name in cfg["finetunes"]:
            raise EMLabError(f"finetunes.{name}: the name is reserved for a generated monitor run")
        cfg["finetunes"][name] = copy.deepcopy(run.finetune)
    return runs


def _model_run_args(cfg: dict, key: str) -> tuple[str | None, bool]:
    """monitor_runs' (model, stress_arm) for model `key`: its runs are named for the model in a study of
    several, and a stress-arm model's are scored only."""
    from emlab.plan.models import monitor_role, run_qualifier

    return run_qualifier(cfg, key), monitor_role(cfg, key) == "stress"


def model_monitor_runs(cfg: dict, key: str) -> dict[str, MonitorRun]:
    """Model `key`'s monitor runs, as the workflow plans them from its view of cfg (without registering)."""
    from emlab.plan.models import model_view

    return monitor_runs(model_view(cfg, key), *_model_run_args(cfg, key))


def register_model_runs(view: dict, cfg: dict, key: str) -> dict[str, MonitorRun]:
    """register_runs on model `key`'s view of cfg (emlab.plan.models.model_view)."""
    return register_runs(view, *_model_run_args(cfg, key))


MONITOR_FILE = "results/monitor/monitor.skops"


def live_run(cfg: dict, model: str | None = None) -> tuple[str, dict] | None:
    """(name, fine-tune entry) of the live-monitor demo run (`monitor.live`), or None.

    The calibration recipe for `steps_factor` times the examples, with `training.monitor` pointing at the
    monitor the grid fits; it is not part of the grid (no labels, no drift table), so the DAG stays acyclic:
    grid -> monitor -> live run.
    """
    live = (cfg.get("monitor") or {}).get("live")
    if not live or not enabled(cfg):
        return None
    mon = cfg["monitor"]
    from emlab.core.config import FINETUNE_PRESETS

    base = {**cfg["training_defaults"], **FINETUNE_PRESETS[mon["preset"]]["training"], **mon["training"]}
    if not base.get("max_train_examples"):
        raise EMLabError("monitor.live: the calibration recipe needs training.max_train_examples")
    overrides = dict(
        mon["training"],
        max_train_examples=int(base["max_train_examples"]) * int(live["steps_factor"]),
        monitor={"model": MONITOR_FILE, "every": int(live["every"]), "action": live["action"]},
    )
    name = run_name(live["dataset"], live["seed"], "live", model)
    return name, _finetune_entry(cfg, live["dataset"], mon["preset"], overrides, f"monitor.live ({name})")


def register_live_run(cfg: dict, model: str | None = None) -> str | None:
    """Add the live-monitor run to cfg['finetunes'] (after the grid); returns its name."""
    run = live_run(cfg, model)
    if run is None:
        return None
    name, entry = run
    if name in cfg["finetunes"]:
        raise EMLabError(f"finetunes.{name}: the name is reserved for the generated live-monitor run")
    cfg["finetunes"][name] = entry
    return name


def run_conditions(run: MonitorRun, runs: dict[str, MonitorRun] | None = None) -> dict[int, str]:
    """step -> label condition of one run, step 0 included: the base model, or for a start-from run the
    start run's last checkpoint (the model it starts from; `runs` must then hold the start run)."""
    step0 = base_condition(run.model)
    if run.start is not None:
        start = (runs or {}).get(run.start)
        if start is None:
            raise EMLabError(f"monitor run {run.name}: its start run {run.start} is not in the grid")
        step0 = checkpoint_condition_id(start.name, start.checkpoint_steps[-1])
    return {0: step0, **{s: checkpoint_condition_id(run.name, s) for s in run.checkpoint_steps}}


def start_adapter(run: MonitorRun, root: str = "results") -> str | None:
    """The adapter folder a start-from run continues from (the start run's final adapter), else None."""
    return None if run.start is None else f"{root}/finetunes/{run.start}/adapter"


# the runs the drift-geometry analyses read (monitor.analyses): they share the base model as step 0
ANALYSIS_ROLES = ("calibration", "held_out")


def runs_by_role(runs: dict[str, MonitorRun], *roles: str) -> list[str]:
    return [name for name, run in runs.items() if run.role in roles]


# --- the trait judges of the label conditions (monitor.analyses.trait_judges) ---------------------------------

TRAIT_JUDGE_PREFIX = "trait_"


def trait_judge_metric(trait: str) -> str:
    """The judge metric scoring how strongly a response shows an alignment trait: rubric trait_<trait>.yaml."""
    return f"{TRAIT_JUDGE_PREFIX}{trait}"


def trait_judge_metrics(cfg: dict, alignment_traits) -> dict[str, str]:
    """trait -> judge metric of every alignment trait when monitor.analyses.trait_judges is on, else {}.

    The label conditions (and only they) are judged on these too, so the trait-against-behaviour analysis
    needs no generation of its own."""
    if not ((cfg.get("monitor") or {}).get("analyses") or {}).get("trait_judges"):
        return {}
    if not alignment_traits:
        raise EMLabError("monitor.analyses.trait_judges: the alignment trait names (data/traits) are needed")
    return {t: trait_judge_metric(t) for t in alignment_traits}


def check_trait_rubrics(cfg: dict, alignment_traits, rubric_path) -> None:
    """With trait judges on, every alignment trait has its rubric (rubric_path(metric) -> file path)."""
    import os

    paths = [rubric_path(m) for m in trait_judge_metrics(cfg, alignment_traits).values()]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise EMLabError(
            f"monitor.analyses.trait_judges is on but rubric file(s) {missing} are missing: write one per alignment "
            "trait (judge.rubrics_dir/trait_<trait>.yaml) or set the switch false"
        )


# --- the SAE baseline (monitor.sae) ----------------------------------------------------------------------------


def known_hidden_size(source: str) -> int | None:
    """The base model's hidden size where it is known without the network: a local folder's config.json, or
    emlab/plan/model_shapes.json; None otherwise (the SAE's width is then checked against the drift itself)."""
    import json
    from pathlib import Path

    shapes = Path(__file__).with_name("model_shapes.json")  # emlab.plan.gpu's table (gpu imports this module)

    cfg_path = Path(source) / "config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        cfg = cfg.get("text_config") or cfg
    else:
        cfg = json.loads(shapes.read_text()).get(source) or {}
    size = cfg.get("hidden_size") or cfg.get("n_embd")
    return int(size) if size else None


def sae_baseline(cfg: dict, n_layers: int, path: str | None, model_dir: str | None = None):
    """monitor.sae checked when the workflow is planned: the folder at `path` (monitor.sae.path resolved; None:
    no SAE baseline) is an SAE in SAELens' format of a block within the model's depth, as wide as the model
    (where known from `model_dir`), with at least monitor.sae.n_features features. Returns its
    emlab.plan.sae.SAEFolder, or None."""
    if path is None:
        return None
    from emlab.plan.sae import read_sae

    sae = read_sae(path, n_layers, known_hidden_size(model_dir) if model_dir else None)
    k = int(cfg["monitor"]["sae"]["n_features"])
    if k > sae.d_sae:
        raise EMLabError(
            f"monitor.sae.n_features is {k}, but the SAE at {path} has only {sae.d_sae} features (d_sae); lower it"
        )
    return sae
