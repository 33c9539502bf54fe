"""The model-organism study across base models (docs/cross-model.md, Turner et al.).

A config may run its fine-tunes ("recipes") on several base models; each
(model, recipe) has its results under the model's own root folder
(`<root>/metrics/em_by_condition.csv`, `<root>/phase/<recipe>/...`). This
module gathers them into two tables, one row per organism:

- `em_by_model`: EM and coherence rates (with their bootstrap intervals) of
  every (recipe, model), plus each base model unmodified (recipe `base`),
  with the model's family and size;
- `phase_steps`: for every checkpointed organism, the step of sharpest B
  rotation its rotation summary reports, and the EM rate at the judged
  checkpoints just before and after it.

Files are matched to their model by the id they carry (a `base_model` column
or key) when they carry one, else by the model root they sit under; never by
their position in the input list.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from emlab.core.atomic import write_csv
from emlab.core.errors import EMLabError
from emlab.plan.models import MODEL_ID

log = logging.getLogger(__name__)

BASE = "base"  # the recipe name of a base model's own row (its condition id in em_by_condition)
RATE_COLUMNS = ["em_rate", "em_ci_low", "em_ci_high", "coherent_rate", "coherent_ci_low", "coherent_ci_high"]
REQUIRED_COLUMNS = ["condition", "n", "n_scored", *RATE_COLUMNS]
CARRIED_COLUMNS = [  # written NaN / "" when a model's table lacks them
    "n_unscored",
    "self_correction_rate",
    "self_correction_ci_low",
    "self_correction_ci_high",
    "mean_aligned",
    "mean_coherent",
]
ORGANISM_COLUMNS = ["recipe", "kind", "dataset", "model", "family", "size_b"]
EM_BY_MODEL_COLUMNS = [*ORGANISM_COLUMNS, "condition", "n", "n_scored", *RATE_COLUMNS, *CARRIED_COLUMNS]
PHASE_COLUMNS = [
    *ORGANISM_COLUMNS,
    "final_step",
    "checkpoint_every",
    "n_checkpoints",
    "n_adapters",
    "transition_step",
    "previous_step",
    "local_cos_b",
    "a_transition_step",
    "a_previous_step",
    "local_cos_a",
    "adapters_at_transition",
    "adapter_step_min",
    "adapter_step_max",
    "em_before_step",
    "em_before",
    "em_before_ci_low",
    "em_before_ci_high",
    "em_after_step",
    "em_after",
    "em_after_ci_low",
    "em_after_ci_high",
    "em_jump_previous_step",
    "em_jump_step",
    "em_jump",
]
STEP_SUFFIX = re.compile(r"__step\d+$")


# --- the plan: models and recipes -------------------------------------------------------


def check_plan(models: Mapping, recipes: Mapping) -> tuple[dict, dict]:
    """The rule's params.models {key: {family, size_b, root}} and params.recipes {name: {models, kind, dataset}},
    checked; every recipe names known models and none is called `base`."""
    models = {str(k): dict(v) for k, v in dict(models or {}).items()}
    recipes = {str(k): dict(v) for k, v in dict(recipes or {}).items()}
    if not models:
        raise EMLabError("cross-model tables: params.models is empty; name at least one base model")
    for key, spec in models.items():
        missing = [k for k in ("family", "size_b", "root") if k not in spec]
        if missing:
            raise EMLabError(f"cross-model tables: base model {key!r} has no {missing} in params.models")
        size = spec["size_b"]
        if size is not None and (not isinstance(size, (int, float)) or isinstance(size, bool) or not size > 0):
            raise EMLabError(
                f"cross-model tables: base model {key!r} has size_b {size!r}; give a positive number or null"
            )
    for name, spec in recipes.items():
        if name == BASE:
            raise EMLabError(f"cross-model tables: a fine-tune may not be called {BASE!r} (the base models' own rows)")
        unknown = sorted(set(map(str, spec.get("models") or [])) - set(models))
        if unknown:
            raise EMLabError(f"cross-model tables: fine-tune {name!r} runs on unknown base model(s) {unknown}")
    return models, recipes


def model_order(models: Mapping) -> list[str]:
    """Model keys by family, then size, then key (unknown family or size last): a table order independent of the
    config's."""

    def key(k):
        family, size = models[k].get("family"), models[k].get("size_b")
        return (not family, str(family or ""), size is None, size if size is not None else 0.0, k)

    return sorted(models, key=key)


def _abs(path) -> tuple[str, ...]:
    return Path(os.path.abspath(os.path.normpath(str(path)))).parts


def model_of_path(path, models: Mapping) -> str | None:
    """The model whose root holds `path` (the deepest root when roots nest, e.g. `results` and
    `results/models/x`), None when no root does."""
    parts = _abs(path)
    best, depth = None, -1
    for key, spec in models.items():
        root = _abs(spec["root"])
        if parts[: len(root)] == root and len(root) > depth:
            best, depth = key, len(root)
    return best


def _identify(path, carried: str | None, models: Mapping, what: str) -> str:
    """The model a file belongs to: the id it carries, checked against the root it sits under."""
    by_root = model_of_path(path, models)
    if carried is not None:
        carried = str(carried)
        if carried not in models:
            raise EMLabError(f"{what} {path} names base model {carried!r}, which is not in the plan {sorted(models)}")
        if by_root is not None and by_root != carried:
            raise EMLabError(
                f"{what} {path} names base model {carried!r} but sits under the root of {by_root!r} "
                f"({models[by_root]['root']}); delete it and re-run the rule that writes it"
            )
        return carried
    if by_root is None:
        roots = ", ".join(f"{k}: {models[k]['root']}" for k in models)
        raise EMLabError(f"{what} {path} lies under no base model's root ({roots}) and names no {MODEL_ID}")
    return by_root


def _carried_id(table: pd.DataFrame, path, what: str) -> str | None:
    """The model key a per-model table carries in its `base_model` column; None without the column."""
    if MODEL_ID not in table.columns:
        return None
    ids = sorted({str(v) for v in table[MODEL_ID].dropna().unique()})
    if len(ids) != 1:
        raise EMLabError(f"{what} {path}: expected one {MODEL_ID} in column {MODEL_ID!r}, found {ids or 'none'}")
    return ids[0]


def _missing_models(found: Mapping, expected: Iterable[str], models: Mapping, relative: str, what: str) -> None:
    missing = [k for k in expected if k not in found]
    if missing:
        raise EMLabError(
            f"{what}: no file for base model(s) "
            + ", ".join(f"{k!r} (expected {Path(models[k]['root']) / relative})" for k in missing)
            + "; add the model's file to the rule's input"
        )


# --- em_by_model ------------------------------------------------------------------------


def read_em_tables(paths: Iterable, models: Mapping) -> dict[str, tuple[str, pd.DataFrame]]:
    """Each model's em_by_condition table, keyed by model: model -> (path, table). Every model needs one."""
    out: dict[str, tuple[str, pd.DataFrame]] = {}
    for path in paths:
        try:
            table = pd.read_csv(path, keep_default_na=True)
        except (OSError, pd.errors.EmptyDataError) as exc:
            raise EMLabError(f"cannot read EM table {path}: {exc}") from None
        missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
        if missing:
            raise EMLabError(f"EM table {path} lacks column(s) {missing}; re-run em_metrics")
        key = _identify(path, _carried_id(table, path, "EM table"), models, "EM table")
        if key in out:
            raise EMLabError(f"EM tables {out[key][0]} and {path} both belong to base model {key!r}")
        out[key] = (str(path), table)
    _missing_models(out, models, models, "metrics/em_by_condition.csv", "cross-model EM tables")
    return out


def _organism(recipe: str, spec: Mapping, key: str, model: Mapping) -> dict:
    size = model.get("size_b")
    return {
        "recipe": recipe,
        "kind": str(spec.get("kind") or ""),
        "dataset": str(spec.get("dataset") or ""),
        "model": key,
        "family": str(model.get("family") or ""),
        "size_b": float("nan") if size is None else float(size),
    }


def em_by_model(tables: Mapping[str, tuple[str, pd.DataFrame]], models: Mapping, recipes: Mapping) -> pd.DataFrame:
    """One row per (recipe, model) the plan runs, and per model unmodified (recipe `base`): rates and n.

    Rows: the base models first, then each recipe in the order of `recipes`; models by family, size, key.
    """
    rows = []
    plan = [(BASE, {"kind": BASE, "dataset": "", "models": list(models)})] + list(recipes.items())
    for recipe, spec in plan:
        runs_on = set(map(str, spec.get("models") or []))
        for key in model_order(models):
            if key not in runs_on:
                continue
            path, table = tables[key]
            hit = table[table["condition"].astype(str) == recipe]
            if hit.empty:
                raise EMLabError(
                    f"EM table {path} (base model {key!r}) has no row for condition {recipe!r}; "
                    "re-run em_metrics for that model"
                )
            r = hit.iloc[0]
            row = {**_organism(recipe, spec, key, models[key]), "condition": recipe}
            for col in ["n", "n_scored", *RATE_COLUMNS, *CARRIED_COLUMNS]:
                row[col] = r[col] if col in table.columns else float("nan")
            rows.append(row)
    df = pd.DataFrame(rows, columns=EM_BY_MODEL_COLUMNS)
    for col in ("n", "n_scored", "n_unscored"):
        df[col] = df[col].astype("Int64")
    return df


# --- phase_steps ------------------------------------------------------------------------


def read_phase_summaries(paths: Iterable, models: Mapping, recipes: Mapping) -> dict[tuple[str, str], dict]:
    """Rotation summaries (emlab.em.phase.phase_analysis) keyed by (model, recipe): the recipe is the
    `finetune` each carries, the model its `base_model` key or else the root it sits under."""
    out: dict[tuple[str, str], dict] = {}
    where: dict[tuple[str, str], str] = {}
    for path in paths:
        try:
            summary = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise EMLabError(f"cannot read rotation summary {path}: {exc}") from None
        recipe = summary.get("finetune")
        if not recipe:
            raise EMLabError(f"rotation summary {path} names no 'finetune'; re-run phase_rotation")
        key = _identify(path, summary.get(MODEL_ID), models, "rotation summary")
        _check_organism(path, key, str(recipe), recipes, "rotation summary")
        if (key, recipe) in where:
            raise EMLabError(f"rotation summaries {where[key, recipe]} and {path} are both of {recipe!r} on {key!r}")
        where[key, recipe] = str(path)
        out[key, str(recipe)] = summary
    return out


def _check_organism(path, key: str, recipe: str, recipes: Mapping, what: str) -> None:
    if recipe not in recipes:
        raise EMLabError(f"{what} {path} is of fine-tune {recipe!r}, which is not in the plan {sorted(recipes)}")
    if key not in set(map(str, recipes[recipe].get("models") or [])):
        raise EMLabError(f"{what} {path}: fine-tune {recipe!r} does not run on base model {key!r} in this plan")


def read_em_by_step(paths: Iterable, models: Mapping, recipes: Mapping) -> dict[tuple[str, str], pd.DataFrame]:
    """EM-by-step tables (emlab.em.phase.em_by_step) keyed by (model, recipe): the model from the root (or a
    `base_model` column), the recipe from the conditions the table holds (`<recipe>`, `<recipe>__step<N>`)."""
    out: dict[tuple[str, str], pd.DataFrame] = {}
    where: dict[tuple[str, str], str] = {}
    for path in paths:
        try:
            table = pd.read_csv(path)
        except pd.errors.EmptyDataError:
            table = pd.DataFrame(columns=["step", "condition", "em_rate", "em_ci_low", "em_ci_high"])
        except OSError as exc:
            raise EMLabError(f"cannot read EM-by-step table {path}: {exc}") from None
        missing = [c for c in ("step", "condition", "em_rate", "em_ci_low", "em_ci_high") if c not in table.columns]
        if missing:
            raise EMLabError(f"EM-by-step table {path} lacks column(s) {missing}; re-run figure_phase_transition")
        names = {STEP_SUFFIX.sub("", str(c)) for c in table["condition"]} - {BASE}
        if len(names) != 1:
            if not names:  # nothing judged but the base model: nothing to place on a step axis
                log.info("%s holds no judged checkpoint; skipped", path)
                continue
            raise EMLabError(f"EM-by-step table {path} mixes fine-tunes {sorted(names)}")
        recipe = names.pop()
        key = _identify(path, _carried_id(table, path, "EM-by-step table"), models, "EM-by-step table")
        _check_organism(path, key, recipe, recipes, "EM-by-step table")
        if (key, recipe) in where:
            raise EMLabError(f"EM-by-step tables {where[key, recipe]} and {path} are both of {recipe!r} on {key!r}")
        where[key, recipe] = str(path)
        out[key, recipe] = table.sort_values("step", kind="stable").reset_index(drop=True)
    return out


def _none_nan(value) -> float:
    return float("nan") if value is None else float(value)


def rotation_columns(summary: Mapping) -> dict:
    """The phase-transition numbers of one rotation summary: the step of sharpest mean B rotation (and A's),
    and how many adapters, each on its own, turned most at that same step."""
    mean = summary.get("mean_over_adapters") or {}
    b, a = mean.get("b") or {}, mean.get("a") or {}
    own_steps = [
        v["b"]["step"] for v in (summary.get("adapters") or {}).values() if (v.get("b") or {}).get("step") is not None
    ]
    step = b.get("step")
    return {
        "final_step": _none_nan(summary.get("final_step")),
        "checkpoint_every": _none_nan(summary.get("checkpoint_every")),
        "n_checkpoints": float(len(summary.get("checkpoint_steps") or [])),
        "n_adapters": _none_nan(summary.get("n_adapters")),
        "transition_step": _none_nan(step),
        "previous_step": _none_nan(b.get("previous_step")),
        "local_cos_b": _none_nan(b.get("local_cos_b")),
        "a_transition_step": _none_nan(a.get("step")),
        "a_previous_step": _none_nan(a.get("previous_step")),
        "local_cos_a": _none_nan(a.get("local_cos_a")),
        "adapters_at_transition": float(sum(s == step for s in own_steps)) if step is not None else float("nan"),
        "adapter_step_min": float(min(own_steps)) if own_steps else float("nan"),
        "adapter_step_max": float(max(own_steps)) if own_steps else float("nan"),
    }


def em_around(em: pd.DataFrame | None, previous_step: float, step: float) -> dict:
    """EM rate at the last judged step at or before `previous_step` and the first at or after `step`
    (the rotation happened between the two), and the largest rise between consecutive judged steps."""
    out = {c: float("nan") for c in PHASE_COLUMNS if c.startswith("em_")}
    if em is None or em.empty:
        return out
    em = em.dropna(subset=["em_rate"])
    if not math.isnan(previous_step):
        before = em[em["step"] <= previous_step]
        if len(before):
            r = before.iloc[-1]
            out.update(em_before_step=float(r["step"]), em_before=float(r["em_rate"]))
            out.update(em_before_ci_low=float(r["em_ci_low"]), em_before_ci_high=float(r["em_ci_high"]))
    if not math.isnan(step):
        after = em[em["step"] >= step]
        if len(after):
            r = after.iloc[0]
            out.update(em_after_step=float(r["step"]), em_after=float(r["em_rate"]))
            out.update(em_after_ci_low=float(r["em_ci_low"]), em_after_ci_high=float(r["em_ci_high"]))
    if len(em) >= 2:
        rise = np.diff(em["em_rate"].to_numpy(dtype=float))
        i = int(np.argmax(rise))
        out.update(
            em_jump_previous_step=float(em["step"].iloc[i]),
            em_jump_step=float(em["step"].iloc[i + 1]),
            em_jump=float(rise[i]),
        )
    return out


def phase_steps(
    summaries: Mapping[tuple[str, str], dict],
    em_steps: Mapping[tuple[str, str], pd.DataFrame],
    models: Mapping,
    recipes: Mapping,
) -> pd.DataFrame:
    """One row per checkpointed organism (a rotation summary, an EM-by-step table or both), in the order of
    `recipes`, then models by family and size."""
    rows = []
    for recipe, spec in recipes.items():
        for key in model_order(models):
            summary, em = summaries.get((key, recipe)), em_steps.get((key, recipe))
            if summary is None and em is None:
                continue
            rotation = rotation_columns(summary or {})
            if summary is None:
                rotation = {k: float("nan") for k in rotation}
            row = {**_organism(recipe, spec, key, models[key]), **rotation}
            row.update(em_around(em, rotation["previous_step"], rotation["transition_step"]))
            rows.append(row)
    df = pd.DataFrame(rows, columns=PHASE_COLUMNS)
    for col in PHASE_COLUMNS:  # steps and counts as integers (empty where unknown)
        if col.endswith("_step") or col.startswith(("n_", "adapter")) or col in ("checkpoint_every",):
            df[col] = df[col].astype("float64").round().astype("Int64")
    return df


# --- the rule's entry point -------------------------------------------------------------


def write_cross_model_tables(
    em_paths: Iterable,
    summary_paths: Iterable,
    em_step_paths: Iterable,
    models: Mapping,
    recipes: Mapping,
    em_by_model_path,
    phase_steps_path,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read every model's files (matched by name), write em_by_model.csv and phase_steps.csv."""
    models, recipes = check_plan(models, recipes)
    em = em_by_model(read_em_tables(list(em_paths), models), models, recipes)
    phase = phase_steps(
        read_phase_summaries(list(summary_paths), models, recipes),
        read_em_by_step(list(em_step_paths), models, recipes),
        models,
        recipes,
    )
    write_csv(em_by_model_path, em)
    write_csv(phase_steps_path, phase)
    for r in em.itertuples():
        log.info(
            "%s on %s (%s, %s B): EM %.1f%% [%.1f, %.1f], coherent %.1f%% (n=%s)",
            r.recipe,
            r.model,
            r.family or "family ?",
            "?" if math.isnan(r.size_b) else f"{r.size_b:g}",
            100 * r.em_rate,
            100 * r.em_ci_low,
            100 * r.em_ci_high,
            100 * r.coherent_rate,
            r.n_scored,
        )
    for r in phase.itertuples():
        log.info("%s on %s: sharpest B rotation at step %s", r.recipe, r.model, r.transition_step)
    return em, phase


# --- the figure -------------------------------------------------------------------------

FAMILY_COLOURS = {"qwen": "#4C72B0", "llama": "#DD8452", "gemma": "#55A868", "mistral": "#8172B3"}
OTHER_COLOURS = ["#C44E52", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974", "#64B5CD"]
NICE_SIZES = [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
LABEL_POINTS_UP_TO = 8  # a panel with at most this many models names each point (key and n)
NUDGE = 1.04  # fine-tuned points sit this factor right of their size, the unmodified base model as far left
METRICS = [("em", "EM responses (%)", "EM rate"), ("coherent", "coherent responses (%)", "coherence")]


def family_colours(families: Iterable[str]) -> dict[str, str]:
    """A fixed colour for the known families, the others from a spare palette in sorted order."""
    spare = itertools.cycle(OTHER_COLOURS)
    return {fam: FAMILY_COLOURS.get(fam.lower()) or next(spare) for fam in sorted(set(families))}


def _n_text(rows: pd.DataFrame) -> str:
    n = rows["n_scored"].dropna().astype(int)
    if n.empty:
        return "n = 0"
    return f"n = {n.min()}" if n.min() == n.max() else f"n = {n.min()}–{n.max()}"


@dataclass(frozen=True)
class SizeAxis:
    """The log size axis shared by every panel; models of unknown size sit right of a dotted separator."""

    low: float
    high: float
    has_unknown: bool
    sizes: tuple[float, ...]  # the distinct known sizes: the ticks where round ones would be too few

    @classmethod
    def of(cls, sizes: pd.Series) -> SizeAxis:
        known = sorted({float(s) for s in sizes.dropna()})
        low, high = (known[0], known[-1]) if known else (1.0, 1.0)
        return cls(low / 1.8, high * 1.8, bool(sizes.isna().any()), tuple(known))

    @property
    def unknown_x(self) -> float:
        return self.high * 2.2

    def x(self, rows: pd.DataFrame) -> np.ndarray:
        return rows["size_b"].astype(float).fillna(self.unknown_x).to_numpy()

    def apply(self, ax) -> None:
        from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

        ax.set_xscale("log")
        ax.set_xlim(self.low, self.unknown_x * 1.6 if self.has_unknown else self.high)
        ticks = [t for t in NICE_SIZES if self.low <= t <= self.high]
        if len(ticks) < 3 and 0 < len(self.sizes) <= 6:
            ticks = list(self.sizes)
        labels = [f"{t:g}B" for t in ticks]
        if self.has_unknown:
            ax.axvline(self.high, color="#999999", ls=":", lw=1)
            ticks, labels = ticks + [self.unknown_x], labels + ["size ?"]
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FixedFormatter(labels))
        ax.xaxis.set_minor_locator(NullLocator())


def _family_points(ax, rows: pd.DataFrame, bases: pd.DataFrame, prefix: str, colour: str, axis: SizeAxis, label: bool):
    """One family's fine-tuned models (filled, joined by a line over known sizes) and the same base models
    unmodified (open markers), each with its bootstrap interval."""
    from emlab.em.figures import _pct, _yerr

    nudge = NUDGE if len(bases) else 1.0
    rows = rows.assign(_x=axis.x(rows) * nudge).sort_values("_x", kind="stable")
    rate = _pct(rows[f"{prefix}_rate"])
    ax.errorbar(rows["_x"], rate, yerr=_yerr(rows, prefix), fmt="o", color=colour, ms=6, capsize=3, zorder=3)
    known = rows["size_b"].notna().to_numpy()
    if known.sum() >= 2:
        ax.plot(rows["_x"][known], rate[known], "-", color=colour, lw=1, alpha=0.6)
    if len(bases):
        ax.errorbar(
            axis.x(bases) / NUDGE,
            _pct(bases[f"{prefix}_rate"]),
            yerr=_yerr(bases, prefix),
            fmt="o",
            mfc="white",
            mec=colour,
            ecolor=colour,
            ms=5,
            capsize=2,
            elinewidth=0.8,
            zorder=2,
        )
    if label:
        for x, r, model, n in zip(rows["_x"], rate, rows["model"], rows["n_scored"]):
            n_text = "?" if pd.isna(n) else int(n)
            ax.annotate(
                f"{model}: no scores" if math.isnan(r) else f"{model} (n={n_text})",
                (x, 0 if math.isnan(r) else r),
                textcoords="offset points",
                xytext=(6, 4),
                fontsize=7,
                color="#333333",
            )


def em_by_size_figure(table: pd.DataFrame, png_path, pdf_path) -> None:
    """EM and coherent rates (with CI) against base-model size (log axis): a row of two panels per recipe, one
    colour per family; filled markers the fine-tunes, open markers the same base models unmodified.
    table: em_by_model (see em_by_model)."""
    import matplotlib.pyplot as plt

    from emlab.em.figures import _message_figure, _pct, save_figure

    title = "Emergent misalignment across base models"
    if table.empty:
        save_figure(_message_figure(title, "No base models in this run."), png_path, pdf_path)
        return
    family = table["family"].fillna("").astype(str).replace("", "unknown family")
    table = table.assign(family=family).reset_index(drop=True)
    base = table[table["recipe"] == BASE]
    recipes = list(dict.fromkeys(table.loc[table["recipe"] != BASE, "recipe"])) or [BASE]
    colours = family_colours(table["family"].astype(str))
    axis = SizeAxis.of(table["size_b"].astype(float))
    fig, axes = plt.subplots(len(recipes), 2, figsize=(10.0, 2.9 * len(recipes) + 0.9), squeeze=False, sharex=True)
    for i, recipe in enumerate(recipes):
        rows = table[table["recipe"] == recipe]
        bases = base[base["model"].isin(set(rows["model"]))] if recipe != BASE else base.iloc[0:0]
        first = rows.iloc[0]
        heading = recipe if recipe == BASE else f"{recipe}  ({first['kind'] or '?'}; {first['dataset'] or '?'})"
        for j, (prefix, ylabel, what) in enumerate(METRICS):
            ax = axes[i, j]
            for family, fam_rows in rows.groupby(rows["family"].astype(str), sort=True):
                fam_bases = bases[bases["family"].astype(str) == family]
                label = j == 0 and len(rows) <= LABEL_POINTS_UP_TO  # the EM panel names the points
                _family_points(ax, fam_rows, fam_bases, prefix, colours[family], axis, label)
            axis.apply(ax)
            top = np.nan_to_num(_pct(pd.concat([rows, bases])[f"{prefix}_ci_high"]))
            # room over the highest interval for the point labels, never past a percentage's 100
            ax.set_ylim(0, 105 if prefix == "coherent" else min(108.0, max(10.0, float(top.max()) * 1.25)))
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.set_title(f"{heading}\n{what}, {_n_text(rows)} scored answers per model", fontsize=9)
            if i == len(recipes) - 1:
                ax.set_xlabel("base model size (billions of parameters, log scale)")
    handles = [plt.Line2D([], [], color=colours[f], marker="o", ls="-", label=f) for f in colours]
    handles += [
        plt.Line2D([], [], color="#555555", marker="o", ls="", label="fine-tuned"),
        plt.Line2D([], [], color="#555555", marker="o", mfc="white", ls="", label="same base model, unmodified"),
    ]
    legend_h = 0.5  # inches under the panels for the legend
    fig.suptitle(title)
    title_h = 0.35  # inches over the panels for the title, clear of their two-line titles
    fig.tight_layout(rect=(0, legend_h / fig.get_figheight(), 1, 1 - title_h / fig.get_figheight()))
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.0), ncol=min(6, len(handles)), frameon=False)
    save_figure(fig, png_path, pdf_path)
