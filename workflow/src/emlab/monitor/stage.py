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
) -> pd.DataFrame:
    """The measured part of a drift table (rule trait_drift, results/monitor/drift/{run}.features.csv): one row
    per step (0 first): run (the table's own id, emlab.core.keyed), step, drift columns (alignment traits,
    semantic.*, random{seed}.*), drift_norm, train_loss, delta_w_norm. The labels join later (label_drift),
    so a threshold change measures nothing."""
    steps = sorted(int(s) for s in drift_rows)
    if not steps or steps[0] != 0:
        raise EMLabError("drift table: step 0 (the base model) is missing")
    rows = []
    for s in steps:
        cols = {k: v for k, v in drift_rows[s].items() if k != "drift_norm"}
        rows.append(
            {
                "run": run,
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
    weight. Returns (drift rows by step, ΔW norm by step, Δh̄ [steps, d] in step order); with `extra_layers`
    (the SAE baseline's layer) a fourth value, {layer: Δh̄ there [steps, d]}, read in the same forwards.
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
    if extra_layers:
        return rows, dw, torch.stack(deltas), {x: torch.stack(v) for x, v in extra.items()}
    return rows, dw, torch.stack(deltas)


# --- the monitor over the grid -------------------------------------------------------------


def grid_data(
    tables: Mapping[str, pd.DataFrame],
    deltas: Mapping[str, tuple[np.ndarray, np.ndarray]],
    perturbation: Mapping[str, str],
    runs: Sequence[str],
):
    """One monitor.DriftData of the named runs (run and perturbation columns added). tables: run -> its drift
    table; deltas: run -> (Δh̄ [steps, d], the steps of its rows). A table and its Δh̄ rows are matched by
    step, never by position: a mismatch is an error."""
    from emlab.monitor.regressor import DriftData

    if not runs:
        return None
    frames, blocks = [], []
    for r in runs:
        table = tables[r]
        if "run" in table.columns and set(table["run"].astype(str)) != {r}:
            raise EMLabError(f"monitor: the drift table given for {r} belongs to {sorted(set(table['run']))}")
        delta, steps = deltas[r]
        row_of = {int(s): i for i, s in enumerate(np.asarray(steps).tolist())}
        missing = [int(s) for s in table["step"] if int(s) not in row_of]
        if missing or len(row_of) != len(steps):
            raise EMLabError(
                f"monitor: run {r}'s Δh̄ rows are for steps {sorted(row_of)}, its drift table has "
                f"{[int(s) for s in table['step']]}; re-run trait_drift for {r}"
            )
        frames.append(table.assign(run=r, perturbation=perturbation[r]))
        blocks.append(np.asarray(delta, float)[[row_of[int(s)] for s in table["step"]]])
    table = pd.concat(frames, ignore_index=True)
    delta = np.concatenate(blocks)
    unlabelled = table["em_rate"].isna().to_numpy()
    if unlabelled.any():  # a checkpoint none of whose responses could be scored has no label
        log.warning(
            "monitor: %d checkpoint(s) without an EM rate left out: %s",
            int(unlabelled.sum()),
            ", ".join(f"{r}@{s}" for r, s in table.loc[unlabelled, ["run", "step"]].itertuples(index=False)),
        )
        table, delta = table[~unlabelled].reset_index(drop=True), delta[~unlabelled]
    return DriftData(table, delta)


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

    A calibration set without both a dangerous and a benign run is an error, or
    (require_both_classes false, the demo) NaN metrics with a warning.
    """
    from emlab.monitor import regressor as M

    problem = _has_both_classes(calibration, settings.tau)
    if problem and require_both_classes:
        raise EMLabError(f"monitor: {problem} (monitor.require_both_classes is true)")
    names = M.feature_set_names(calibration.table, traits, True)
    out: dict = {"pc1": M.pc1_summary(calibration.table, traits)}
    if problem:
        log.warning("monitor: %s; writing NaN metrics (monitor.require_both_classes is false)", problem)
        out["evaluation"] = nan_rows(names, held_out)
        out["lopo"] = pd.DataFrame(columns=["perturbation", "feature_set"])
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
    out["evaluation"] = M.evaluate_feature_sets(calibration, held_out, traits, settings, names)
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


def predictions_table(monitor, data) -> pd.DataFrame:
    """Per checkpoint of `data`: run, perturbation, step, em_rate, prediction, alarm."""
    t = data.table
    pred = monitor.predict(t)
    return pd.DataFrame(
        {
            "run": t["run"],
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
