"""The trait-space monitor: a random forest from 7-D trait drift to EM rate, its
held-out evaluation against baselines, and its saved form (docs/trait-monitoring.md).

Data: one drift table for many runs (one row per run and checkpoint step) with
columns `run`, `perturbation`, `step`, the alignment trait names,
`semantic.<trait>`, `random{seed}.{k}`, `drift_norm`, `train_loss`,
`delta_w_norm`, `em_rate`; optionally the full mean-activation drift Δh̄
[rows, d], row-aligned, for the PCA-7 baseline, and `sae.<feature>` columns
for the SAE baseline (emlab.monitor.sae).

Every feature set goes through the same regressor (fitted on calibration runs
only) and the same alarm (prediction > tau); a checkpoint is dangerous when
its own EM rate > tau. Intervals come from a cluster bootstrap over runs.

Serialisation: skops (a declarative format: loading builds only the listed
sklearn/numpy types and runs no code, unlike pickle/joblib), plus a JSON
sidecar naming the feature columns, layer, trait-file version and base model, or, for a monitor
pooled over several base models, each of them with its layer (`models`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from emlab.core.errors import EMLabError

ID_COLUMNS = ("run", "perturbation", "step", "em_rate")
SCALAR_BASELINES = ("drift_norm", "train_loss", "delta_w_norm")
FULL_DELTA_SETS = ("pca7_full",)  # feature sets read from the full Δh̄ [rows, d]: one model width only
TRUSTED_TYPES = [
    "sklearn.ensemble._forest.RandomForestRegressor",
    "sklearn.tree._classes.DecisionTreeRegressor",
    "sklearn.tree._tree.Tree",
]
FORMAT = "emlab-trait-monitor/1"


@dataclass(frozen=True)
class MonitorSettings:
    """Regressor and evaluation settings (the paper: 100 trees, depth 5, leaf 5, tau 0.05, 1000 resamples)."""

    n_estimators: int
    max_depth: int
    min_samples_leaf: int
    seed: int
    tau: float  # dangerous := EM rate > tau; alarm := prediction > tau
    n_bootstrap: int
    ci: float  # interval level, e.g. 0.95


@dataclass(frozen=True)
class DriftData:
    """Drift rows of several runs; `delta` [rows, d] is the full Δh̄ (None when not kept)."""

    table: pd.DataFrame
    delta: np.ndarray | None = None

    def __post_init__(self):
        missing = [c for c in ID_COLUMNS if c not in self.table.columns]
        if missing:
            raise EMLabError(f"drift table: missing column(s) {missing}")
        if self.delta is not None and len(self.delta) != len(self.table):
            raise EMLabError(f"drift table: {len(self.table)} rows but {len(self.delta)} drift vectors")

    def subset(self, mask) -> DriftData:
        mask = np.asarray(mask, bool)
        return DriftData(self.table[mask].reset_index(drop=True), None if self.delta is None else self.delta[mask])

    @property
    def runs(self) -> np.ndarray:
        return self.table["run"].to_numpy()

    @property
    def em(self) -> np.ndarray:
        return self.table["em_rate"].to_numpy(float)


# --- regressor ------------------------------------------------------------------


def check_calibration(data: DriftData, tau: float, where: str = "calibration set") -> None:
    """A run is dangerous if any checkpoint has EM > tau; both kinds must be present."""
    worst = data.table.groupby("run")["em_rate"].max()
    if worst.isna().any():
        raise EMLabError(f"{where}: run(s) {sorted(worst[worst.isna()].index)} have no EM rate")
    if not (worst > tau).any():
        raise EMLabError(
            f"{where}: no dangerous run (no checkpoint has EM rate > {tau}); AUROC and FNR are undefined. "
            "Add a dangerous perturbation to the calibration datasets or lower the threshold"
        )
    if (worst > tau).all():
        raise EMLabError(
            f"{where}: no benign run (every run has a checkpoint with EM rate > {tau}); FPR is undefined. "
            "Add a benign perturbation to the calibration datasets or raise the threshold"
        )


def fit_regressor(features: np.ndarray, em_rate: np.ndarray, settings: MonitorSettings):
    """RandomForestRegressor(features [n, k] -> EM rate [n]), seeded."""
    from sklearn.ensemble import RandomForestRegressor

    features = np.asarray(features, float)
    if features.ndim != 2 or len(features) != len(em_rate) or len(features) == 0:
        raise EMLabError(f"monitor: features of shape {features.shape} do not match {len(em_rate)} EM rates")
    reg = RandomForestRegressor(
        n_estimators=settings.n_estimators,
        max_depth=settings.max_depth,
        min_samples_leaf=settings.min_samples_leaf,
        random_state=settings.seed,
    )
    return reg.fit(features, np.asarray(em_rate, float))


REGRESSORS = ("random_forest", "ridge", "gbt")


@dataclass(frozen=True)
class RegressorComparison:
    """The regressors compared on the monitor's rows (config monitor.regressor_comparison): the forest is
    MonitorSettings'; ridge is standardised features -> Ridge(alpha); gbt is GradientBoostingRegressor."""

    regressors: list[str]  # names in REGRESSORS, in table order
    ridge_alpha: float
    gbt_n_estimators: int
    gbt_max_depth: int
    gbt_learning_rate: float
    gbt_min_samples_leaf: int


def fit_named_regressor(
    kind: str, features: np.ndarray, em_rate: np.ndarray, settings: MonitorSettings, comparison: RegressorComparison
):
    """One of REGRESSORS fitted on features [n, k] -> EM rate [n], seeded with settings.seed."""
    if kind == "random_forest":
        return fit_regressor(features, em_rate, settings)
    features, em_rate = np.asarray(features, float), np.asarray(em_rate, float)
    if features.ndim != 2 or len(features) != len(em_rate) or len(features) == 0:
        raise EMLabError(f"monitor: features of shape {features.shape} do not match {len(em_rate)} EM rates")
    if kind == "ridge":
        from sklearn.linear_model import Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        # drift values are ~1e-3: standardised (on the calibration rows), so alpha means the same at any scale
        return make_pipeline(StandardScaler(), Ridge(alpha=comparison.ridge_alpha)).fit(features, em_rate)
    if kind == "gbt":
        from sklearn.ensemble import GradientBoostingRegressor

        return GradientBoostingRegressor(
            n_estimators=comparison.gbt_n_estimators,
            max_depth=comparison.gbt_max_depth,
            learning_rate=comparison.gbt_learning_rate,
            min_samples_leaf=comparison.gbt_min_samples_leaf,
            random_state=settings.seed,
        ).fit(features, em_rate)
    raise EMLabError(f"monitor.regressor_comparison.regressors: unknown regressor `{kind}` (one of {REGRESSORS})")


def predict(regressor, features: np.ndarray) -> np.ndarray:
    """Predicted EM rate clipped to [0, 1]: [n]."""
    return np.clip(regressor.predict(np.asarray(features, float)), 0.0, 1.0)


# --- metrics --------------------------------------------------------------------------


def alarm_metrics(score: np.ndarray, em_rate: np.ndarray, tau: float) -> dict[str, float]:
    """FNR and FPR of the alarm score > tau against EM > tau, and AUROC of the score (NaN when undefined)."""
    score, label = np.asarray(score, float), np.asarray(em_rate, float) > tau
    alarm = score > tau
    n_pos, n_neg = int(label.sum()), int((~label).sum())
    fnr = float((~alarm & label).sum() / n_pos) if n_pos else float("nan")
    fpr = float((alarm & ~label).sum() / n_neg) if n_neg else float("nan")
    return {"fnr": fnr, "fpr": fpr, "auroc": _auroc(score, label)}


def _auroc(score: np.ndarray, label: np.ndarray) -> float:
    """Rank form of the AUROC (ties count half); NaN with one class. Cheap enough for the bootstrap."""
    from scipy.stats import rankdata

    n_pos = int(label.sum())
    n_neg = len(label) - n_pos
    if not n_pos or not n_neg:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[label].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def evaluate_scores(
    score: np.ndarray, em_rate: np.ndarray, runs: np.ndarray, settings: MonitorSettings, tau: float | None = None
) -> dict:
    """alarm_metrics plus `_ci_low`/`_ci_high` from a cluster bootstrap over runs, `n_runs`, `n_checkpoints`."""
    tau = settings.tau if tau is None else tau
    score, em_rate, runs = np.asarray(score, float), np.asarray(em_rate, float), np.asarray(runs)
    row = alarm_metrics(score, em_rate, tau)
    unique = np.unique(runs)
    rows_of = [np.flatnonzero(runs == r) for r in unique]
    rng = np.random.default_rng(settings.seed)
    boot = {k: [] for k in row}
    for _ in range(settings.n_bootstrap):
        idx = np.concatenate([rows_of[i] for i in rng.integers(0, len(unique), len(unique))])
        for k, v in alarm_metrics(score[idx], em_rate[idx], tau).items():
            boot[k].append(v)
    lo, hi = 100 * (1 - settings.ci) / 2, 100 * (1 + settings.ci) / 2
    out = {}
    for k, v in row.items():
        vals = np.asarray(boot[k], float)
        vals = vals[~np.isnan(vals)]
        out[k] = v
        out[f"{k}_ci_low"] = float(np.percentile(vals, lo)) if vals.size else float("nan")
        out[f"{k}_ci_high"] = float(np.percentile(vals, hi)) if vals.size else float("nan")
    out["n_runs"] = len(unique)
    out["n_checkpoints"] = len(score)
    return out


# --- feature sets ----------------------------------------------------------------


def _columns(table: pd.DataFrame, columns: Sequence[str], name: str) -> np.ndarray:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise EMLabError(f"feature set `{name}`: drift table lacks column(s) {missing}")
    return table[list(columns)].to_numpy(float)


def final_checkpoints(table: pd.DataFrame) -> pd.DataFrame:
    """The last step of each run."""
    return table.loc[table.groupby("run")["step"].idxmax()].reset_index(drop=True)


@dataclass(frozen=True)
class PC1:
    """PCA of the calibration runs' final-checkpoint alignment drift."""

    traits: tuple[str, ...]
    loadings: np.ndarray  # [k] unit, sign: the mean final projection is >= 0
    explained_variance_ratio: np.ndarray  # [k] scree

    def project(self, table: pd.DataFrame) -> np.ndarray:
        """Signed PC1 of each row (uncentred: step 0 has drift 0 and projection 0): [n]."""
        return _columns(table, self.traits, "pc1") @ self.loadings


def fit_pc1(calibration: pd.DataFrame, traits: Sequence[str]) -> PC1:
    from sklearn.decomposition import PCA

    final = _columns(final_checkpoints(calibration), traits, "pc1")
    if len(final) < 2:
        raise EMLabError(f"PC1 of final-checkpoint drift needs at least 2 calibration runs (got {len(final)})")
    pca = PCA(n_components=min(len(traits), len(final))).fit(final)
    w = pca.components_[0]
    if (final @ w).mean() < 0:
        w = -w
    ratio = np.zeros(len(traits))
    ratio[: len(pca.explained_variance_ratio_)] = pca.explained_variance_ratio_
    return PC1(tuple(traits), w, ratio)


def pc1_summary(calibration: pd.DataFrame, traits: Sequence[str]) -> dict:
    """PC1 variance explained, the scree and PC1's loadings per trait (final-checkpoint drift)."""
    pc1 = fit_pc1(calibration, traits)
    return {
        "pc1_variance_explained": float(pc1.explained_variance_ratio[0]),
        "explained_variance_ratio": [float(x) for x in pc1.explained_variance_ratio],
        "loadings": {t: float(w) for t, w in zip(traits, pc1.loadings)},
    }


def feature_set_names(table: pd.DataFrame, traits: Sequence[str], has_delta: bool) -> list[str]:
    """The monitor (`alignment_7d`) and every baseline the table supports."""
    names = ["alignment_7d", "pc1_abs", "pc1_signed"]
    names += [c for c in SCALAR_BASELINES if c in table.columns]
    if has_delta:
        names.append("pca7_full")
    if any(c.startswith("semantic.") for c in table.columns):
        names.append("semantic_7d")
    seeds = sorted(
        {c.split(".")[0] for c in table.columns if c.startswith("random") and "." in c},
        key=lambda s: int(s[len("random") :]),
    )
    names += [f"{s}_7d" for s in seeds]
    if any(c.startswith("sae.") for c in table.columns):  # emlab.monitor.sae: features chosen on calibration
        names.append("sae")
    return names


def feature_matrices(
    name: str, calibration: DriftData, target: DriftData, traits: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(calibration [n_c, k], target [n_t, k]) for a feature set; fitted parts (PC1, PCA-7) see calibration only."""
    cal, tgt = calibration.table, target.table
    if name == "alignment_7d":
        cols = list(traits)
    elif name in ("pc1_abs", "pc1_signed"):
        pc1 = fit_pc1(cal, traits)
        xc, xt = pc1.project(cal), pc1.project(tgt)
        if name == "pc1_abs":
            xc, xt = np.abs(xc), np.abs(xt)
        return xc[:, None], xt[:, None]
    elif name in SCALAR_BASELINES:
        cols = [name]
    elif name == "pca7_full":
        from sklearn.decomposition import PCA

        if calibration.delta is None or target.delta is None:
            raise EMLabError("feature set `pca7_full` needs the full activation drift (delta) of every run")
        k = min(7, len(calibration.delta), calibration.delta.shape[1])
        pca = PCA(n_components=k, random_state=0).fit(calibration.delta)
        return pca.transform(calibration.delta), pca.transform(target.delta)
    elif name == "semantic_7d":
        cols = [c for c in cal.columns if c.startswith("semantic.")]
    elif name.startswith("random") and name.endswith("_7d"):
        prefix = name[: -len("_7d")] + "."
        cols = [c for c in cal.columns if c.startswith(prefix)]
    elif name == "sae":
        cols = [c for c in cal.columns if c.startswith("sae.")]
    else:
        raise EMLabError(f"unknown feature set `{name}`")
    if not cols:
        raise EMLabError(f"feature set `{name}`: the drift table has no such columns")
    return _columns(cal, cols, name), _columns(tgt, cols, name)


def evaluate_feature_set(
    name: str, calibration: DriftData, target: DriftData, traits: Sequence[str], settings: MonitorSettings
) -> tuple[dict, np.ndarray]:
    """Fit on calibration, predict the target: (metrics row, predictions [n_t])."""
    xc, xt = feature_matrices(name, calibration, target, traits)
    pred = predict(fit_regressor(xc, calibration.em, settings), xt)
    return {"feature_set": name, **evaluate_scores(pred, target.em, target.runs, settings)}, pred


def evaluate_feature_sets(
    calibration: DriftData,
    held_out: DriftData,
    traits: Sequence[str],
    settings: MonitorSettings,
    names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """evaluation.csv: one row per feature set (feature_set, fnr, fpr, auroc with CIs, n_runs, n_checkpoints)."""
    check_calibration(calibration, settings.tau)
    if names is None:
        names = feature_set_names(
            calibration.table, traits, calibration.delta is not None and held_out.delta is not None
        )
    return pd.DataFrame([evaluate_feature_set(n, calibration, held_out, traits, settings)[0] for n in names])


def compare_regressors(
    calibration: DriftData,
    held_out: DriftData,
    traits: Sequence[str],
    settings: MonitorSettings,
    comparison: RegressorComparison,
    feature_set: str = "alignment_7d",
) -> pd.DataFrame:
    """regressors.csv: each regressor fitted on the same calibration rows and scored on the same held-out rows
    (regressor, feature_set, fnr, fpr, auroc with CIs, n_runs, n_checkpoints, mae = mean |prediction - EM|)."""
    check_calibration(calibration, settings.tau)
    xc, xt = feature_matrices(feature_set, calibration, held_out, traits)
    rows = []
    for kind in comparison.regressors:
        pred = predict(fit_named_regressor(kind, xc, calibration.em, settings, comparison), xt)
        metrics = evaluate_scores(pred, held_out.em, held_out.runs, settings)
        rows.append({"regressor": kind, "feature_set": feature_set, **metrics, "mae": _mae(pred, held_out.em)})
    return pd.DataFrame(rows)


def _mae(pred: np.ndarray, em_rate: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(pred, float) - np.asarray(em_rate, float))))


HALVES = ("half_a", "half_b")


def basis_stability(
    calibration: DriftData, held_out: DriftData, traits: Sequence[str], settings: MonitorSettings
) -> pd.DataFrame:
    """basis_stability.csv: the forest monitor with drift along every trait prompt's directions (`full`, the
    alignment_7d row) and along each half's (`half_a`, `half_b`: drift-table columns half_a.<trait>, ...), fitted
    on the same calibration rows and scored on the same held-out rows (basis, fnr, fpr, auroc with CIs, n_runs,
    n_checkpoints, mae)."""
    check_calibration(calibration, settings.tau)
    rows = []
    for basis in ("full", *HALVES):
        cols = list(traits) if basis == "full" else [f"{basis}.{t}" for t in traits]
        missing = [c for c in cols if c not in calibration.table.columns or c not in held_out.table.columns]
        if missing:
            raise EMLabError(
                f"monitor.basis_stability: the drift tables lack {missing[:3]}...; their directions predate the "
                "prompt-half directions: re-run trait_directions and trait_drift"
            )
        metrics, pred = evaluate_feature_set("alignment_7d", calibration, held_out, cols, settings)
        metrics.pop("feature_set")
        rows.append({"basis": basis, **metrics, "mae": _mae(pred, held_out.em)})
    return pd.DataFrame(rows)


def leave_one_perturbation_out(
    calibration: DriftData, traits: Sequence[str], settings: MonitorSettings, feature_set: str = "alignment_7d"
) -> pd.DataFrame:
    """Within calibration: fit without one (model, perturbation), evaluate on it (NaN where a class is absent).

    lopo.csv: model, perturbation, feature_set, the metrics. In a study of one base model this leaves out one
    perturbation at a time; pooled over several, one model's runs of a perturbation, the other models' runs of
    the same perturbation staying in the fit. A table without a `model` column is one model's (`default`)."""
    from emlab.plan.models import DEFAULT_KEY

    t = calibration.table
    model = t["model"].astype(str) if "model" in t.columns else pd.Series(DEFAULT_KEY, index=t.index)
    rows = []
    for m, pert in sorted(set(zip(model, t["perturbation"].astype(str)))):
        held = ((model == m) & (t["perturbation"].astype(str) == pert)).to_numpy()
        metrics, _ = evaluate_feature_set(
            feature_set, calibration.subset(~held), calibration.subset(held), traits, settings
        )
        rows.append({"model": m, "perturbation": pert, **metrics})
    return pd.DataFrame(rows)


def tau_sweep(
    calibration: DriftData,
    held_out: DriftData,
    traits: Sequence[str],
    settings: MonitorSettings,
    taus: Sequence[float] = tuple(np.round(np.arange(0.02, 0.1001, 0.01), 2)),
) -> pd.DataFrame:
    """FNR/FPR/AUROC of the alignment monitor when danger and alarm threshold are both tau (2 %..10 %)."""
    xc, xt = feature_matrices("alignment_7d", calibration, held_out, traits)
    pred = predict(fit_regressor(xc, calibration.em, settings), xt)  # regresses EM itself: tau-independent
    return pd.DataFrame(
        [{"tau": float(t), **evaluate_scores(pred, held_out.em, held_out.runs, settings, tau=float(t))} for t in taus]
    )


def step_aware_alarm(
    calibration: DriftData, held_out: DriftData, traits: Sequence[str], settings: MonitorSettings
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Standardised logistic regression on [|PC1|, step, |PC1|/step] (label EM > tau), alarm at p > 0.5.

    Returns (per checkpoint: run, step, probability, alarm) and (per run:
    run, first_alarm_step, first_dangerous_step; NaN where none).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    check_calibration(calibration, settings.tau)
    pc1 = fit_pc1(calibration.table, traits)

    def design(table: pd.DataFrame) -> np.ndarray:
        mag = np.abs(pc1.project(table))
        step = table["step"].to_numpy(float)
        ratio = np.divide(mag, step, out=np.zeros_like(mag), where=step > 0)
        return np.column_stack([mag, step, ratio])  # [n, 3]

    clf = make_pipeline(StandardScaler(), LogisticRegression(random_state=settings.seed))
    clf.fit(design(calibration.table), calibration.em > settings.tau)
    tgt = held_out.table
    prob = clf.predict_proba(design(tgt))[:, 1]
    per_step = pd.DataFrame({"run": tgt["run"], "step": tgt["step"], "probability": prob, "alarm": prob > 0.5})
    per_run = []
    for run, grp in per_step.assign(dangerous=held_out.em > settings.tau).groupby("run", sort=True):
        grp = grp.sort_values("step")
        alarm, danger = grp.loc[grp["alarm"], "step"], grp.loc[grp["dangerous"], "step"]
        per_run.append(
            {
                "run": run,
                "first_alarm_step": alarm.min() if len(alarm) else float("nan"),
                "first_dangerous_step": danger.min() if len(danger) else float("nan"),
            }
        )
    return per_step, pd.DataFrame(per_run)


# --- the saved monitor ---------------------------------------------------------------


@dataclass(frozen=True)
class FittedModel:
    """One base model whose calibration runs a saved monitor was fitted on (a pooled monitor has several)."""

    key: str  # the config's model key (`default` for the short form base_model)
    model_id: str  # its source (HF id or folder), as directions.json's model_id
    layer: int  # the layer its drift was read at (layers may differ between models)
    family: str | None = None
    size_b: float | None = None

    def to_json(self) -> dict:
        return {
            "key": self.key,
            "model_id": self.model_id,
            "layer": int(self.layer),
            "family": self.family,
            "size_b": self.size_b,
        }


@dataclass(frozen=True)
class TraitMonitor:
    """A fitted monitor and what it was fitted for.

    `layer` and `base_model` are those of the one model it is used on: after load_monitor, the model it was
    loaded for; for a monitor pooled over models whose layers differ, None until then. `models` lists every
    model of the pool (empty for a monitor saved before pooling)."""

    regressor: object  # sklearn RandomForestRegressor
    features: tuple[str, ...]  # drift-table columns, in order (the alignment trait names)
    layer: int | None
    trait_version: str
    base_model: str | None
    tau: float
    models: tuple[FittedModel, ...] = ()

    def predict(self, table: pd.DataFrame) -> np.ndarray:
        return predict(self.regressor, _columns(table, self.features, "monitor"))

    def alarm(self, table: pd.DataFrame) -> np.ndarray:
        return self.predict(table) > self.tau

    def predict_drift(self, drift: np.ndarray) -> np.ndarray:
        """Predicted EM rate from drift vectors [n, k] in `features` order (the live monitor's path): [n]."""
        drift = np.atleast_2d(np.asarray(drift, float))
        if drift.shape[1] != len(self.features):
            raise EMLabError(
                f"monitor: drift has {drift.shape[1]} values per row, the monitor expects "
                f"{len(self.features)} ({', '.join(self.features)})"
            )
        return predict(self.regressor, drift)


def fit_monitor(
    calibration: DriftData,
    traits: Sequence[str],
    settings: MonitorSettings,
    layer: int,
    trait_version: str,
    base_model: str,
    key: str = "",
) -> TraitMonitor:
    """The alignment_7d monitor on all calibration runs of one base model."""
    check_calibration(calibration, settings.tau)
    reg = fit_regressor(_columns(calibration.table, traits, "monitor"), calibration.em, settings)
    models = (FittedModel(key, base_model, int(layer)),)
    return TraitMonitor(reg, tuple(traits), int(layer), trait_version, base_model, float(settings.tau), models)


def pooled_monitor(
    regressor, traits: Sequence[str], trait_version: str, models: Sequence[FittedModel], tau: float
) -> TraitMonitor:
    """A fitted regressor as the saved monitor of the models it was fitted on: `layer` and `base_model` set
    when they are one (one model, or models sharing a layer), else None (load_monitor picks the model's)."""
    if not models:
        raise EMLabError("monitor: a saved monitor needs at least one model it was fitted on")
    layers = {int(m.layer) for m in models}
    ids = {m.model_id for m in models}
    return TraitMonitor(
        regressor,
        tuple(traits),
        layers.pop() if len(layers) == 1 else None,
        trait_version,
        ids.pop() if len(ids) == 1 else None,
        float(tau),
        tuple(models),
    )


def sidecar_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def save_monitor(monitor: TraitMonitor, path: str | os.PathLike) -> None:
    """`path` (skops) + `path`.json (format, features, layer, trait version, base model, the pooled models, tau).

    A monitor pooled over several models has `base_model` null (and `layer` null when their layers differ):
    `models` lists each with its key, model id and layer."""
    import sklearn
    import skops.io as sio

    from emlab.core.atomic import atomic_path, write_json

    with atomic_path(path, suffix=".skops") as tmp:
        sio.dump(monitor.regressor, tmp)
    write_json(
        sidecar_path(path),
        {
            "format": FORMAT,
            "features": {
                "kind": "alignment_7d",
                "columns": list(monitor.features),
                "definition": "(B h_t - B h_0) / mean ||h_0|| at the last prompt token",
            },
            "layer": monitor.layer,
            "trait_version": monitor.trait_version,
            "base_model": monitor.base_model,
            "models": [m.to_json() for m in monitor.models],
            "tau": monitor.tau,
            "sklearn_version": sklearn.__version__,
        },
    )


def fitted_models(meta: dict, where) -> tuple[FittedModel, ...]:
    """The models a sidecar says its monitor was fitted on: `models`, or (a monitor saved before pooling) its
    one `base_model` and `layer`."""
    entries = meta.get("models") or []
    if not entries:
        if meta.get("base_model") is None or meta.get("layer") is None:
            raise EMLabError(f"monitor sidecar {where} names no base model (neither `models` nor `base_model`)")
        return (FittedModel("", str(meta["base_model"]), int(meta["layer"])),)
    try:
        return tuple(
            FittedModel(str(e["key"]), str(e["model_id"]), int(e["layer"]), e.get("family"), e.get("size_b"))
            for e in entries
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise EMLabError(f"monitor sidecar {where}: a `models` entry lacks key, model_id or layer ({exc})") from None


def load_monitor(path: str | os.PathLike, base_model: str, trait_version: str) -> TraitMonitor:
    """A saved monitor for use on `base_model`, refusing one whose pool of models does not include it, or one
    fitted with another trait-file version. The monitor returned reads that model's layer.

    Loads only the TRUSTED_TYPES (skops builds objects from data; any other type is refused).
    """
    import skops.io as sio

    path, side = Path(path), sidecar_path(path)
    for p in (path, side):
        if not p.is_file():
            raise EMLabError(f"monitor file {p} does not exist; train the monitor first (or check the path)")
    try:
        meta = json.loads(side.read_text())
    except json.JSONDecodeError as exc:
        raise EMLabError(f"monitor sidecar {side} is not valid JSON: {exc}") from None
    need = {"format", "features", "layer", "trait_version", "base_model", "tau"}
    if not isinstance(meta, dict) or need - set(meta) or meta.get("format") != FORMAT:
        raise EMLabError(f"monitor sidecar {side} is not a {FORMAT} file (keys {sorted(need)} expected)")
    fitted = fitted_models(meta, side)
    mine = [m for m in fitted if m.model_id == base_model]
    if not mine:
        ids = ", ".join(f"`{m.model_id}`" for m in fitted)
        raise EMLabError(
            f"monitor {path} was fitted on base model{'s' if len(fitted) > 1 else ''} {ids}, not `{base_model}`; "
            "trait directions differ between models, so recalibrate with this model among the monitor's models"
        )
    if len({m.layer for m in mine}) > 1:
        raise EMLabError(
            f"monitor {path} lists `{base_model}` under several keys with different layers "
            f"({', '.join(f'{m.key}: {m.layer}' for m in mine)}); it cannot tell which layer to read"
        )
    if meta["trait_version"] != trait_version:
        raise EMLabError(
            f"monitor {path} was fitted with trait files `{meta['trait_version']}`, not `{trait_version}`; "
            "recalibrate with the current data/traits/ or restore the old files"
        )
    untrusted = sorted(set(sio.get_untrusted_types(file=path)) - set(TRUSTED_TYPES))
    if untrusted:
        raise EMLabError(
            f"monitor file {path} contains types {untrusted} that a trait monitor never holds; refusing to load it"
        )
    regressor = sio.load(path, trusted=TRUSTED_TYPES)
    from sklearn.ensemble import RandomForestRegressor

    if type(regressor) is not RandomForestRegressor:
        raise EMLabError(
            f"monitor file {path} holds a {type(regressor).__name__}, not the RandomForestRegressor "
            "a trait monitor saves; refusing to use it"
        )
    return TraitMonitor(
        regressor,
        tuple(meta["features"]["columns"]),
        int(mine[0].layer),
        meta["trait_version"],
        base_model,
        float(meta["tau"]),
        fitted,
    )
