"""Geometry of the monitor grid's drift (docs/trait-monitoring.md, "Drift geometry"): the analyses behind the
paper's Figs. 5, 8 and 10, from the labelled drift tables (rule monitor_analyses).

- Matched-|PC1| pairs: a dangerous and a benign checkpoint of two different runs whose |PC1| agree within a
  relative tolerance. Such pairs show that the size of the drift alone does not say whether a checkpoint is
  dangerous; their 7-D directions differ.
- Severity ordering: per perturbation, the drift size (|PC1| and the 7-D norm) at the final checkpoint (or
  averaged over checkpoints) against the EM rate, and the Spearman correlation across perturbations.
- Trait against behaviour: per alignment trait, the Spearman correlation over checkpoints between the drift
  along that trait and the mean score a judge gives the checkpoint's label responses for the same trait.

Only the grid's calibration and held-out runs take part: they share the base model as step 0, so their
drift is measured from one origin (the stress runs are evaluated on their own). Pooled over several base
models, each run's drift is from its own model's step 0, all in the one trait space: a matched pair may join
two models' checkpoints, and a severity point is one model's perturbation (`model` columns say whose).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from emlab.core.errors import EMLabError
from emlab.plan.monitor import ANALYSIS_ROLES

log = logging.getLogger(__name__)

MIN_SPEARMAN_N = 3  # below this a rank correlation orders nothing


@dataclass(frozen=True)
class AnalysisSettings:
    """config monitor.analyses."""

    pair_tolerance: float  # |PC1| match: |a - b| <= tolerance * max(a, b)
    severity_at: str  # final | mean
    trait_judges: bool


def with_model(table: pd.DataFrame, model: str, where) -> pd.DataFrame:
    """A drift table carrying its base model's key in column `model`: added after `run` when the table predates
    the model axis (the rule that passes `model` knows the run's model), an error when it names another."""
    if "model" in table.columns:
        found = sorted({str(v) for v in table["model"].dropna().unique()})
        if found != [str(model)]:
            raise EMLabError(f"{where} holds the drift of base model {found or 'none'}, not of `{model}`")
        return table
    out = table.copy()
    out.insert(list(out.columns).index("run") + 1 if "run" in out.columns else 0, "model", str(model))
    return out


def spearman(x, y) -> dict:
    """Spearman's rho (average ranks for ties) with its two-sided p-value, n and a note saying why rho is NaN.

    Pairs with a NaN in either value are left out. NaN with a note when n < 3 or one side is constant.
    """
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(len(x))
    out = {"rho": float("nan"), "p_value": float("nan"), "n": n, "note": ""}
    if n < MIN_SPEARMAN_N:
        out["note"] = f"n = {n} < {MIN_SPEARMAN_N}: no ordering to test"
    elif np.ptp(x) == 0 or np.ptp(y) == 0:
        out["note"] = "constant " + ("drift" if np.ptp(x) == 0 else "outcome") + ": rank correlation undefined"
    else:
        res = spearmanr(x, y)
        out["rho"], out["p_value"] = float(res.statistic), float(res.pvalue)
    return out


def grid_table(tables: Mapping[str, pd.DataFrame], runs: Mapping[str, Mapping]) -> pd.DataFrame:
    """The labelled drift tables of the calibration and held-out runs, with run, model, perturbation and role
    (model: params.runs' `model`, else the table's own column, else `default`; a mismatch is an error)."""
    from emlab.plan.models import DEFAULT_KEY

    frames = []
    for name, spec in runs.items():
        if spec["role"] not in ANALYSIS_ROLES:
            continue
        table = tables[name]
        model = spec.get("model") or (None if "model" in table.columns else DEFAULT_KEY)
        if model is not None:
            table = with_model(table, model, f"the drift table of {name}")
        frames.append(table.assign(run=name, perturbation=spec["perturbation"], role=spec["role"]))
    if not frames:
        raise EMLabError("monitor analyses: no calibration or held-out run")
    return pd.concat(frames, ignore_index=True)


def pc1_projection(table: pd.DataFrame, loadings: Mapping[str, float]) -> np.ndarray:
    """Signed PC1 of each row (uncentred) from pc1.json's {trait: loading}: regressor.PC1.project, [n]."""
    from emlab.monitor.regressor import PC1

    return PC1(tuple(loadings), np.asarray(list(loadings.values()), float), np.empty(0)).project(table)


def _labelled(table: pd.DataFrame, what: str) -> pd.DataFrame:
    bad = table["em_rate"].isna()
    if bad.any():
        log.warning("%s: %d checkpoint(s) without an EM rate left out", what, int(bad.sum()))
    return table[~bad]


def _model_at(table: pd.DataFrame, k: int) -> str:
    from emlab.plan.models import DEFAULT_KEY

    return str(table.at[k, "model"]) if "model" in table.columns else DEFAULT_KEY


def _with_model_column(table: pd.DataFrame) -> pd.DataFrame:
    from emlab.plan.models import DEFAULT_KEY

    return table if "model" in table.columns else table.assign(model=DEFAULT_KEY)


# --- Fig. 5: matched-|PC1| pairs ---------------------------------------------------------------------------


def matched_pc1_pairs(
    table: pd.DataFrame, loadings: Mapping[str, float], traits: Sequence[str], tolerance: float
) -> pd.DataFrame:
    """Each dangerous checkpoint (step > 0) with the benign checkpoint of another run whose |PC1| is nearest by relative gap,
    kept when the two differ by at most `tolerance` times the larger.

    One row per matched dangerous checkpoint, closest first: each member's run, base model, perturbation, step,
    EM rate, |PC1| and 7-D drift (`dangerous.<trait>`, `benign.<trait>`), the relative |PC1| gap and the cosine
    of the two drift vectors. A benign checkpoint may serve several dangerous ones.
    """
    t = _labelled(table, "matched-|PC1| pairs")
    t = t[t["step"].astype(int) > 0].reset_index(drop=True)
    pc1 = np.abs(pc1_projection(t, loadings))
    drift = t[list(traits)].to_numpy(float)  # [n, 7]
    danger = t["dangerous"].astype(bool).to_numpy()
    rows = []
    for i in np.flatnonzero(danger):
        other = (~danger) & (t["run"].to_numpy() != t.at[i, "run"])
        if not other.any():
            continue
        larger = np.maximum(pc1, pc1[i])
        gap = np.where(larger > 0, np.abs(pc1 - pc1[i]) / np.where(larger > 0, larger, 1.0), np.inf)
        gap = np.where(other, gap, np.inf)
        j = int(np.argmin(gap))  # ties: the first in table order (runs in config order, then step)
        if not gap[j] <= tolerance:
            continue
        norms = np.linalg.norm(drift[i]) * np.linalg.norm(drift[j])
        row = {"pair": 0, "relative_gap": float(gap[j])}
        for side, k in (("dangerous", i), ("benign", j)):
            row.update(
                {
                    f"{side}_run": t.at[k, "run"],
                    f"{side}_model": _model_at(t, k),
                    f"{side}_perturbation": t.at[k, "perturbation"],
                    f"{side}_step": int(t.at[k, "step"]),
                    f"{side}_em_rate": float(t.at[k, "em_rate"]),
                    f"{side}_pc1_abs": float(pc1[k]),
                }
            )
        row["direction_cosine"] = float(drift[i] @ drift[j] / norms) if norms > 0 else float("nan")
        for side, k in (("dangerous", i), ("benign", j)):
            row.update({f"{side}.{tr}": float(v) for tr, v in zip(traits, drift[k])})
        rows.append(row)
    cols = ["pair", "relative_gap"]
    sides = ("run", "model", "perturbation", "step", "em_rate", "pc1_abs")
    cols += [f"{s}_{c}" for s in ("dangerous", "benign") for c in sides]
    cols += ["direction_cosine"] + [f"{s}.{tr}" for s in ("dangerous", "benign") for tr in traits]
    out = pd.DataFrame(rows, columns=cols)
    if out.empty:
        return out
    out = out.sort_values(["relative_gap", "dangerous_run", "dangerous_step"], kind="stable").reset_index(drop=True)
    out["pair"] = np.arange(1, len(out) + 1)
    return out


# --- Fig. 8: severity ordering -------------------------------------------------------------------------------

SEVERITY_MEASURES = ("pc1_abs", "trait_drift_norm")


def severity_by_perturbation(
    table: pd.DataFrame, loadings: Mapping[str, float], traits: Sequence[str], at: str
) -> pd.DataFrame:
    """Per (model, perturbation), the mean over its runs of each run's EM rate, |PC1| and 7-D drift norm, taken
    at the run's final checkpoint (`at: final`) or averaged over its checkpoints after step 0 (`at: mean`).
    Pooled over base models, each model's perturbation is a point of its own: the same data set may move two
    models differently."""
    if at not in ("final", "mean"):
        raise EMLabError(f"monitor.analyses.severity_at: {at!r} is not final or mean")
    t = _with_model_column(_labelled(table, "severity ordering"))
    t = t[t["step"].astype(int) > 0]
    t = t.assign(pc1_abs=np.abs(pc1_projection(t, loadings)), trait_drift_norm=np.linalg.norm(t[list(traits)], axis=1))
    cols = ["em_rate", *SEVERITY_MEASURES]
    if at == "final":
        from emlab.monitor.regressor import final_checkpoints

        per_run = final_checkpoints(t)
    else:
        per_run = t.groupby("run", sort=False)[cols].mean().reset_index()
        per_run = per_run.merge(t[["run", "model", "perturbation", "role"]].drop_duplicates("run"), on="run")
    grouped = per_run.groupby(["perturbation", "model"], sort=False)
    out = grouped[cols].mean().reset_index()
    out.insert(2, "role", grouped["role"].first().to_numpy())
    out.insert(3, "n_runs", grouped["run"].nunique().to_numpy())
    out["at"] = at
    return out.sort_values("em_rate", ascending=False, kind="stable").reset_index(drop=True)


def severity_ordering(severity: pd.DataFrame) -> pd.DataFrame:
    """Spearman across perturbations of each drift-size measure against the EM rate."""
    return pd.DataFrame(
        [{"measure": m, **spearman(severity[m], severity["em_rate"])} for m in SEVERITY_MEASURES],
        columns=["measure", "rho", "p_value", "n", "note"],
    )


# --- Fig. 10: trait drift against judged behaviour ------------------------------------------------------------

POINT_COLUMNS = [
    "condition",
    "run",
    "model",
    "perturbation",
    "step",
    "trait",
    "metric",
    "drift",
    "judge_score",
    "n_scored",
]
AGREEMENT_COLUMNS = ["trait", "metric", "rho", "p_value", "n", "note"]


def mean_trait_scores(judgments: Mapping[str, pd.DataFrame], metrics: Mapping[str, str]) -> pd.DataFrame:
    """condition, trait, metric, judge_score (mean over the scored responses), n_scored: one row per condition
    and trait. A judgments table without a trait's column is an error naming the switch."""
    rows = []
    for cid, table in judgments.items():
        for trait, metric in metrics.items():
            if metric not in table.columns:
                raise EMLabError(
                    f"judgments of {cid} have no {metric!r} score; the label conditions are judged on the trait "
                    "rubrics only with monitor.analyses.trait_judges: true (re-run their labels)"
                )
            vals = table[metric].astype(float)
            n = int(vals.notna().sum())
            rows.append(
                {
                    "condition": cid,
                    "trait": trait,
                    "metric": metric,
                    "judge_score": float(vals.mean()) if n else math.nan,
                    "n_scored": n,
                }
            )
    return pd.DataFrame(rows, columns=["condition", "trait", "metric", "judge_score", "n_scored"])


def trait_behaviour_points(
    table: pd.DataFrame,
    label_conditions: Mapping[str, Mapping[int, str]],
    scores: pd.DataFrame,
    traits: Sequence[str],
) -> pd.DataFrame:
    """One row per (label condition, trait): the checkpoint's drift along the trait and its mean judge score.

    label_conditions: run -> step -> its label condition. Every run's step 0 is its base model's condition,
    kept once (once per model when pooled over several)."""
    rows, seen = [], set()
    for rec in _with_model_column(table).to_dict("records"):
        run, step = rec["run"], int(rec["step"])
        cid = label_conditions.get(run, {}).get(step)
        if cid is None:
            raise EMLabError(f"monitor analyses: no label condition for {run} at step {step}")
        if cid in seen:
            continue
        seen.add(cid)
        for trait in traits:
            rows.append(
                {
                    "condition": cid,
                    "run": run if step > 0 else "",
                    "model": str(rec["model"]),
                    "perturbation": rec["perturbation"] if step > 0 else "(base model)",
                    "step": step,
                    "trait": trait,
                    "drift": float(rec[trait]),
                }
            )
    points = pd.DataFrame(rows, columns=["condition", "run", "model", "perturbation", "step", "trait", "drift"])
    merged = points.merge(scores, on=["condition", "trait"], how="left", validate="one_to_one")
    missing = merged["metric"].isna()
    if missing.any():
        raise EMLabError(
            "monitor analyses: no trait judge scores for " + ", ".join(sorted(set(merged.loc[missing, "condition"])))
        )
    return merged[POINT_COLUMNS]


def trait_behaviour_agreement(points: pd.DataFrame, metrics: Mapping[str, str]) -> pd.DataFrame:
    """Per trait (metrics: trait -> its judge metric), Spearman over checkpoints of the drift along the trait
    against its mean judge score."""
    rows = []
    for trait, metric in metrics.items():
        p = points[points["trait"] == trait]
        rows.append({"trait": trait, "metric": metric, **spearman(p["drift"], p["judge_score"])})
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)


def trait_behaviour_off(metrics: Mapping[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The (points, agreement) tables when the trait judges are off: no points, NaN rows saying why."""
    note = "trait judges off (monitor.analyses.trait_judges: false)"
    agreement = pd.DataFrame(
        [
            {"trait": t, "metric": m, "rho": math.nan, "p_value": math.nan, "n": 0, "note": note}
            for t, m in metrics.items()
        ],
        columns=AGREEMENT_COLUMNS,
    )
    return pd.DataFrame(columns=POINT_COLUMNS), agreement
