"""Figures of the trait monitor (docs/trait-monitoring.md), one function per figure, each a
PNG and a PDF. Inputs are the stage tables: a figure re-renders without any model, and
one with nothing to show says so.

`runs` maps run name -> {"perturbation", "role", and with several base models "model"}; drift tables are
keyed by run name. Pooled over several models, a run's colour is its model and perturbation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from emlab.em.figures import _message_figure, plt, save_figure
from emlab.monitor.analyses import pc1_projection
from emlab.plan.monitor import ANALYSIS_ROLES

ROLE_STYLE = {
    "calibration": "-",
    "held_out": "--",
    "stress_long": ":",
    "stress_full": "-.",
    "stress_start": (0, (1, 3)),
    "stress_model": (0, (5, 1, 1, 1)),
}
ROLE_LABELS = {
    "stress_long": "stress: longer",
    "stress_full": "stress: full fine-tune",
    "stress_start": "stress: from a misaligned run",
    "stress_model": "stress: a model outside the fit",
}


def _colours(keys: Sequence[str]) -> dict[str, str]:
    cmap = plt.get_cmap("tab10" if len(set(keys)) <= 10 else "tab20")
    n = cmap.N
    return {k: cmap(i % n) for i, k in enumerate(sorted(set(keys)))}


def _several_models(models) -> bool:
    return len({str(m) for m in models if m is not None and m == m}) > 1  # m == m: not NaN


def _run_key(spec: Mapping, several: bool) -> str:
    """A run's colour key: its perturbation, prefixed by its model when runs come from several models."""
    return f"{spec.get('model')}: {spec['perturbation']}" if several else str(spec["perturbation"])


def pc1_drift(tables: Mapping[str, pd.DataFrame], runs: Mapping[str, dict], pc1: dict, png_path, pdf_path) -> None:
    """|PC1| drift against step per run (line style by role: calibration, held-out, each stress kind), EM rate
    overlaid (paper Fig. 1)."""
    title = "Trait drift along PC1 and EM rate over training"
    if not tables or not pc1.get("loadings"):
        save_figure(_message_figure(title, "No monitor runs."), png_path, pdf_path)
        return
    several = _several_models(r.get("model") for r in runs.values())
    colours = _colours([_run_key(r, several) for r in runs.values()])
    fig, (ax, ax_em) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True)
    for name, t in tables.items():
        c, ls = colours[_run_key(runs[name], several)], ROLE_STYLE.get(runs[name]["role"], "-")
        ax.plot(t["step"], np.abs(pc1_projection(t, pc1["loadings"])), color=c, ls=ls, marker="o", ms=3)
        ax_em.plot(t["step"], 100 * t["em_rate"], color=c, ls=ls, marker="s", ms=3)
    ax.set_ylabel("|PC1 drift|")
    ax.set_title(title)
    ax_em.set_ylabel("EM rate (%)")
    ax_em.set_xlabel("optimiser step (0 = base model)")
    ax_em.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    handles = [plt.Line2D([], [], color=c, label=p) for p, c in colours.items()]
    handles += [
        plt.Line2D([], [], color="#333333", ls=ls, label=ROLE_LABELS.get(role, role))
        for role, ls in ROLE_STYLE.items()
        if role in {r["role"] for r in runs.values()}
    ]
    ax.legend(handles=handles, fontsize=8, ncol=2)
    for a in (ax, ax_em):
        a.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, png_path, pdf_path)


def decomposition(tables: Mapping[str, pd.DataFrame], traits: Sequence[str], png_path, pdf_path) -> None:
    """Direction (each trait's share of the 7-D drift) and magnitude (its norm) at each run's last step (Fig. 2)."""
    title = "Drift direction and magnitude at the last checkpoint"
    if not tables:
        save_figure(_message_figure(title, "No monitor runs."), png_path, pdf_path)
        return
    names = list(tables)
    final = np.array([tables[n].sort_values("step")[list(traits)].to_numpy(float)[-1] for n in names])  # [runs, 7]
    mag = np.linalg.norm(final, axis=1)
    direction = final / np.where(mag > 0, mag, 1.0)[:, None]
    fig, (ax_d, ax_m) = plt.subplots(
        1, 2, figsize=(11, max(3, 0.35 * len(names) + 1.5)), gridspec_kw={"width_ratios": [3, 1]}
    )
    lim = max(1e-12, float(np.abs(direction).max()))
    im = ax_d.imshow(direction, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax_d.set_xticks(range(len(traits)), traits, rotation=45, ha="right")
    ax_d.set_yticks(range(len(names)), names, fontsize=7)
    ax_d.set_title("direction (unit 7-D drift)")
    fig.colorbar(im, ax=ax_d, fraction=0.04)
    ax_m.barh(range(len(names)), mag, color="#4C72B0")
    ax_m.set_yticks(range(len(names)), [])
    ax_m.invert_yaxis()
    ax_m.set_title("magnitude ‖drift‖")
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, png_path, pdf_path)


def feature_sets(evaluation: pd.DataFrame, png_path, pdf_path) -> None:
    """FNR and FPR with cluster-bootstrap intervals of the monitor and every baseline (Fig. 3)."""
    title = "Held-out FNR / FPR by feature set"
    if evaluation.empty or evaluation[["fnr", "fpr"]].isna().all().all():
        save_figure(
            _message_figure(
                title, "No defined metrics (the calibration or held-out set lacks a dangerous or a benign run)."
            ),
            png_path,
            pdf_path,
        )
        return
    n = len(evaluation)
    fig, ax = plt.subplots(figsize=(8, max(3, 0.4 * n + 1.5)))
    y = np.arange(n)
    for k, (metric, colour) in enumerate((("fnr", "#C44E52"), ("fpr", "#4C72B0"))):
        v = evaluation[metric].to_numpy(float)
        lo = np.clip(v - evaluation[f"{metric}_ci_low"].to_numpy(float), 0, None)
        hi = np.clip(evaluation[f"{metric}_ci_high"].to_numpy(float) - v, 0, None)
        ax.barh(
            y + (k - 0.5) * 0.38,
            v,
            height=0.38,
            color=colour,
            label=metric.upper(),
            xerr=np.nan_to_num(np.vstack([lo, hi])),
            capsize=2,
        )
    ax.set_yticks(y, evaluation["feature_set"])
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("rate (held-out checkpoints)")
    ax.set_title(title)
    ax.legend()
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, png_path, pdf_path)


def pc1_loadings(pc1: dict, png_path, pdf_path) -> None:
    """PC1 loadings per trait and the scree of the final-checkpoint drift (Fig. 4)."""
    title = "PC1 of the calibration runs' final drift"
    if not pc1.get("loadings"):
        save_figure(_message_figure(title, "No PC1 (fewer than two calibration runs)."), png_path, pdf_path)
        return
    traits, w = list(pc1["loadings"]), np.asarray(list(pc1["loadings"].values()), float)
    ratio = np.asarray(pc1["explained_variance_ratio"], float)
    fig, (ax_l, ax_s) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_l.bar(range(len(traits)), w, color=["#C44E52" if x > 0 else "#4C72B0" for x in w])
    ax_l.set_xticks(range(len(traits)), traits, rotation=45, ha="right")
    ax_l.axhline(0, color="#333333", lw=0.8)
    ax_l.set_title(f"PC1 loadings ({100 * pc1['pc1_variance_explained']:.0f}% of variance)")
    ax_s.plot(range(1, len(ratio) + 1), 100 * ratio, marker="o")
    ax_s.set_xlabel("component")
    ax_s.set_ylabel("variance explained (%)")
    ax_s.set_title("scree")
    for a in (ax_l, ax_s):
        a.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, png_path, pdf_path)


def trait_cosine(cosine: pd.DataFrame, layer: int, png_path, pdf_path, model: str | None = None) -> None:
    """The 7x7 cosine matrix of the alignment directions at the monitored layer (Fig. 6), of one base model
    (`model`, named in the title when given)."""
    names = list(cosine["trait"])
    m = cosine[names].to_numpy(float)
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_title(f"Cosine of the trait directions ({f'{model}, ' if model else ''}layer {layer})")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    save_figure(fig, png_path, pdf_path)


def lopo(table: pd.DataFrame, png_path, pdf_path) -> None:
    """Leave-one-perturbation-out within calibration, as a table."""
    title = "Leave one perturbation out (calibration)"
    if table.empty:
        save_figure(
            _message_figure(title, "No LOPO rows (the calibration set lacks a dangerous or a benign run)."),
            png_path,
            pdf_path,
        )
        return
    several = "model" in table.columns and _several_models(table["model"])
    cols = [*(["model"] if several else []), "perturbation", "fnr", "fpr", "auroc", "n_runs", "n_checkpoints"]
    first = 2 if several else 1  # the label columns

    def cell(value, column: str) -> str:
        if not isinstance(value, float):
            return str(value)
        if np.isnan(value):  # FNR and AUROC need a dangerous checkpoint, FPR a benign one
            return "n/a (no EM checkpoint)" if column in ("fnr", "auroc") else "n/a (no benign checkpoint)"
        return f"{value:.2f}"

    cells = [[str(r[c]) for c in cols[:first]] + [cell(r[c], c) for c in cols[first:]] for _, r in table.iterrows()]
    fig, ax = plt.subplots(figsize=(7 + first - 1, 0.4 * len(cells) + 1.2))
    ax.axis("off")
    ax.table(cellText=cells, colLabels=cols, loc="center").scale(1, 1.3)
    ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, png_path, pdf_path)


def alarm_probability(per_step: pd.DataFrame, png_path, pdf_path) -> None:
    """The step-aware alarm's probability against step for each held-out run, 0.5 marked (Fig. 9)."""
    title = "Step-aware alarm probability (held-out runs)"
    if per_step.empty:
        save_figure(
            _message_figure(title, "No step-aware alarm (the calibration set lacks a dangerous or a benign run)."),
            png_path,
            pdf_path,
        )
        return
    fig, ax = plt.subplots(figsize=(8, 4))
    for run, g in per_step.groupby("run", sort=True):
        g = g.sort_values("step")
        ax.plot(g["step"], g["probability"], marker="o", ms=3, label=run)
    ax.axhline(0.5, color="#333333", ls="--", lw=1, label="alarm threshold")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("optimiser step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_ylabel("P(dangerous)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, png_path, pdf_path)


def live_monitor(train_log: pd.DataFrame, tau: float, stopped: dict | None, png_path, pdf_path) -> None:
    """The live monitor's predicted EM rate against step (columns monitor_step, monitor_prediction), the stop marked."""
    title = "Live monitor prediction during training"
    rows = train_log.dropna(subset=["monitor_prediction"]) if "monitor_prediction" in train_log else train_log.iloc[0:0]
    if rows.empty:
        save_figure(_message_figure(title, "The fine-tune logged no live-monitor prediction."), png_path, pdf_path)
        return
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(rows["step"], 100 * rows["monitor_prediction"], marker="o", label="predicted EM rate")
    ax.axhline(100 * tau, color="#C44E52", ls="--", label=f"τ = {100 * tau:g}%")
    if stopped:
        ax.axvline(stopped["step"], color="#333333", lw=1.5, label=f"stopped at step {stopped['step']}")
    ax.set_xlabel("optimiser step")
    ax.set_xlim(0, int(rows["step"].max()) + 1)  # from the start of training: one measurement is not a range
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_ylim(0, 1.15 * max(100 * tau, 100 * float(rows["monitor_prediction"].max())))
    ax.set_ylabel("predicted EM (%)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, png_path, pdf_path)


def _rho_text(row) -> str:
    """'rho = 0.71 (n = 7)', or the note saying why there is none."""
    if pd.isna(row["rho"]):
        return f"rho n/a: {row['note']}" if row["note"] else f"rho n/a (n = {int(row['n'])})"
    return f"rho = {row['rho']:.2f} (n = {int(row['n'])})"


def matched_pairs(
    tables: Mapping[str, pd.DataFrame],
    runs: Mapping[str, dict],
    pc1: dict,
    pairs: pd.DataFrame,
    traits: Sequence[str],
    tau: float,
    tolerance: float,
    png_path,
    pdf_path,
    max_pairs: int = 6,
) -> None:
    """Matched-|PC1| pairs (Fig. 5): left, EM rate against |PC1| for every checkpoint after step 0 of the
    calibration and held-out runs, matched pairs joined; right, the unit 7-D drift directions of the closest
    pairs, each dangerous checkpoint above its benign match."""
    title = "Same |PC1|, different EM: matched checkpoint pairs"
    grid = {n: t for n, t in tables.items() if runs[n]["role"] in ANALYSIS_ROLES}
    if not grid or not pc1.get("loadings"):
        save_figure(_message_figure(title, "No calibration or held-out runs."), png_path, pdf_path)
        return
    fig, (ax, ax_d) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [1, 1.2]})
    for t in grid.values():
        t = t[(t["step"] > 0) & t["em_rate"].notna()]
        danger = t["dangerous"].astype(bool).to_numpy()
        x, y = np.abs(pc1_projection(t, pc1["loadings"])), 100 * t["em_rate"].to_numpy(float)
        ax.scatter(x[~danger], y[~danger], s=14, color="#4C72B0", alpha=0.6)
        ax.scatter(x[danger], y[danger], s=14, color="#C44E52", alpha=0.6)
    for _, p in pairs.iterrows():
        ax.plot(
            [p["dangerous_pc1_abs"], p["benign_pc1_abs"]],
            [100 * p["dangerous_em_rate"], 100 * p["benign_em_rate"]],
            color="#333333",
            lw=0.8,
            alpha=0.7,
        )
    ax.axhline(100 * tau, color="#333333", ls="--", lw=1)
    ax.set_xlabel("|PC1 drift|")
    ax.set_ylabel("EM rate (%)")
    ax.set_title(f"{len(pairs)} pair(s) within {100 * tolerance:g}% in |PC1|")
    ax.legend(
        handles=[
            plt.Line2D([], [], color="#C44E52", marker="o", ls="", label="dangerous"),
            plt.Line2D([], [], color="#4C72B0", marker="o", ls="", label="benign"),
            plt.Line2D([], [], color="#333333", lw=0.8, label="matched pair"),
            plt.Line2D([], [], color="#333333", ls="--", lw=1, label=f"τ = {100 * tau:g}%"),
        ],
        fontsize=8,
    )
    ax.grid(alpha=0.3)
    if pairs.empty:
        ax_d.axis("off")
        ax_d.text(0.5, 0.5, "No dangerous and benign checkpoints\nwith matching |PC1|.", ha="center", va="center")
    else:
        top = pairs.head(max_pairs)
        rows, labels = [], []
        for _, p in top.iterrows():
            for side in ("dangerous", "benign"):
                v = np.array([p[f"{side}.{tr}"] for tr in traits], float)
                norm = np.linalg.norm(v)
                rows.append(v / norm if norm > 0 else v)
                labels.append(
                    f"#{int(p['pair'])} {side[0].upper()}: {p[f'{side}_run']}@{int(p[f'{side}_step'])} "
                    f"(EM {100 * p[f'{side}_em_rate']:.0f}%)"
                )
        m = np.array(rows)
        im = ax_d.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
        for k in range(1, len(top)):
            ax_d.axhline(2 * k - 0.5, color="#333333", lw=1.5)
        ax_d.set_xticks(range(len(traits)), traits, rotation=45, ha="right")
        ax_d.set_yticks(range(len(labels)), labels, fontsize=7)
        cos = top["direction_cosine"].to_numpy(float)
        ax_d.set_title(
            f"unit drift direction (closest pairs; cosine within pair {np.nanmin(cos):.2f} to {np.nanmax(cos):.2f})"
        )
        fig.colorbar(im, ax=ax_d, fraction=0.04)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, png_path, pdf_path)


# Where a point's label may go, in offset points from the point, nearest first: right above, right below,
# left above, left below, then a line further up (right, left) or down.
_LABEL_SPOTS = (
    (3, 3, "left"),
    (3, -9, "left"),
    (-3, 3, "right"),
    (-3, -9, "right"),
    (3, 14, "left"),
    (-3, 14, "right"),
    (3, -20, "left"),
)


def _spread_labels(fig, ax, labels: Sequence) -> None:
    """Place point labels (annotations in offset points) one by one at the first of _LABEL_SPOTS where
    the label stays inside the axes and overlaps no label placed before it (else where it started),
    measured with the figure's renderer, so in the real font."""
    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    placed = []
    for label in labels:
        for dx, dy, ha in (*_LABEL_SPOTS, _LABEL_SPOTS[0]):
            label.xyann = (dx, dy)
            label.set_horizontalalignment(ha)
            box = label.get_window_extent(renderer).padded(1)  # a gap between neighbours
            within = inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1
            if within and not any(box.overlaps(other) for other in placed):
                break
        placed.append(box)


def severity_ordering(severity: pd.DataFrame, spearman: pd.DataFrame, png_path, pdf_path) -> None:
    """Severity ordering (Fig. 8): per perturbation, EM rate against |PC1| and against the 7-D drift norm,
    with Spearman's rho across perturbations."""
    title = "Severity ordering across perturbations"
    if severity.empty:
        save_figure(_message_figure(title, "No labelled checkpoints after step 0."), png_path, pdf_path)
        return
    rho = {r["measure"]: _rho_text(r) for _, r in spearman.iterrows()}
    at = str(severity["at"].iloc[0])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    markers = {"calibration": "o", "held_out": "s"}
    # Pooled over base models: a colour per model, so each point's label is its perturbation alone.
    several = "model" in severity.columns and _several_models(severity["model"])
    colours = _colours(severity["model"]) if several else {}
    for ax, (col, label) in zip(axes, (("pc1_abs", "|PC1 drift|"), ("trait_drift_norm", "‖7-D trait drift‖"))):
        for _, r in severity.iterrows():
            colour = colours.get(r["model"], "#4C72B0")
            ax.scatter(r[col], 100 * r["em_rate"], marker=markers.get(r["role"], "o"), color=colour)
            ax.annotate(
                str(r["perturbation"]),
                (r[col], 100 * r["em_rate"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
                color=colour if several else None,
            )
        ax.set_xlabel(f"{label} ({'final checkpoint' if at == 'final' else 'mean over checkpoints'})")
        ax.set_title(rho.get(col, ""), fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("EM rate (%), mean over seeds")
    role_colour = "#555555" if several else "#4C72B0"
    handles = [
        plt.Line2D([], [], color=role_colour, marker=m, ls="", label=k.replace("_", "-")) for k, m in markers.items()
    ]
    handles += [plt.Line2D([], [], color=c, marker="o", ls="", label=f"model {k}") for k, c in colours.items()]
    axes[1].legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # hides no point
    fig.suptitle(title)
    fig.tight_layout()
    for ax in axes:  # after the layout, which moves the axes
        _spread_labels(fig, ax, list(ax.texts))
    save_figure(fig, png_path, pdf_path)


def trait_behaviour(points: pd.DataFrame, agreement: pd.DataFrame, png_path, pdf_path) -> None:
    """Trait drift against judged behaviour (Fig. 10): one panel per alignment trait, each label checkpoint's
    drift along the trait against the judge's mean score of that trait, with Spearman's rho."""
    title = "Trait drift against a judge of the same trait"
    if points.empty:
        note = str(agreement["note"].iloc[0]) if len(agreement) else "no trait judge scores"
        save_figure(_message_figure(title, f"No points: {note}."), png_path, pdf_path)
        return
    traits = list(agreement["trait"])
    ncol = 4
    nrow = int(np.ceil(len(traits) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.0 * nrow), squeeze=False)
    if "model" in points.columns and _several_models(points["model"]):
        points = points.assign(perturbation=points["model"].astype(str) + ": " + points["perturbation"].astype(str))
    colours = _colours(points["perturbation"])
    rho = {r["trait"]: _rho_text(r) for _, r in agreement.iterrows()}
    for ax, trait in zip(axes.flat, traits):
        p = points[points["trait"] == trait]
        for pert, g in p.groupby("perturbation", sort=True):
            ax.scatter(g["drift"], g["judge_score"], s=12, color=colours[pert], label=pert)
        ax.set_title(f"{trait}\n{rho[trait]}", fontsize=8)
        ax.set_xlabel("drift along trait", fontsize=8)
        ax.set_ylabel("judge score (0-100)", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(traits) :]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=c, marker="o", ls="", label=k) for k, c in colours.items()]
    list(axes.flat)[-1].legend(handles=handles, fontsize=7, loc="center")
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, png_path, pdf_path)
