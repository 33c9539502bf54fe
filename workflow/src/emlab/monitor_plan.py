"""The plan of the trait-monitor calibration grid (config `monitor:`, docs/trait-monitoring.md).

Runs are perturbation datasets x seeds, each a generated fine-tune named
`mon__{dataset}__s{seed}` (a longer stress run adds `__long`). The
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

from .errors import EMLabError

PREFIX = "mon"
BASE_CONDITION = "mon__base"
GROUP = "monitor"


@dataclass(frozen=True)
class MonitorRun:
    """One calibration/held-out/stress run of the grid."""

    name: str
    dataset: str
    seed: int
    role: str  # calibration | held_out | stress_long
    finetune: dict  # the fine-tune entry registered under finetunes.<name>
    checkpoint_steps: tuple[int, ...]


def enabled(cfg: dict) -> bool:
    mon = cfg.get("monitor") or {}
    return bool(mon.get("calibration")) or bool(mon.get("held_out"))


def run_name(dataset: str, seed: int, suffix: str = "") -> str:
    return f"{PREFIX}__{dataset}__s{int(seed)}" + (f"__{suffix}" if suffix else "")


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
    from .config import FINETUNE_PRESETS

    if dataset not in cfg["datasets"]:
        raise EMLabError(f"{where}: '{dataset}' is not a key of datasets ({', '.join(cfg['datasets'])})")
    spec = FINETUNE_PRESETS[preset]
    # The calibration recipe is the preset's, then monitor.training: training_defaults fill only the rest.
    training = {**spec["training"], **overrides}
    return {"dataset": dataset, "preset": preset, "lora": copy.deepcopy(spec["lora"]), "training": training}


def monitor_runs(cfg: dict) -> dict[str, MonitorRun]:
    """Every run of the grid, by name, in config order (calibration, held-out, stress)."""
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

    def add(dataset, seed, role, preset, overrides, suffix=""):
        name = run_name(dataset, seed, suffix)
        where = f"monitor.{'stress.longer' if role == 'stress_long' else role} ({name})"
        entry = _finetune_entry(cfg, dataset, preset, overrides, where)
        training = {**cfg["training_defaults"], **entry["training"]}
        _, steps = planned_steps(training, where)
        out[name] = MonitorRun(name, dataset, int(seed), role, entry, steps)

    for role in ("calibration", "held_out"):
        for dataset in mon[role]:
            for seed in mon["seeds"]:
                add(dataset, seed, role, mon["preset"], mon["training"])
    stress = mon["stress"]
    for dataset in stress["longer"]:
        from .config import FINETUNE_PRESETS

        base = {**cfg["training_defaults"], **FINETUNE_PRESETS[mon["preset"]]["training"], **mon["training"]}
        longer = dict(
            mon["training"], max_train_examples=int(base["max_train_examples"]) * int(stress["longer_factor"])
        )
        add(dataset, mon["seeds"][0], "stress_long", mon["preset"], longer, "long")
    return out


def checkpoint_condition_id(run: str, step: int) -> str:
    return f"{run}__step{int(step)}"


def label_conditions(cfg: dict) -> list:
    """The generated-and-judged conditions that label the monitor's checkpoints (step 0: mon__base)."""
    from .interventions import MonitorLabel

    runs = monitor_runs(cfg)
    if not runs:
        return []
    return [MonitorLabel("base", 0)] + [
        MonitorLabel(run.name, step) for run in runs.values() for step in run.checkpoint_steps
    ]


def label_generation(cfg: dict) -> dict:
    """The generation settings of the label conditions: `generation` overlaid with `monitor.generation`."""
    return dict(cfg["generation"], **cfg["monitor"]["generation"])


def register_runs(cfg: dict) -> dict[str, MonitorRun]:
    """Add the grid's fine-tunes to cfg['finetunes'] (after the main study is planned); returns the runs."""
    runs = monitor_runs(cfg)
    for name, run in runs.items():
        if name in cfg["finetunes"]:
            raise EMLabError(f"finetunes.{name}: the name is reserved for a generated monitor run")
        cfg["finetunes"][name] = copy.deepcopy(run.finetune)
    return runs


MONITOR_FILE = "results/monitor/monitor.skops"


def live_run(cfg: dict) -> tuple[str, dict] | None:
    """(name, fine-tune entry) of the live-monitor demo run (`monitor.live`), or None.

    The calibration recipe for `steps_factor` times the examples, with `training.monitor` pointing at the
    monitor the grid fits; it is not part of the grid (no labels, no drift table), so the DAG stays acyclic:
    grid -> monitor -> live run.
    """
    live = (cfg.get("monitor") or {}).get("live")
    if not live or not enabled(cfg):
        return None
    mon = cfg["monitor"]
    from .config import FINETUNE_PRESETS

    base = {**cfg["training_defaults"], **FINETUNE_PRESETS[mon["preset"]]["training"], **mon["training"]}
    if not base.get("max_train_examples"):
        raise EMLabError("monitor.live: the calibration recipe needs training.max_train_examples")
    overrides = dict(
        mon["training"],
        max_train_examples=int(base["max_train_examples"]) * int(live["steps_factor"]),
        monitor={"model": MONITOR_FILE, "every": int(live["every"]), "action": live["action"]},
    )
    name = run_name(live["dataset"], live["seed"], "live")
    return name, _finetune_entry(cfg, live["dataset"], mon["preset"], overrides, f"monitor.live ({name})")


def register_live_run(cfg: dict) -> str | None:
    """Add the live-monitor run to cfg['finetunes'] (after the grid); returns its name."""
    run = live_run(cfg)
    if run is None:
        return None
    name, entry = run
    if name in cfg["finetunes"]:
        raise EMLabError(f"finetunes.{name}: the name is reserved for the generated live-monitor run")
    cfg["finetunes"][name] = entry
    return name


def run_conditions(run: MonitorRun) -> dict[int, str]:
    """step -> label condition of one run, step 0 included."""
    return {0: BASE_CONDITION, **{s: checkpoint_condition_id(run.name, s) for s in run.checkpoint_steps}}


def runs_by_role(runs: dict[str, MonitorRun], *roles: str) -> list[str]:
    return [name for name, run in runs.items() if run.role in roles]
