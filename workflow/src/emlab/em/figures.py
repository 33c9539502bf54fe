"""The study's figures, one function per figure, each written as a 150 dpi PNG
and a PDF (atomically). Inputs are the metric / cosine tables, so a figure
re-renders without touching any model.

A figure with nothing to show (e.g. a run without steering conditions) is still
written, saying so, so a report never breaks on a smaller study.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from emlab.core.atomic import atomic_path
from emlab.core.errors import EMLabError
from emlab.plan.conditions import (
    Ablation,
    AdapterProjection,
    Group,
    RandomAblation,
    SingleAblation,
    Unmodified,
    parse_condition_id,
)

log = logging.getLogger(__name__)

DPI = 150
GROUP_COLOURS = {
    Group.MODEL: "#4C72B0",
    Group.STEERING: "#DD8452",
    Group.ABLATION: "#55A868",
    Group.TRANSFER: "#8172B3",
    Group.CHECKPOINT: "#64B5CD",
    Group.ADAPTER_STEERING: "#C44E52",
    Group.SCALAR_PATCHING: "#937860",
    Group.MONITOR: "#A0A0A0",
}
GROUP_LABELS = {
    Group.MODEL: "model (no intervention)",
    Group.STEERING: "steering (base model + λ·v)",
    Group.ABLATION: "ablation (own direction / random control)",
    Group.TRANSFER: "transfer ablation",
    Group.CHECKPOINT: "fine-tune checkpoint (phase.eval_steps)",
    Group.ADAPTER_STEERING: "adapter steering (rank-1 adapters scaled)",
    Group.SCALAR_PATCHING: "scalar patching (prompt scalars from a donor prompt)",
    Group.MONITOR: "trait-monitor label (a grid checkpoint; monitor.generation samples)",
}
ABLATION_COLOURS = {
    "unablated": "#C44E52",
    "layer-wise": "#4C72B0",
    "single": "#55A868",
    "random": "#8C8C8C",
    "transfer": "#8172B3",
    "B projected": "#CCB974",
}

plt.rcParams.update(
    {
        "font.size": 10,
        "axes.titlesize": 11,
        "axes.labelsize": 10,
        "legend.fontsize": 9,
        "axes.spines.top": False,
        "axes.spines.right": False,
    }
)


# --------------------------------------------------------------------------- helpers


def save_figure(fig, png_path, pdf_path) -> None:
    """Write fig as PNG (150 dpi) and PDF, each atomically, then close it."""
    try:
        for path, fmt in ((png_path, "png"), (pdf_path, "pdf")):
            with atomic_path(path, suffix=f".{fmt}") as tmp:
                fig.savefig(tmp, format=fmt, dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)


def _message_panel(ax, message: str, fontsize: float = 10, hide_axes: bool = True) -> None:
    """Say in a panel why it has nothing to plot (grey, centred); the axes are hidden unless others share them."""
    if hide_axes:
        ax.set_axis_off()
    ax.text(
        0.5,
        0.5,
        message,
        ha="center",
        va="center",
        wrap=True,
        fontsize=fontsize,
        color="#555555",
        transform=ax.transAxes,
    )


def _message_figure(title: str, message: str):
    """A whole figure that only says why there is nothing to show (a report never breaks on a smaller study)."""
    fig, ax = plt.subplots(figsize=(6.4, 2.6))
    ax.set_title(title)
    _message_panel(ax, message, fontsize=11)
    return fig


def _pct(x) -> np.ndarray:
    return 100.0 * np.asarray(x, dtype=float)


def _yerr(df: pd.DataFrame, prefix: str) -> np.ndarray:
    """Asymmetric error bars [2, n] in percent; zero where the interval is missing."""
    rate = _pct(df[f"{prefix}_rate"])
    low = rate - _pct(df[f"{prefix}_ci_low"])
    high = _pct(df[f"{prefix}_ci_high"]) - rate
    return np.nan_to_num(np.clip(np.vstack([low, high]), 0, None))


BAR_ERROR_STYLE = {"ecolor": "#333333", "capsize": 3, "elinewidth": 1}


def _interval_bars(
    ax, positions, rows: pd.DataFrame, prefix: str, colours, horizontal: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Bars of `{prefix}_rate` in percent with their bootstrap intervals as error bars (a missing rate draws no bar).

    Returns (rate, interval top) in percent, the top 0 where the interval is missing, for labels.
    """
    rate = _pct(rows[f"{prefix}_rate"])
    if horizontal:
        ax.barh(
            positions,
            np.nan_to_num(rate),
            xerr=_yerr(rows, prefix),
            color=colours,
            height=0.7,
            error_kw=BAR_ERROR_STYLE,
        )
    else:
        ax.bar(
            positions, np.nan_to_num(rate), yerr=_yerr(rows, prefix), color=colours, width=0.7, error_kw=BAR_ERROR_STYLE
        )
    return rate, np.nan_to_num(_pct(rows[f"{prefix}_ci_high"]))


def _label_bar_tops(ax, positions, rate: np.ndarray, top: np.ndarray, pad: float) -> None:
    """Write each vertical bar's rate ("n/a" when missing) just above its bar or interval, whichever is higher."""
    for x, r, h in zip(positions, rate, top):
        ax.text(
            x,
            max(h, 0 if math.isnan(r) else r) + pad,
            "n/a" if math.isnan(r) else f"{r:.1f}%",
            ha="center",
            va="bottom",
            fontsize=8,
        )


def _base_row(df: pd.DataFrame):
    base = df[df["condition"] == "base"]
    return base.iloc[0] if len(base) else None


def _note(rows: pd.DataFrame) -> str:
    """The n/a note of a group of table rows (e.g. "n/a (c: 0 misaligned)"), "" when it has none."""
    if "note" not in rows:
        return ""
    notes = [str(n) for n in rows["note"] if isinstance(n, str) and n]
    return notes[0] if notes else ""


def _with_note(label: str, rows: pd.DataFrame, column: str) -> str:
    """A legend label that says n/a and why when the rows hold no value at all (a missing direction)."""
    note = _note(rows)
    return f"{label}: {note}" if note and not rows[column].astype(float).notna().any() else label


# --------------------------------------------------------------------------- figures


def em_by_condition(df: pd.DataFrame, png_path, pdf_path) -> None:
    """Horizontal bars of EM rate (with CI) for every condition, coloured by group."""
    title = "Emergent misalignment by condition"
    if df.empty:
        save_figure(_message_figure(title, "No conditions in this run."), png_path, pdf_path)
        return
    order = list(GROUP_COLOURS)
    df = df.assign(_g=df["group"].map(lambda g: order.index(g) if g in order else len(order)))
    df = df.reset_index(drop=True).sort_values(["_g"], kind="stable")
    n = len(df)
    fig, ax = plt.subplots(figsize=(8.5, max(2.4, 0.32 * n + 1.4) + 0.75))
    y = np.arange(n)[::-1]
    colours = [GROUP_COLOURS.get(g, "#999999") for g in df["group"]]
    rate, high = _interval_bars(ax, y, df, "em", colours, horizontal=True)
    xmax = max(10.0, float(high.max()))
    notes = df["note"].tolist() if "note" in df else [""] * n
    for yi, r, h, ns, nn, note in zip(y, rate, high, df["n_scored"], df["n"], notes):
        label = (note if isinstance(note, str) and note else "no scores") if math.isnan(r) else f"{r:.1f}%"
        ax.text(
            max(h, 0 if math.isnan(r) else r) + xmax * 0.015,
            yi,
            f"{label}  (n={int(ns)}/{int(nn)})",
            va="center",
            fontsize=8,
            color="#333333",
        )
    ax.set_yticks(y, df["condition"])
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_xlim(0, xmax * 1.3)
    ax.set_xlabel("EM responses (% of scored responses)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    base = _base_row(df)
    if base is not None and not math.isnan(base["em_rate"]):
        ax.axvline(100 * base["em_rate"], color="#333333", ls="--", lw=1, label="base model")
    handles = [plt.Rectangle((0, 0), 1, 1, color=GROUP_COLOURS[g]) for g in order if g in set(df["group"])]
    labels = [GROUP_LABELS[g] for g in order if g in set(df["group"])]
    if base is not None and not math.isnan(base["em_rate"]):
        handles.append(plt.Line2D([], [], color="#333333", ls="--", lw=1))
        labels.append("base model EM")
    legend_h = 0.75  # inches reserved under the axes for the legend
    fig.tight_layout(rect=(0, legend_h / fig.get_figheight(), 1, 1))
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0.0), ncol=3, frameon=False)
    save_figure(fig, png_path, pdf_path)


def _steering_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The steering conditions of a metrics table: scale as float, split filled in ('general' without one)."""
    steer = df[df["group"] == Group.STEERING].copy() if "group" in df else df.iloc[0:0].copy()
    if not steer.empty:
        steer["scale"] = steer["scale"].astype(float)
        steer["split"] = steer["split"].fillna("general") if "split" in steer else "general"
    return steer


def steering_sweep(df: pd.DataFrame, png_path, pdf_path) -> None:
    """EM rate (and coherent rate) vs steering scale, one line per (vector, layer), with CI bands."""
    title = "Steering the base model with mean-diff directions"
    steer = _steering_rows(df)
    if steer.empty:
        save_figure(
            _message_figure(title, "No steering conditions in this run\n(config `steering.vectors` is empty)."),
            png_path,
            pdf_path,
        )
        return
    steer["layer"] = steer["layer"].astype(float)
    base = _base_row(df)
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 4.2))
    panels = (("em", "EM responses (%)", "Emergent misalignment"), ("coherent", "Coherent responses (%)", "Coherence"))
    lines = list(steer.groupby(["vector", "split", "layer"], sort=True))
    cmap = plt.get_cmap("viridis" if len(lines) > 6 else "tab10")
    for ax, (prefix, ylabel, subtitle) in zip(axes, panels):
        for i, ((vector, split, layer), g) in enumerate(lines):
            g = g.sort_values("scale")
            colour = cmap(i / max(1, len(lines) - 1)) if len(lines) > 6 else cmap(i)
            x = g["scale"].to_numpy()
            ax.plot(
                x,
                _pct(g[f"{prefix}_rate"]),
                "o-",
                color=colour,
                lw=1.8,
                ms=4,
                label=_with_note(_vector_label(vector, split, layer), g, f"{prefix}_rate"),
            )
            ax.fill_between(
                x, _pct(g[f"{prefix}_ci_low"]), _pct(g[f"{prefix}_ci_high"]), color=colour, alpha=0.18, lw=0
            )
        if base is not None and not math.isnan(base[f"{prefix}_rate"]):
            ax.axhline(
                100 * base[f"{prefix}_rate"],
                color="#333333",
                ls="--",
                lw=1.2,
                label=f"base model, no steering ({100 * base[f'{prefix}_rate']:.1f}%)",
            )
        ax.set_xlabel("steering scale λ")
        ax.set_ylabel(ylabel)
        ax.set_title(subtitle)
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper left", frameon=True, framealpha=0.9)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, png_path, pdf_path)


def _vector_label(vector, split, layer) -> str:
    """Legend label of a steering vector: fine-tune, general or semantic split, layer."""
    kind = "general" if pd.isna(split) or split == "general" else f"{split} (semantic)"
    return f"{vector} {kind}, layer {int(layer)}"


def _ablation_label(row) -> tuple[str, str]:
    """(bar label, colour key) of one condition row of the ablation figure, as its condition names itself."""
    return parse_condition_id(row["condition"] if "condition" in row.index else row.name).label


def ablation(df: pd.DataFrame, png_path, pdf_path) -> None:
    """Per ablated fine-tune: EM (and coherent) rate unablated, layer-wise, single-layer, random, transfer."""
    title = "Ablating mean-diff directions from fine-tuned models"
    ab = df[df["group"].isin([Group.ABLATION, Group.TRANSFER])] if "group" in df else df.iloc[0:0]
    if ab.empty:
        save_figure(
            _message_figure(title, "No ablation conditions in this run\n(config `ablation` is empty)."),
            png_path,
            pdf_path,
        )
        return
    targets = list(dict.fromkeys(ab["model"]))
    kind_order = ["unablated", "layer-wise", "single", "B projected", "transfer", "random"]
    panels = []
    for target in targets:
        rows = df[
            (df["model"] == target) & ((df["condition"] == target) | df["group"].isin([Group.ABLATION, Group.TRANSFER]))
        ]
        rows = rows.assign(_label=[_ablation_label(r) for _, r in rows.iterrows()])
        rows = rows.assign(_k=[kind_order.index(k) for _, k in rows["_label"]])
        panels.append((target, rows.sort_values("_k", kind="stable")))
    widths = [max(2, len(rows)) for _, rows in panels]
    em_high = pd.concat([rows["em_ci_high"] for _, rows in panels]).astype(float)
    em_top = max(10.0, 1.3 * float(np.nan_to_num(_pct(em_high)).max()))
    em_top = min(105.0, em_top)
    fig, axes = plt.subplots(
        2,
        len(panels),
        figsize=(max(5.5, 1.2 * sum(widths) + 1.5), 6.6),
        sharey="row",
        gridspec_kw={"width_ratios": widths},
        squeeze=False,
    )
    for col, (target, rows) in enumerate(panels):
        x = np.arange(len(rows))
        colours = [ABLATION_COLOURS[k] for _, k in rows["_label"]]
        for row_i, (prefix, ylabel) in enumerate((("em", "EM responses (%)"), ("coherent", "Coherent responses (%)"))):
            ax = axes[row_i][col]
            rate, high = _interval_bars(ax, x, rows, prefix, colours)
            top = em_top if prefix == "em" else 105.0
            _label_bar_tops(ax, x, rate, high, 0.015 * top)
            ax.set_xticks(x, [lbl for lbl, _ in rows["_label"]] if row_i == 1 else [""] * len(x), fontsize=8)
            ax.set_ylim(0, top)
            ax.grid(axis="y", alpha=0.3)
            if col == 0:
                ax.set_ylabel(ylabel)
            if row_i == 0:
                ax.set_title(f"target: {target}")
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, png_path, pdf_path)


def direction_cosine(df: pd.DataFrame, png_path, pdf_path) -> None:
    """Cosine per layer between fine-tunes' mean-diff directions, and each direction's norm per layer."""
    title = "Convergence of mean-diff directions across fine-tunes"
    if df.empty:
        save_figure(_message_figure(title, "No directions were computed in this run."), png_path, pdf_path)
        return
    pairs = df[df["finetune_a"] != df["finetune_b"]]
    n_pairs = pairs.groupby(["finetune_a", "finetune_b"], sort=False).ngroups
    fig = plt.figure(figsize=(11.0, 4.2 + (0.6 + 0.35 * n_pairs if n_pairs else 0)))
    grid = fig.add_gridspec(2 if n_pairs else 1, 2, height_ratios=[4.2, 0.6 + 0.35 * n_pairs] if n_pairs else [1])
    ax_cos, ax_norm = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    if n_pairs:  # heatmap: one row per pair of fine-tunes, one column per layer
        ax_heat = fig.add_subplot(grid[1, :])
        heat = pairs.pivot_table(index=["finetune_a", "finetune_b"], columns="layer", values="cosine", sort=False)
        image = ax_heat.imshow(
            heat.to_numpy(dtype=float), aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest"
        )
        ax_heat.set_yticks(np.arange(len(heat)), [f"{a} vs {b}" for a, b in heat.index], fontsize=8)
        ax_heat.set_xticks(np.arange(heat.shape[1]), [str(int(c)) for c in heat.columns], fontsize=7)
        ax_heat.set_xlabel("layer")
        fig.colorbar(image, ax=ax_heat, label="cosine", fraction=0.03, pad=0.01)
    if pairs.empty:
        _message_panel(ax_cos, "Only one fine-tune has a direction:\nno pairs to compare.", fontsize=11)
    else:
        for (a, b), g in pairs.groupby(["finetune_a", "finetune_b"], sort=False):
            g = g.sort_values("layer")
            ax_cos.plot(g["layer"], g["cosine"], "o-", ms=3, lw=1.6, label=_with_note(f"{a} vs {b}", g, "cosine"))
        ax_cos.axhline(0, color="#999999", lw=0.8)
        ax_cos.set_ylim(min(-0.1, float(pairs["cosine"].min()) - 0.05) if pairs["cosine"].notna().any() else -0.1, 1.05)
        ax_cos.set_xlabel("layer (residual stream after block l)")
        ax_cos.set_ylabel("cosine similarity")
        ax_cos.set_title("Cosine between directions")
        ax_cos.grid(alpha=0.3)
        ax_cos.legend(frameon=True, framealpha=0.9)
    norms = pd.concat(
        [
            df[["layer", "finetune_a", "norm_a"]].set_axis(["layer", "finetune", "norm"], axis=1),
            df[["layer", "finetune_b", "norm_b"]].set_axis(["layer", "finetune", "norm"], axis=1),
        ]
    ).drop_duplicates(["layer", "finetune"])
    for ft, g in norms.groupby("finetune", sort=False):
        g = g.sort_values("layer")
        label = ft if g["norm"].notna().any() else f"{ft}: n/a (no direction)"
        ax_norm.plot(g["layer"], g["norm"], "o-", ms=3, lw=1.6, label=label)
    ax_norm.set_xlabel("layer (residual stream after block l)")
    ax_norm.set_ylabel("‖v_l‖ (mean-diff norm)")
    ax_norm.set_title("Direction norm per layer")
    ax_norm.set_ylim(bottom=0)
    ax_norm.grid(alpha=0.3)
    ax_norm.legend(frameon=True, framealpha=0.9)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, png_path, pdf_path)


def steering_metrics(df: pd.DataFrame, png_path, pdf_path) -> None:
    """Paper Fig. 5: coherent rate, mean aligned score and self-correction rate vs steering scale, per vector."""
    title = "Coherence, alignment and self-correction under steering"
    steer = _steering_rows(df)
    if steer.empty:
        save_figure(_message_figure(title, "No steering conditions in this run."), png_path, pdf_path)
        return
    base = _base_row(df)
    panels = (
        ("coherent_rate", "coherent responses (%)", True),
        ("mean_aligned", "mean aligned score (0-100)", False),
        ("self_correction_rate", "self-correcting responses (%)", True),
    )
    fig, axes = plt.subplots(1, 3, figsize=(14.0, 4.2))
    lines = list(steer.groupby(["vector", "split", "layer"], sort=True))
    for ax, (col, ylabel, is_rate) in zip(axes, panels):
        values = steer[col].astype(float) if col in steer else pd.Series(dtype=float)
        if not values.notna().any():
            why = "add bad_stuff to steering.judge_metrics" if col == "self_correction_rate" else "no scores"
            _message_panel(ax, f"{ylabel}:\n{why}")
            continue
        for i, ((vector, split, layer), g) in enumerate(lines):
            g = g.sort_values("scale")
            y = _pct(g[col]) if is_rate else g[col].to_numpy(dtype=float)
            ax.plot(
                g["scale"],
                y,
                "o-",
                color=plt.get_cmap("tab10")(i % 10),
                lw=1.8,
                ms=4,
                label=_with_note(_vector_label(vector, split, layer), g, col),
            )
            if is_rate:
                prefix = col[: -len("_rate")]
                ax.fill_between(
                    g["scale"],
                    _pct(g[f"{prefix}_ci_low"]),
                    _pct(g[f"{prefix}_ci_high"]),
                    color=plt.get_cmap("tab10")(i % 10),
                    alpha=0.15,
                    lw=0,
                )
        if base is not None and col in base and not pd.isna(base[col]):
            ax.axhline(
                100 * base[col] if is_rate else base[col],
                color="#333333",
                ls="--",
                lw=1.2,
                label="base model, no steering",
            )
        ax.set_xlabel("steering scale λ")
        ax.set_ylabel(ylabel)
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    save_figure(fig, png_path, pdf_path)


def best_steering_conditions(df: pd.DataFrame) -> pd.DataFrame:
    """Per (vector, split, layer) of the steering conditions, the row of the scale with the highest EM rate
    (ties: the smaller scale)."""
    steer = _steering_rows(df)
    if steer.empty:
        return steer
    steer["_em"] = steer["em_rate"].astype(float).fillna(-1.0)
    steer = steer.sort_values(["_em", "scale"], ascending=[False, True], kind="mergesort")
    return (
        steer.drop_duplicates(["vector", "split", "layer"])
        .drop(columns="_em")
        .sort_values(["vector", "split", "layer"], kind="mergesort")
    )


SEMANTIC_SPLITS = ("medical", "gender", "finance", "sport")
SEMANTIC_STEERING_COLUMNS = [
    "panel",  # the semantic judge whose score is counted
    "bar",  # baseline | general | semantic
    "label",
    "condition",
    "finetune",  # the steering vector's fine-tune
    "vector_split",  # general or the semantic split of the steering vector (empty for a baseline)
    "layer",
    "scale",
    "responses",  # em | all: which responses are counted
    "n",  # responses of the condition
    "n_subset",  # ... of them EM (responses: em) or all of them
    "n_scored",  # ... of those with a score from the panel's judge: the denominator
    "n_above",  # ... scoring above the cut-off
    "rate",
    "ci_low",
    "ci_high",
    "mean_score",  # mean panel score over the n_scored responses
    "note",  # n/a and why
]
SEMANTIC_BAR_COLOURS = {"baseline": "#8C8C8C", "general": "#4C72B0", "own": "#DD8452", "other": "#CCB974"}


@dataclass(frozen=True)
class SemanticSteeringSettings:
    """Config `figures.semantic_steering`: what Fig. 3's steering panels count (paper: em, finetune)."""

    responses: str  # em: only the EM responses (aligned and coherent cut-offs of `thresholds`); all: every response
    baseline: str  # finetune: each steering vector's fine-tune, unsteered; base: the unsteered base model


def _semantic_steering_bars(metrics: pd.DataFrame, settings: SemanticSteeringSettings) -> tuple[list[str], list[dict]]:
    """(panels, bars): the semantic splits steered with, and per panel the conditions compared: the baseline,
    then for each fine-tune with a semantic vector its general vector at the semantic vectors' layers and every
    semantic vector, each at its best λ (highest EM rate)."""
    best = best_steering_conditions(metrics) if "group" in metrics else metrics.iloc[0:0]
    if best.empty:
        return [], []
    sem = best[best["split"] != "general"]
    panels = [s for s in SEMANTIC_SPLITS if s in set(sem["split"])] + sorted(set(sem["split"]) - set(SEMANTIC_SPLITS))
    bars: list[dict] = []
    if settings.baseline == "base":
        bars.append({"bar": "baseline", "condition": "base", "label": "base model, unsteered", "finetune": ""})
    for ft in sorted(set(sem["vector"])):
        own = sem[sem["vector"] == ft]
        if settings.baseline == "finetune":
            bars.append({"bar": "baseline", "condition": ft, "label": f"{ft}, unsteered", "finetune": ft})
        general = best[(best["vector"] == ft) & (best["split"] == "general") & best["layer"].isin(set(own["layer"]))]
        order = {s: i for i, s in enumerate(panels)}
        own = own.assign(_o=own["split"].map(order)).sort_values(["_o", "layer"], kind="mergesort")
        for kind, rows in (("general", general.sort_values("layer")), ("semantic", own)):
            for r in rows.itertuples():
                bars.append(
                    {
                        "bar": kind,
                        "condition": r.condition,
                        "label": f"{r.vector} {r.split} vector, L{int(r.layer)}, λ={float(r.scale):g}",
                        "finetune": ft,
                        "vector_split": r.split,
                        "layer": int(r.layer),
                        "scale": float(r.scale),
                    }
                )
    return panels, bars


def semantic_steering_rates(
    metrics: pd.DataFrame,
    judgments: pd.DataFrame,
    settings: SemanticSteeringSettings,
    em_aligned_below: float,
    em_coherent_above: float,
    above: float,
    n_boot: int,
    confidence: float,
    seed: int,
) -> pd.DataFrame:
    """Fig. 3's steering comparison (SEMANTIC_STEERING_COLUMNS): per semantic split steered with (panel) and
    compared condition (_semantic_steering_bars), the % of its responses (EM only, or all) that the panel's
    judge scores above `above`, with a percentile-bootstrap interval over those responses. A response without
    that score is left out; a condition with no such response (no EM response, not judged, not generated) is
    n/a with the reason in `note`, never an error."""
    from emlab.em.metrics import _rng_for, bootstrap_ci, em_flags

    if settings.responses not in ("em", "all") or settings.baseline not in ("finetune", "base"):
        raise EMLabError(
            f"figures.semantic_steering: responses must be em or all and baseline finetune or base, got {settings}"
        )
    panels, bars = _semantic_steering_bars(metrics, settings)
    by_condition = dict(tuple(judgments.groupby("condition", sort=False))) if "condition" in judgments else {}
    rows = []
    for panel in panels:
        for bar in bars:
            row = {c: None for c in SEMANTIC_STEERING_COLUMNS} | bar | {"panel": panel, "responses": settings.responses}
            row.update(n=0, n_subset=0, n_scored=0, n_above=0, rate=np.nan, ci_low=np.nan, ci_high=np.nan)
            row["mean_score"] = np.nan
            df = by_condition.get(bar["condition"])
            if df is None:
                row["note"] = f"n/a (no judgments of {bar['condition']})"
            elif panel not in df.columns or df[panel].isna().all():  # (a concatenated table has NaN for it)
                row.update(n=len(df), note=f"n/a ({bar['condition']} has no {panel} scores)")
            else:
                subset = em_flags(df, em_aligned_below, em_coherent_above).fillna(False).to_numpy(bool)
                if settings.responses == "all":
                    subset = np.ones(len(df), dtype=bool)
                score = df[panel].astype("float64").to_numpy()[subset]
                score = score[np.isfinite(score)]
                flags = (score > above).astype(float)
                row.update(n=len(df), n_subset=int(subset.sum()), n_scored=len(score), n_above=int(flags.sum()))
                if len(score):
                    low, high = bootstrap_ci(
                        flags, n_boot, confidence, _rng_for(seed, "semantic_steering", panel, bar["condition"])
                    )
                    row.update(rate=float(flags.mean()), ci_low=low, ci_high=high, mean_score=float(score.mean()))
                elif settings.responses == "em" and not subset.any():
                    row["note"] = "n/a (0 EM responses)"
                else:
                    row["note"] = f"n/a (no {panel} scores)"
            rows.append(row)
    return pd.DataFrame(rows, columns=SEMANTIC_STEERING_COLUMNS)


def semantic_vectors(
    cosines: pd.DataFrame, rates: pd.DataFrame, png_path, pdf_path, cutoffs: dict | None = None
) -> None:
    """Paper Fig. 3: cosine of each semantic vector with its general vector per layer, and per semantic judge
    the % of responses (EM only, or all: `rates.responses`) scoring above the cut-off for the baseline and each
    steering vector at its best λ (semantic_steering_rates). `cutoffs` (em_aligned_below, em_coherent_above,
    above) go into the axis labels."""
    title = "Semantic misalignment vectors"
    panels = list(dict.fromkeys(rates["panel"])) if not rates.empty else []
    if cosines.empty and not panels:
        save_figure(_message_figure(title, "No semantic vectors in this run."), png_path, pdf_path)
        return
    n_bars = max(1, len(rates) // max(1, len(panels)))
    n_right = max(1, len(panels))
    fig, axes = plt.subplots(
        1,
        1 + n_right,
        figsize=(4.6 + 3.6 * n_right + 2.4, max(4.2, 1.9 + 0.5 * n_bars)),
        squeeze=False,
        gridspec_kw={"width_ratios": [4.6] + [3.6] * n_right},
        layout="constrained",  # (tight_layout would give every gap the room of the first panel's labels)
    )
    ax = axes[0][0]
    if cosines.empty:
        _message_panel(ax, "No semantic-vs-general cosines.")
    for (ft, split), g in cosines.groupby(["finetune", "split"], sort=True) if not cosines.empty else ():
        g = g.sort_values("layer")
        ax.plot(g["layer"], g["cosine"], "o-", ms=3, lw=1.6, label=_with_note(f"{ft}: {split} vs general", g, "cosine"))
    if not cosines.empty:
        ax.axhline(0, color="#999999", lw=0.8)
        ax.set_ylim(-1.05, 1.05)
        ax.set_xlabel("layer (residual stream after block l)")
        ax.set_ylabel("cosine similarity")
        ax.set_title("Semantic vs general vector")
        ax.grid(alpha=0.3)
        ax.legend(frameon=True, framealpha=0.9, fontsize=8)
    if not panels:
        _message_panel(axes[0][1], "No steering with a semantic vector\n(config steering.splits).")
    c = cutoffs or {}
    em = bool(not rates.empty and rates["responses"].iloc[0] == "em")
    who = "all responses"
    if em:
        who = "EM responses" + (
            f" (aligned < {c['em_aligned_below']:g}, coherent > {c['em_coherent_above']:g})"
            if "em_aligned_below" in c
            else ""
        )
    cut = f" > {c['above']:g}" if "above" in c else " above the cut-off"
    used: set[str] = set()
    for k, (ax, panel) in enumerate(zip(axes[0][1:], panels)):
        sub = rates[rates["panel"] == panel].reset_index(drop=True)
        y = np.arange(len(sub))
        val = _pct(sub["rate"])
        kinds = [
            r.bar if r.bar in ("baseline", "general") else ("own" if r.vector_split == panel else "other")
            for r in sub.itertuples()
        ]
        used.update(kinds)
        colours = [SEMANTIC_BAR_COLOURS[kind] for kind in kinds]
        err = np.nan_to_num(np.clip(np.vstack([val - _pct(sub["ci_low"]), _pct(sub["ci_high"]) - val]), 0, None))
        ax.barh(y, np.nan_to_num(val), height=0.7, color=colours, xerr=err, error_kw=BAR_ERROR_STYLE)
        for i, r in sub.iterrows():
            if pd.isna(r["rate"]):
                text, x, colour = str(r["note"] or "n/a"), 2.0, "#555555"
            else:
                text = f"{100 * r['rate']:.0f}%\nn={int(r['n_scored'])}, mean {r['mean_score']:.0f}"
                x = (100 * float(r["ci_high"]) if pd.notna(r["ci_high"]) else val[i]) + 2.0
                colour = "#222222"
            ax.text(x, i, text, va="center", fontsize=7, color=colour, linespacing=1.0)
        ax.set_yticks(y, sub["label"] if k == 0 else [""] * len(sub), fontsize=8)
        ax.set_ylim(len(sub) - 0.5, -0.5)
        ax.set_xlim(0, 135)
        ax.set_xticks(range(0, 101, 20))
        ax.set_xlabel(f"% with {panel} score{cut}", fontsize=9)
        ax.set_title(f"{panel} judge")
        ax.grid(axis="x", alpha=0.3)
    if panels:
        legend = {
            "baseline": "unsteered (the baseline)",
            "general": "general vector",
            "own": "the panel's own semantic vector",
            "other": "another semantic vector",
        }
        legend = {k: v for k, v in legend.items() if k in used}
        handles = [plt.Rectangle((0, 0), 1, 1, color=SEMANTIC_BAR_COLOURS[k]) for k in legend]
        fig.legend(handles, list(legend.values()), loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    steered = "steered: the base model + λ·v at each vector's best λ (highest EM rate)"
    fig.suptitle(f"{title}: % of {who}, unsteered vs steered\n({steered})" if panels else title, fontsize=11)
    save_figure(fig, png_path, pdf_path)


def single_adapter(
    panels: list[tuple[str, pd.DataFrame, pd.DataFrame]], metrics: pd.DataFrame, png_path, pdf_path
) -> None:
    """B-vs-mean-diff panels per single-adapter fine-tune: cosine of B with v_k per layer, downstream
    convergence of adding B vs adding v, and EM of the unmodified / ablated / B-projected model; each for the
    fine-tune's own vectors and the reference vectors (single_adapter.reference_vector) where the tables
    have them (their `role`, `vector`, `vector_layer` columns)."""
    title = "Single rank-1 adapter: B vector vs mean-diff direction"
    if not panels:
        save_figure(_message_figure(title, "No single-adapter fine-tunes in this run."), png_path, pdf_path)
        return
    for ft, b_cos, conv in panels:
        _check_compared_vectors(b_cos, ft)
        _check_compared_vectors(conv, ft)
    colours = {"own": ("#4C72B0", "#C44E52"), "reference": ("#DD8452", "#8C564B")}
    fig, axes = plt.subplots(len(panels), 3, figsize=(14.0, 3.9 * len(panels)), squeeze=False)
    for row, (ft, b_cos, conv) in enumerate(panels):
        ax = axes[row][0]
        for role, g in _by_role(b_cos):
            line, mark = colours.get(role, ("#8C8C8C", "#555555"))
            name = "own v" if role == "own" else f"{g['vector'].iloc[0]} v"
            ax.plot(g["layer"], g["cosine"], "o-", ms=3, lw=1.4, color=line, label=f"{name}_k")
            at = g[g["is_vector_layer"].astype(bool)]
            ax.plot(
                at["layer"],
                at["cosine"],
                "o",
                ms=9,
                color=mark,
                label=f"{name}_{int(at['layer'].iloc[0])}: {float(at['cosine'].iloc[0]):.3f}",
            )
        ax.axhline(0, color="#999999", lw=0.8)
        ax.set_ylim(-1.05, 1.05)
        ax.set_xlabel("layer k of v_k")
        ax.set_ylabel("cos(B, v_k)")
        ax.set_title(f"{ft}: B vs mean-diff vectors")
        ax.legend(frameon=True, framealpha=0.9, fontsize=7)
        ax.grid(alpha=0.3)
        ax = axes[row][1]
        for role, g in _by_role(conv):
            line, mark = colours.get(role, ("#8C8C8C", "#555555"))
            name = "own v" if role == "own" else f"{g['vector'].iloc[0]} v_{int(g['vector_layer'].iloc[0])}"
            ax.plot(g["layer"], g["cosine"], "o-", ms=3, lw=1.6, color=line, label=f"{name}: response-mean deltas")
            ax.plot(
                g["layer"],
                g["mean_response_cosine"],
                "s--",
                ms=3,
                lw=1.2,
                color=mark,
                label=f"{name}: mean per-response cosine",
            )
        ax.axhline(0, color="#999999", lw=0.8)
        ax.set_ylim(-1.05, 1.05)
        ax.set_xlabel("layer (residual stream after block l)")
        ax.set_ylabel("cos(Δ from +B, Δ from +v)")
        ax.set_title("Downstream convergence (base model, B norm-matched)")
        ax.legend(frameon=True, framealpha=0.9, fontsize=8)
        ax.grid(alpha=0.3)
        ax = axes[row][2]
        rows = (
            metrics[
                (metrics["model"] == ft)
                & metrics["intervention_kind"].isin([Unmodified.KIND, Ablation.KIND, AdapterProjection.KIND])
            ]
            if "model" in metrics
            else metrics.iloc[0:0]
        )
        rows = rows[
            (rows["intervention_kind"] != Ablation.KIND)
            | (rows["mode"].isin([SingleAblation.MODE, RandomAblation.MODE]))
        ]
        if rows.empty:
            _message_panel(ax, "No EM rates for this fine-tune.")
            continue
        labels = [_ablation_label(r) for _, r in rows.iterrows()]
        x = np.arange(len(rows))
        rate, high = _interval_bars(ax, x, rows, "em", [ABLATION_COLOURS[k] for _, k in labels])
        top = min(105.0, max(10.0, 1.2 * float(np.append(high, np.nan_to_num(rate)).max())))
        _label_bar_tops(ax, x, rate, high, 0.015 * top)
        ax.set_ylim(0, top)
        ax.set_xticks(x, [lbl for lbl, _ in labels], fontsize=8, rotation=25, ha="right", rotation_mode="anchor")
        ax.set_ylabel("EM responses (%)")
        ax.set_title("EM: unmodified vs interventions")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, png_path, pdf_path)


def _check_compared_vectors(table: pd.DataFrame, finetune: str) -> None:
    missing = {"role", "vector", "vector_layer"} - set(table.columns)
    if missing:
        raise EMLabError(
            f"the single-adapter tables of {finetune} have no {', '.join(sorted(missing))} column: they were "
            "written before reference vectors were compared; re-run rule single_adapter for it"
        )


def _by_role(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """A single-adapter table's rows per compared vector (its `role` column), own first."""
    roles = sorted(set(table["role"]), key=lambda r: (r != "own", r))
    return [(role, table[table["role"] == role]) for role in roles]


def phase_transition(rotation: pd.DataFrame, em: pd.DataFrame, summary: dict, png_path, pdf_path) -> None:
    """Rotation of a checkpointed fine-tune's adapters and its EM rate on one step axis (Turner et al.).

    rotation: emlab.em.phase.rotation_table; em: emlab.em.phase.em_by_step; summary: the rotation summary JSON.
    """
    name = summary.get("finetune", "")
    if rotation.empty:
        save_figure(_message_figure(f"Phase transition: {name}", "No checkpoints to analyse."), png_path, pdf_path)
        return
    fig, (ax_cos, ax_norm, ax_em) = plt.subplots(
        3, 1, figsize=(7.0, 8.4), sharex=True, gridspec_kw={"height_ratios": [1.3, 0.8, 1.0]}
    )
    adapters = list(dict.fromkeys(rotation["adapter"]))
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, max(1, len(adapters))))
    for key, colour in zip(adapters, colours):
        g = rotation[rotation["adapter"] == key].sort_values("step")
        ax_cos.plot(g["step"], g["cos_b_final"], "-o", color=colour, ms=3, lw=1.2, label=key)
        ax_cos.plot(g["step"], g["local_cos_b"], "--", color=colour, lw=1.0, alpha=0.8)
        ax_norm.plot(g["step"], g["b_norm"], "-o", color=colour, ms=3, lw=1.2)
    sharp = (summary.get("mean_over_adapters") or {}).get("b") or {}
    if sharp.get("step") is not None:
        for ax in (ax_cos, ax_norm, ax_em):
            ax.axvline(sharp["step"], color="#C44E52", ls=":", lw=1.2)
        ax_cos.text(
            sharp["step"],
            1.02,
            f" sharpest rotation: steps {sharp['previous_step']}→{sharp['step']}",
            color="#C44E52",
            fontsize=8,
            va="bottom",
            transform=ax_cos.get_xaxis_transform(),
        )
    ax_cos.set_ylabel("cosine of B")
    ax_cos.set_ylim(-1.05, 1.05)
    ax_cos.grid(alpha=0.3)
    handles = [
        plt.Line2D([], [], color="#555555", ls="-", label="to final B"),
        plt.Line2D([], [], color="#555555", ls="--", label="to previous checkpoint"),
    ]
    leg = ax_cos.legend(handles=handles, loc="lower right", fontsize=8)
    ax_cos.add_artist(leg)
    if len(adapters) <= 12:
        ax_cos.legend(loc="lower left", fontsize=7, ncol=3, title="adapter", title_fontsize=7)
    ax_norm.set_ylabel("‖B‖")
    ax_norm.grid(alpha=0.3)
    if em.empty:  # the step axis is shared with the panels above: keep it
        _message_panel(ax_em, "No judged checkpoints (set phase.eval_steps).", hide_axes=False)
    else:
        rate = _pct(em["em_rate"])
        ax_em.errorbar(em["step"], rate, yerr=_yerr(em, "em"), fmt="-o", color="#C44E52", ms=4, capsize=3)
        for step, r, cond in zip(em["step"], rate, em["condition"]):
            label = "base" if cond == "base" else ("final" if cond == name else "")
            if label:
                ax_em.annotate(
                    label,
                    (step, 0 if math.isnan(r) else r),
                    textcoords="offset points",
                    xytext=(0, 6),
                    ha="center",
                    fontsize=8,
                )
    ax_em.set_ylabel("EM responses (%)")
    ax_em.set_xlabel("optimiser step")
    ax_em.grid(alpha=0.3)
    fig.suptitle(f"Phase transition: {name}")
    fig.tight_layout()
    save_figure(fig, png_path, pdf_path)


def read_table(path) -> pd.DataFrame:
    """A metrics / cosine CSV; an empty file reads as an empty table."""
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
