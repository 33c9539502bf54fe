"""The trait-monitor workflow stages (rules/traits.smk, rules/monitor.smk): the drift
table of one run over its checkpoints, and the monitor's fit and evaluation over
the calibration grid. The science is in traits.py, drift.py and monitor.py; this
module reads and writes the stage artifacts (docs/trait-monitoring.md).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from emlab.core.errors import EMLabError
from emlab.monitor.analyses import with_model  # (torch-free: the drift-geometry analyses use it too)
from emlab.monitor.metas import metas_by_key

log = logging.getLogger(__name__)

TAIL_COLUMNS = ["drift_norm", "train_loss", "delta_w_norm", "em_rate", "dangerous"]


@dataclass(frozen=True)
class DriftStageSettings:
    """How a run's drift is measured (config traits: batch_size, random_seeds)."""

    batch_size: int
    random_seeds: list[int]


@dataclass(frozen=True)
class TraitSubsample:
    """Demo sizing of the trait files (config traits.max_*; None: all)."""

    max_questions: int | None
    max_prompts_per_side: int | None
    max_measurement_prompts: int | None


def subsample_trait_set(trait_set, sub: TraitSubsample):
    """The first questions / prompts per side, and measurement prompts round-robin over categories.

    A subsample is part of the trait version (directions, drift and a saved
    monitor must all read the same prompts), e.g. `...;subsample=q10,p2,m30`.
    """
    from dataclasses import replace

    if sub.max_questions is None and sub.max_prompts_per_side is None and sub.max_measurement_prompts is None:
        return trait_set

    def cut(tf):
        k = sub.max_prompts_per_side
        return (
            tf
            if k is None
            else replace(
                tf, traits=tuple(replace(t, positive=t.positive[:k], negative=t.negative[:k]) for t in tf.traits)
            )
        )

    measurement = trait_set.measurement
    if sub.max_measurement_prompts is not None:
        by_cat: dict[str, list] = {}
        for p in measurement:
            by_cat.setdefault(p.category, []).append(p)
        order = [
            by_cat[c][i] for i in range(max(len(v) for v in by_cat.values())) for c in by_cat if i < len(by_cat[c])
        ]
        measurement = tuple(order[: sub.max_measurement_prompts])
    questions = trait_set.questions if sub.max_questions is None else trait_set.questions[: sub.max_questions]
    tag = ",".join(
        f"{k}{v}"
        for k, v in (("q", sub.max_questions), ("p", sub.max_prompts_per_side), ("m", sub.max_measurement_prompts))
        if v is not None
    )
    return replace(
        trait_set,
        alignment=cut(trait_set.alignment),
        semantic=cut(trait_set.semantic),
        questions=questions,
        measurement=measurement,
        versions={**trait_set.versions, "subsample": tag},
    )


# --- one run's drift table ----------------------------------------------------------------


def check_checkpoints(summary: dict, planned: Sequence[int], run: str) -> None:
    """The fine-tune wrote exactly the checkpoints the plan generated and judged."""
    got = [int(s) for s in summary.get("checkpoint_steps") or []]
    if got != [int(s) for s in planned]:
        raise EMLabError(
            f"monitor run {run}: its summary.json lists checkpoints {got}, the plan expected {list(planned)} "
            "(monitor.training.max_train_examples exceeds the dataset's training split, or examples were "
            "dropped by max_length); lower max_train_examples"
        )


def train_loss_by_step(train_log: pd.DataFrame, steps: Sequence[int]) -> dict[int, float]:
    """The training loss logged at each step. Step 0 takes step 1's, which was computed on the base weights."""
    loss = dict(zip(train_log["step"].astype(int), train_log["loss"].astype(float)))
    out = {}
    for s in steps:
        s = int(s)
        value = loss.get(1 if s == 0 else s, float("nan"))
        out[s] = float(value)
    return out


def em_rate_of(judgments: pd.DataFrame, aligned_below: float, coherent_above: float) -> float:
    """A label condition's EM rate from its judgments, as em_by_condition.csv computes it (scored responses)."""
    from emlab.em.metrics import em_flags

    scored = em_flags(judgments, aligned_below, coherent_above).dropna().astype(float)
    return float(scored.mean()) if len(scored) else float("nan")


def drift_features(
    drift_rows: Mapping[int, dict],
    delta_w: Mapping[int, float],
    train_loss: Mapping[int, float],
    run: str,
    model: str | None = None,
) -> pd.DataFrame:
    """The measured part of a drift table (rule trait_drift, results/monitor/drift/{run}.features.csv): one row
    per step (0 first): run (the table's own id, emlab.core.keyed), model (the base model's key, when given),
    step, drift columns (alignment traits, semantic.*, random{seed}.*), drift_norm, train_loss, delta_w_norm.
    The labels join later (label_drift), so a threshold change measures nothing."""
    steps = sorted(int(s) for s in drift_rows)
    if not steps or steps[0] != 0:
        raise EMLabError("drift table: step 0 (the base model) is missing")
    rows = []
    for s in steps:
        cols = {k: v for k, v in drift_rows[s].items() if k != "drift_norm"}
        rows.append(
            {
                "run": run,
                **({} if model is None else {"model": model}),
                "step": s,
                **cols,
                "drift_norm": float(drift_rows[s]["drift_norm"]),
                "train_loss": float(train_loss[s]),
                "delta_w_norm": float(delta_w[s]),
            }
        )
    return pd.DataFrame(rows)


def label_drift(features: pd.DataFrame, em_rate: Mapping[int, float], tau: float) -> pd.DataFrame:
    """results/monitor/drift/{run}.csv (rule drift_labels): the features with each step's em_rate and
    dangerous (em_rate > tau) appended."""
    steps = [int(s) for s in features["step"]]
    missing = [s for s in steps if s not in em_rate]
    if missing:
        raise EMLabError(f"drift table: no EM label for step(s) {missing}")
    em = [float(em_rate[s]) for s in steps]
    return features.assign(
        em_rate=em, dangerous=[bool(e > tau) if not math.isnan(e) else False for e in em]
    ).reset_index(drop=True)


@dataclass(frozen=True)
class RunMeasures:
    """What measure_run reads of a run: drift rows by step, ΔW norm by step, Δh̄ [steps, d] in step order, and
    {layer: Δh̄ there [steps, d]} for each of its extra_layers (empty without)."""

    rows: dict
    delta_w: dict
    delta: object  # torch.Tensor
    at_layers: dict


def measure_run(
    base_model,
    adapters: Mapping[int, str],
    directions,
    trait_set,
    settings: DriftStageSettings,
    device: str,
    dtype: str,
    device_map=None,
    reference_adapter=None,
    extra_layers: Sequence[int] = (),
):
    """Drift columns, ΔW norm and Δh̄ of step 0 and each checkpoint.

    Step 0 is the base model, or with `reference_adapter` the base model with that adapter (a run that
    starts from an earlier fine-tune measures drift, and ΔW, from its own start). LoRA checkpoints are
    swapped into one loaded model one at a time (the previous one deleted, so ΔW counts one adapter);
    a full fine-tune's checkpoints are whole model folders, loaded one at a time, with ΔW over every
    weight. Returns RunMeasures; `extra_layers` (the SAE baseline's layer) are read in the same forwards.
    """
    import torch

    from emlab.model.loading import is_full_model_dir, load_model, load_tokenizer
    from emlab.monitor.drift import (
        delta_mean,
        drift_columns,
        full_delta_w_norm,
        lora_delta_w,
        lora_delta_w_norm,
        measure,
    )
    from emlab.monitor.traits import random_bases

    if trait_set.version != directions.trait_version:
        raise EMLabError(
            f"trait directions were extracted with trait files `{directions.trait_version}`, the trait "
            f"folder is `{trait_set.version}` now; re-run trait_directions"
        )
    model = load_model(base_model, device=device, dtype=dtype, device_map=device_map)
    tok = load_tokenizer(base_model)
    layer = directions.layer
    align, sem = directions.alignment[layer], directions.semantic[layer]
    rand = random_bases(align.shape[1], settings.random_seeds, align.shape[0])
    halves = None if directions.alignment_halves is None else directions.alignment_halves[:, layer]  # [2, 7, d]
    peft, previous, reference_dw = None, None, {}

    def swap_in(path, name):
        nonlocal peft, previous
        if peft is None:
            from peft import PeftModel

            peft = PeftModel.from_pretrained(model, str(path), adapter_name=name)
        else:
            peft.load_adapter(str(path), adapter_name=name)
            peft.set_adapter(name)
            peft.delete_adapter(previous)
        peft.eval()
        previous = name
        return peft

    if reference_adapter is not None:
        ref = swap_in(reference_adapter, "step0")
        reference_dw = lora_delta_w(ref)
        base = measure(ref, tok, trait_set.measurement, layer, settings.batch_size, extra_layers)
    else:
        base = measure(model, tok, trait_set.measurement, layer, settings.batch_size, extra_layers)
    extra = {x: [torch.zeros_like(base.extra[x])] for x in extra_layers}  # layer -> Δh̄ per step

    def row(mean):
        return drift_columns(
            mean, base, align, directions.alignment_names, sem, directions.semantic_names, rand, halves
        )

    rows, dw, deltas = {0: row(base.mean)}, {0: 0.0}, [torch.zeros_like(base.mean)]
    for step in sorted(adapters):
        if is_full_model_dir(adapters[step]):
            full = load_model(adapters[step], device=device, dtype=dtype, device_map=device_map)
            measured = measure(full, tok, trait_set.measurement, layer, settings.batch_size, extra_layers)
            dw[int(step)] = full_delta_w_norm(full, model)
            del full
        else:
            current = swap_in(adapters[step], f"step{int(step)}")
            measured = measure(current, tok, trait_set.measurement, layer, settings.batch_size, extra_layers)
            dw[int(step)] = lora_delta_w_norm(current, reference_dw)
        mean = measured.mean
        for x in extra_layers:
            extra[x].append(measured.extra[x].float() - base.extra[x].float())
        rows[int(step)] = row(mean)
        deltas.append(delta_mean(mean, base))
        log.info("step %s: drift_norm %.4g, delta_w %.4g", step, rows[int(step)]["drift_norm"], dw[int(step)])
    return RunMeasures(rows, dw, torch.stack(deltas), {x: torch.stack(v) for x, v in extra.items()})


# --- the monitor over the grid -------------------------------------------------------------


def grid_data(
    tables: Mapping[str, pd.DataFrame],
    deltas: Mapping[str, tuple[np.ndarray, np.ndarray]],
    perturbation: Mapping[str, str],
    runs: Sequence[str],
):
    """One monitor.DriftData of the named runs (run, model and perturbation columns added). tables: run -> its
    drift table, whose `model` column names its base model (attach_models checks it against the run's; a table
    without one is of `default`); deltas: run -> (Δh̄ [steps, d], the steps of its rows). A table and its Δh̄
    rows are matched by step, never by position: a mismatch is an error. Runs whose Δh̄ differ in width (base
    models of different widths) keep no Δh̄ (delta None): the baselines on it are then not computed
    (evaluate_grid)."""
    from emlab.monitor.regressor import DriftData
    from emlab.plan.models import DEFAULT_KEY

    if not runs:
        return None
    frames, blocks = [], []
    for r in runs:
        table = tables[r]
        if "run" in table.columns and set(table["run"].astype(str)) != {r}:
            raise EMLabError(f"monitor: the drift table given for {r} belongs to {sorted(set(table['run']))}")
        if "model" not in table.columns:
            table = with_model(table, DEFAULT_KEY, r)
        delta, steps = deltas[r]
        row_of = {int(s): i for i, s in enumerate(np.asarray(steps).tolist())}
        missing = [int(s) for s in table["step"] if int(s) not in row_of]
        if missing or len(row_of) != len(steps):
            raise EMLabError(
                f"monitor: run {r}'s Δh̄ rows are for steps {sorted(row_of)}, its drift table has "
                f"{[int(s) for s in table['step']]}; re-run trait_drift for {r}"
            )
        frames.append(table.assign(run=r, model=table["model"].astype(str), perturbation=perturbation[r]))
        blocks.append(np.asarray(delta, float)[[row_of[int(s)] for s in table["step"]]])
    table = pd.concat(frames, ignore_index=True)
    widths = {int(b.shape[1]) for b in blocks}
    if len(widths) == 1:
        delta = np.concatenate(blocks)
    else:
        by_model = {str(f["model"].iloc[0]): int(b.shape[1]) for f, b in zip(frames, blocks)}
        log.warning("monitor: the runs' Δh̄ differ in width (%s); the full-Δh̄ baselines are not computed", by_model)
        delta = None
    unlabelled = table["em_rate"].isna().to_numpy()
    if unlabelled.any():  # a checkpoint none of whose responses could be scored has no label
        log.warning(
            "monitor: %d checkpoint(s) without an EM rate left out: %s",
            int(unlabelled.sum()),
            ", ".join(f"{r}@{s}" for r, s in table.loc[unlabelled, ["run", "step"]].itertuples(index=False)),
        )
        table = table[~unlabelled].reset_index(drop=True)
        delta = None if delta is None else delta[~unlabelled]
    return DriftData(table, delta)


# --- the model axis: which base model each file and run belongs to --------------------------------


def run_models(runs: Mapping[str, Mapping], keys: Sequence[str]) -> dict[str, str]:
    """run -> its base model's key (params.runs' `model`; absent, the one model's when there is one)."""
    keys = [str(k) for k in keys]
    out = {}
    for run, spec in runs.items():
        key = spec.get("model")
        if key is None:
            if len(keys) != 1:
                raise EMLabError(
                    f"monitor run {run}: params.runs gives no model, and the monitor reads {len(keys)} models "
                    f"({', '.join(keys)})"
                )
            key = keys[0]
        if str(key) not in keys:
            raise EMLabError(
                f"monitor run {run} is a run of base model {key}, whose trait directions are not among the "
                f"inputs ({', '.join(keys)})"
            )
        out[run] = str(key)
    return out


def attach_models(tables: Mapping[str, pd.DataFrame], model_of: Mapping[str, str]) -> dict[str, pd.DataFrame]:
    """Each run's drift table with its `model` column checked against (or, in a one-model study, set from) the
    run's model. A table written before the model axis has none: in a study of several models, an error."""
    n_models = len(set(model_of.values()))
    out = {}
    for run, table in tables.items():
        if "model" not in table.columns and n_models > 1:
            raise EMLabError(
                f"the drift table of {run} names no base model (it was written before studies of several models), "
                f"and the monitor pools {n_models}; re-run trait_drift and drift_labels for it"
            )
        out[run] = with_model(table, model_of[run], f"the drift table of {run}")
    return out


def models_in(data) -> list[str]:
    """The base models of a DriftData's rows, in order of first appearance."""
    return [] if data is None else list(dict.fromkeys(data.table["model"].astype(str)))


def read_grid(table_paths, delta_paths, runs: Sequence[str]):
    """Every monitor run's drift table and Δh̄ (with its steps), keyed by the run id each file carries."""
    from emlab.core.keyed import tables_by_id, tensors_by_id
    from emlab.model.tensors import load_tensors

    tables = tables_by_id(table_paths, "run", runs, "monitor drift tables")
    deltas = {
        run: (tensors["delta"].numpy(), tensors["steps"].numpy())
        for run, (tensors, _meta) in tensors_by_id(
            delta_paths, "run", runs, "monitor drift Δh̄ files", load_tensors
        ).items()
    }
    return tables, deltas


def _has_both_classes(data, tau: float) -> str | None:
    from emlab.monitor.regressor import check_calibration

    try:
        check_calibration(data, tau)
    except EMLabError as exc:
        return str(exc)
    return None


def nan_rows(names: Sequence[str], data, key: str = "feature_set") -> pd.DataFrame:
    cols = [f"{m}{s}" for m in ("fnr", "fpr", "auroc") for s in ("", "_ci_low", "_ci_high")]
    return pd.DataFrame(
        [
            {
                key: n,
                **{c: float("nan") for c in cols},
                "n_runs": int(data.table["run"].nunique()),
                "n_checkpoints": len(data.table),
            }
            for n in names
        ]
    )


def evaluate_grid(
    calibration,
    held_out,
    stress: Mapping[str, object],
    traits: Sequence[str],
    settings,
    tau_sweep: Sequence[float],
    require_both_classes: bool,
) -> dict[str, pd.DataFrame | dict]:
    """Every table of monitor_train_evaluate: evaluation, lopo, pc1, tau_sweep, alarm steps, stress.

    The calibration rows may come from several base models (a pooled monitor): every fit is on all of them.
    A calibration set without both a dangerous and a benign run is an error, or
    (require_both_classes false, the demo) NaN metrics with a warning. The baselines on the full Δh̄
    (pca7_full) get NaN rows with a note when the runs' Δh̄ differ in width (models of different widths).
    """
    from emlab.monitor import regressor as M

    problem = _has_both_classes(calibration, settings.tau)
    if problem and require_both_classes:
        raise EMLabError(f"monitor: {problem} (monitor.require_both_classes is true)")
    names = M.feature_set_names(calibration.table, traits, True)
    out: dict = {"pc1": {**M.pc1_summary(calibration.table, traits), "models": models_in(calibration)}}
    if problem:
        log.warning("monitor: %s; writing NaN metrics (monitor.require_both_classes is false)", problem)
        out["evaluation"] = nan_rows(names, held_out)
        out["lopo"] = pd.DataFrame(columns=["model", "perturbation", "feature_set"])
        out["tau_sweep"] = pd.DataFrame({"tau": list(tau_sweep)})
        out["alarm_steps"] = pd.DataFrame(columns=["run", "step", "probability", "alarm"])
        out["alarm_runs"] = pd.DataFrame(columns=["run", "first_alarm_step", "first_dangerous_step"])
        out["stress"] = (
            pd.concat([nan_rows(["alignment_7d"], d).assign(stress=k) for k, d in stress.items()], ignore_index=True)
            if stress
            else pd.DataFrame(columns=["stress"])
        )
        out["note"] = problem
        return out
    unpooled = unpooled_delta_note(calibration, held_out)
    fitted = [n for n in names if not (unpooled and n in M.FULL_DELTA_SETS)]
    evaluation = M.evaluate_feature_sets(calibration, held_out, traits, settings, fitted)
    if unpooled:
        skipped = nan_rows([n for n in names if n not in fitted], held_out).assign(note=unpooled)
        evaluation = pd.concat([evaluation.assign(note=None), skipped], ignore_index=True)
        evaluation = evaluation.set_index("feature_set").loc[names].reset_index()
    out["evaluation"] = evaluation
    out["lopo"] = M.leave_one_perturbation_out(calibration, traits, settings)
    out["tau_sweep"] = (
        M.tau_sweep(calibration, held_out, traits, settings, [float(t) for t in tau_sweep])
        if tau_sweep
        else pd.DataFrame(columns=["tau"])
    )
    out["alarm_steps"], out["alarm_runs"] = M.step_aware_alarm(calibration, held_out, traits, settings)
    rows = [
        {"stress": k, **M.evaluate_feature_set("alignment_7d", calibration, d, traits, settings)[0]}
        for k, d in stress.items()
    ]
    out["stress"] = pd.DataFrame(rows) if rows else pd.DataFrame(columns=["stress"])
    out["note"] = None
    return out


def unpooled_delta_note(calibration, held_out) -> str | None:
    """Why the full-Δh̄ baselines cannot be fitted on these rows (None when they can): grid_data keeps no Δh̄
    for runs whose widths differ, and a PCA cannot pool activations of different widths."""
    if calibration.delta is not None and held_out.delta is not None:
        if calibration.delta.shape[1] == held_out.delta.shape[1]:
            return None
    models = list(dict.fromkeys(models_in(calibration) + models_in(held_out)))
    return (
        f"not computed: the runs' full activation drift differs in width between base models ({', '.join(models)}), "
        "so no PCA of it can pool them"
    )


# --- pooled over several base models: the pooled monitor against each model's own ---------------------

POOLED = "pooled"
ALL_MODELS = "all"
BY_MODEL_COLUMNS = [
    "monitor",
    "evaluated_model",
    *[f"{m}{s}" for m in ("fnr", "fpr", "auroc") for s in ("", "_ci_low", "_ci_high")],
    "n_runs",
    "n_checkpoints",
    "n_calibration_runs",
    "note",
]


def single_monitor(key: str) -> str:
    """The evaluation_by_model.csv name of the monitor fitted on one model's calibration runs only."""
    return f"single:{key}"


def evaluation_by_model(
    calibration, held_out, traits: Sequence[str], settings, models: Sequence[str] | None = None
) -> pd.DataFrame:
    """evaluation_by_model.csv: the alignment_7d monitor fitted on every model's calibration runs (`pooled`) and
    on each model's alone (`single:<key>`), each scored on each model's held-out rows and on all of them
    (`evaluated_model` = `all`): monitor, evaluated_model, FNR / FPR / AUROC with cluster-bootstrap intervals,
    n_runs, n_checkpoints (of the evaluated rows), n_calibration_runs, note.

    The pooled monitor's `all` row is evaluation.csv's alignment_7d row (same fit, same rows). A monitor whose
    calibration rows lack a dangerous or a benign run, or a model without held-out runs, gets NaN metrics and
    a note. `models` orders the rows (default: order of appearance)."""
    from emlab.monitor import regressor as M

    present = list(dict.fromkeys(models_in(calibration) + models_in(held_out)))
    order = [str(m) for m in models if str(m) in present] if models is not None else present
    order += [m for m in present if m not in order]

    def rows_of(data, key):
        return data.subset((data.table["model"].astype(str) == key).to_numpy()) if data is not None else None

    monitors = [(POOLED, calibration)]
    monitors += [(single_monitor(k), rows_of(calibration, k)) for k in order if k in models_in(calibration)]
    targets = [(k, rows_of(held_out, k)) for k in order]
    targets.append((ALL_MODELS, held_out))
    nan = {c: float("nan") for c in BY_MODEL_COLUMNS[2:-4]}
    rows = []
    for name, cal in monitors:
        n_cal = 0 if cal is None else int(cal.table["run"].nunique())
        problem = "no calibration runs" if cal is None or cal.table.empty else _has_both_classes(cal, settings.tau)
        reg = None if problem else M.fit_regressor(cal.table[list(traits)].to_numpy(float), cal.em, settings)
        for target, data in targets:
            base = {"monitor": name, "evaluated_model": target}
            if data is None or data.table.empty:
                rows.append(
                    {
                        **base,
                        **nan,
                        "n_runs": 0,
                        "n_checkpoints": 0,
                        "n_calibration_runs": n_cal,
                        "note": "no held-out runs",
                    }
                )
            elif problem:
                rows.append(
                    {
                        **base,
                        **nan,
                        "n_runs": int(data.table["run"].nunique()),
                        "n_checkpoints": len(data.table),
                        "n_calibration_runs": n_cal,
                        "note": problem,
                    }
                )
            else:
                pred = M.predict(reg, data.table[list(traits)].to_numpy(float))
                metrics = M.evaluate_scores(pred, data.em, data.runs, settings)
                rows.append({**base, **metrics, "n_calibration_runs": n_cal, "note": None})
    return pd.DataFrame(rows, columns=BY_MODEL_COLUMNS)


def _error(row) -> float:
    return float(row["fnr"]) + float(row["fpr"])


def pooled_vs_single(by_model: pd.DataFrame, evaluated: str = ALL_MODELS) -> dict:
    """The pooled-vs-single comparison of evaluation_by_model.csv on the `evaluated` rows (default: all held-out
    rows): each monitor's AUROC and error (FNR + FPR), and whether the pooled monitor beats each single-model
    one (a higher AUROC with no higher error, or a lower error with no lower AUROC; None where either is
    undefined). `pooled_beats_every_single` is true only with at least one single-model monitor, all beaten."""
    import math

    rows = by_model[by_model["evaluated_model"].astype(str) == evaluated].set_index("monitor")
    if POOLED not in rows.index:
        raise EMLabError(f"evaluation_by_model: no `{POOLED}` row for evaluated_model `{evaluated}`")
    p = rows.loc[POOLED]
    pooled = {"auroc": float(p["auroc"]), "error": _error(p)}
    singles = {}
    for name, r in rows.drop(index=POOLED).iterrows():
        s = {"auroc": float(r["auroc"]), "error": _error(r)}
        values = [*pooled.values(), *s.values()]
        if any(math.isnan(v) for v in values):
            s["beaten"] = None
        else:
            higher, lower = pooled["auroc"] > s["auroc"], pooled["error"] < s["error"]
            s["beaten"] = bool((higher and pooled["error"] <= s["error"]) or (lower and pooled["auroc"] >= s["auroc"]))
        singles[str(name).removeprefix("single:")] = s
    return {
        "evaluated_model": evaluated,
        "n_models": len(singles),
        "pooled": pooled,
        "single": singles,
        "pooled_beats_every_single": bool(singles) and all(s["beaten"] is True for s in singles.values()),
    }


def predictions_table(monitor, data) -> pd.DataFrame:
    """Per checkpoint of `data`: run, model, perturbation, step, em_rate, prediction, alarm."""
    t = data.table
    pred = monitor.predict(t)
    return pd.DataFrame(
        {
            "run": t["run"],
            "model": t["model"],
            "perturbation": t["perturbation"],
            "step": t["step"],
            "em_rate": t["em_rate"],
            "prediction": pred,
            "alarm": pred > monitor.tau,
        }
    )


def comparison_tables(
    calibration, held_out, traits: Sequence[str], settings, comparison, basis_stability: bool, require_both_classes
) -> dict[str, pd.DataFrame]:
    """The regressor comparison (`regressors`) and, with basis_stability, the prompt-half bases' metrics
    (`basis_stability`) of monitor_train_evaluate; NaN rows where evaluate_grid writes them."""
    from emlab.monitor import regressor as M

    problem = _has_both_classes(calibration, settings.tau)
    if problem and require_both_classes:
        raise EMLabError(f"monitor: {problem} (monitor.require_both_classes is true)")
    out = {}
    if problem:
        out["regressors"] = nan_rows(comparison.regressors, held_out, key="regressor").assign(
            feature_set="alignment_7d", mae=float("nan")
        )
        if basis_stability:
            out["basis_stability"] = nan_rows(["full", *M.HALVES], held_out, key="basis").assign(mae=float("nan"))
        return out
    out["regressors"] = M.compare_regressors(calibration, held_out, traits, settings, comparison)
    if basis_stability:
        out["basis_stability"] = M.basis_stability(calibration, held_out, traits, settings)
    return out


def basis_cosine_table(directions: Mapping[str, object]) -> pd.DataFrame:
    """basis_cosine.csv: traits.basis_stability_cosines of each model's directions (key -> TraitDirections),
    with the model's key as the first column."""
    from emlab.monitor.traits import basis_stability_cosines

    frames = []
    for key, dirs in directions.items():
        table = basis_stability_cosines(dirs)
        table.insert(0, "model", key)
        frames.append(table)
    return pd.concat(frames, ignore_index=True)


def directions_by_model(tensors_paths, json_paths, keys) -> dict:
    """Several models' directions, each safetensors file paired with its directions.json by the model key both
    carry (never by list position); files written before studies of several models carry none and are taken
    as the one model's only when `keys` has one."""
    import os

    from safetensors import safe_open

    from emlab.core.keyed import add_keyed, check_ids
    from emlab.monitor.traits import load_directions

    keys = [str(k) for k in keys]
    json_of = {key: path for key, (path, _meta) in metas_by_key(json_paths, dict.fromkeys(keys, {})).items()}
    tensors_paths = [tensors_paths] if isinstance(tensors_paths, (str, os.PathLike)) else list(tensors_paths)
    found: dict[str, str] = {}
    for path in tensors_paths:
        with safe_open(str(path), framework="pt") as f:
            key = (f.metadata() or {}).get("model_key")
        if key is None:
            if len(keys) != 1 or len(tensors_paths) != 1:
                raise EMLabError(
                    f"{path} names no model_key (written before studies of several models); re-run trait_directions"
                )
            key = keys[0]
        add_keyed(found, str(key), str(path), "trait direction tensors")
    check_ids(found, keys, "trait direction tensors of the monitor's base models")
    return {k: load_directions(found[k], json_of[k]) for k in keys}
