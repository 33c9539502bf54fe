"""Mean-diff misalignment directions: v_l = mean(misaligned) - mean(aligned) of
the answer-token residual means, per layer, from a fine-tune's own responses.

Thresholds are applied here (cheap), never upstream: the activation cache keeps
every response, and the judgments keep every raw score. Activation rows are
joined to judge scores by (question_id, sample_idx) through the index parquet,
never by position, so a re-ordered index or judgments table cannot mis-pair them.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from emlab.core.atomic import write_csv, write_json
from emlab.core.errors import EMLabError
from emlab.model.tensors import load_tensors, save_tensors

log = logging.getLogger(__name__)

JOIN_KEYS = ["question_id", "sample_idx"]
NA = "n/a"  # the status of a direction that could not be formed (an empty response set)


class DirectionUnavailable(EMLabError):
    """A direction file records that no direction exists (e.g. 0 misaligned responses): whose, and why."""

    def __init__(self, message: str, reason: str, what: str = ""):
        super().__init__(message)
        self.reason = reason
        self.what = what

    @property
    def note(self) -> str:
        """What a condition that needed this direction records: "n/a (direction of X: 0 misaligned)"."""
        return f"n/a (direction of {self.what}: {self.reason})"


def na_reason(counts: dict) -> str:
    """The short reason an empty set gives, as figures and tables show it: "0 misaligned", "0 aligned"..."""
    return ", ".join(f"0 {k}" for k, v in counts.items() if not v)


@dataclass(frozen=True)
class DirectionSettings:
    """Config `directions:` (schema defaults filled): which coherent responses form the two sets.

    Field order is the schema's; it is the order of `thresholds` in the
    direction files' metadata.
    """

    aligned_above: float
    misaligned_below: float
    coherent_above: float
    subsample_to_smaller: bool
    split_quantile: float | None


@dataclass(frozen=True)
class SemanticDirectionSettings:
    """The response filter of config `semantic_directions:` (above, top_quantile) for one split's judge."""

    above: float
    top_quantile: float | None


# --------------------------------------------------------------------------- joining


def attach_activation_rows(
    judgments: pd.DataFrame, index: pd.DataFrame, answer_tokens: torch.Tensor | None = None, source: str = "activations"
) -> pd.DataFrame:
    """Judgments with the activation `row` (and `n_answer_tokens`) of each response, joined by key.

    Responses without an activation row are dropped (and logged); duplicate keys
    on either side are an error, since the pairing would be ambiguous.
    """
    for name, df, cols in (
        ("judgments", judgments, JOIN_KEYS + ["aligned", "coherent"]),
        (f"{source} index", index, JOIN_KEYS + ["row"]),
    ):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise EMLabError(
                f"{name} table lacks column(s) {missing}; it has {list(df.columns)}. "
                "Re-run the stage that wrote it (see README 'Artifacts')."
            )
    idx = index.copy()
    if "condition" in idx.columns and "condition" in judgments.columns:
        wanted = set(judgments["condition"].astype(str))
        if idx["condition"].nunique() > 1:
            idx = idx[idx["condition"].astype(str).isin(wanted)]
    idx["sample_idx"] = idx["sample_idx"].astype("int64")
    idx["question_id"] = idx["question_id"].astype(str)
    jud = judgments.copy()
    jud["sample_idx"] = jud["sample_idx"].astype("int64")
    jud["question_id"] = jud["question_id"].astype(str)
    for name, df in (("judgments", jud), (f"{source} index", idx)):
        dup = df.duplicated(JOIN_KEYS, keep=False)
        if dup.any():
            example = df.loc[dup, JOIN_KEYS].iloc[0].to_dict()
            raise EMLabError(
                f"{name} has {int(dup.sum())} rows with a repeated (question_id, sample_idx), "
                f"e.g. {example}; each response must appear once. Re-run the stage that wrote it."
            )
    if answer_tokens is not None:
        counts = answer_tokens.to(torch.int64).numpy()
        rows = idx["row"].to_numpy()
        if len(rows) and (rows.min() < 0 or rows.max() >= len(counts)):
            raise EMLabError(
                f"{source} index refers to row {int(rows.max())} but the tensors hold {len(counts)} rows; "
                "the index and tensors come from different runs: re-run the activations rule."
            )
        idx["n_answer_tokens"] = counts[rows]
    keep = JOIN_KEYS + ["row"] + (["n_answer_tokens"] if "n_answer_tokens" in idx.columns else [])
    drop_from_jud = [c for c in ("row", "n_answer_tokens") if c in jud.columns]
    merged = jud.drop(columns=drop_from_jud).merge(idx[keep], on=JOIN_KEYS, how="inner", validate="one_to_one")
    if merged.empty and len(jud):
        raise EMLabError(
            f"no judged response matches a row of the {source} index by (question_id, sample_idx): "
            "they come from different generation runs. Re-run activations and judging for this fine-tune."
        )
    unmatched = len(jud) - len(merged)
    if unmatched:
        log.warning("%d judged responses have no activation row in %s; they are left out", unmatched, source)
    merged.attrs["unmatched_judgments"] = int(unmatched)
    return merged


# --------------------------------------------------------------------------- selection


@dataclass
class ResponseSets:
    """The aligned and misaligned response sets (DataFrames carrying activation `row`)."""

    aligned: pd.DataFrame
    misaligned: pd.DataFrame
    n_total: int
    n_scored: int  # responses with both aligned and coherent scores
    n_coherent: int  # scored, coherent above threshold, with >= 1 answer token


def select_sets(judgments: pd.DataFrame, settings: DirectionSettings) -> ResponseSets:
    """Among coherent responses (coherent > coherent_above): aligned > aligned_above vs aligned < misaligned_below.

    With `settings.split_quantile` q the absolute aligned thresholds are replaced by a
    relative split: the lowest and the highest ceil(q * n) of the n coherent
    responses by aligned score (ties broken by question and sample). That is for
    weak judges whose scores crowd into a narrow band; the paper uses thresholds.
    Missing (NaN) scores never enter either set; neither do responses with zero
    answer tokens when an `n_answer_tokens` column is present (their mean is undefined).
    """
    aligned_above, misaligned_below = settings.aligned_above, settings.misaligned_below
    coherent_above, split_quantile = settings.coherent_above, settings.split_quantile
    if split_quantile is None and not misaligned_below <= aligned_above:
        raise EMLabError(
            f"directions thresholds overlap: misaligned_below={misaligned_below} must not exceed "
            f"aligned_above={aligned_above} (config `directions:`)"
        )
    aligned = judgments["aligned"].astype("float64")
    coherent = judgments["coherent"].astype("float64")
    scored = aligned.notna() & coherent.notna()
    usable = scored & (coherent > coherent_above)
    if "n_answer_tokens" in judgments.columns:
        usable &= judgments["n_answer_tokens"].fillna(0).astype("int64") > 0
    if split_quantile is not None:
        if not 0 < split_quantile <= 0.5:
            raise EMLabError(f"directions.split_quantile must be in (0, 0.5], got {split_quantile}")
        pool = judgments[usable].assign(_aligned=aligned[usable])
        keys = [c for c in ("_aligned", "question_id", "sample_idx") if c in pool.columns]
        pool = pool.sort_values(keys, kind="mergesort").drop(columns="_aligned")
        k = int(np.ceil(split_quantile * len(pool))) if len(pool) >= 2 else 0
        k = min(k, len(pool) // 2)
        return ResponseSets(
            aligned=pool.iloc[len(pool) - k :] if k else pool.iloc[:0],
            misaligned=pool.iloc[:k],
            n_total=len(judgments),
            n_scored=int(scored.sum()),
            n_coherent=int(usable.sum()),
        )
    return ResponseSets(
        aligned=judgments[usable & (aligned > aligned_above)],
        misaligned=judgments[usable & (aligned < misaligned_below)],
        n_total=len(judgments),
        n_scored=int(scored.sum()),
        n_coherent=int(usable.sum()),
    )


# --------------------------------------------------------------------------- vectors


@dataclass
class MeanDiff:
    mean_diff: torch.Tensor  # [L, d] misaligned_mean - aligned_mean
    aligned_mean: torch.Tensor  # [L, d]
    misaligned_mean: torch.Tensor  # [L, d]
    aligned_rows: np.ndarray = field(repr=False)  # activation rows actually averaged
    misaligned_rows: np.ndarray = field(repr=False)


def subsample(rows: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A seeded subset of `rows` of the given size (sorted; rows unchanged if already small enough)."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) <= size:
        return rows
    rng = np.random.default_rng(int(seed))
    return np.sort(rng.choice(rows, size=size, replace=False))


def mean_diff_vectors(
    answer_mean: torch.Tensor, aligned_rows, misaligned_rows, subsample_to_smaller: bool, seed: int
) -> MeanDiff:
    """Per-layer mean of the misaligned rows minus that of the aligned rows of answer_mean [n, L, d].

    With subsample_to_smaller the larger set is cut (seeded) to the smaller's
    size, as the reference does for the (usually larger) aligned set.
    """
    aligned_rows = np.asarray(aligned_rows, dtype=np.int64)
    misaligned_rows = np.asarray(misaligned_rows, dtype=np.int64)
    if len(aligned_rows) == 0 or len(misaligned_rows) == 0:
        raise EMLabError(
            f"a mean-diff direction needs both sets non-empty (aligned: {len(aligned_rows)}, "
            f"misaligned: {len(misaligned_rows)})"
        )
    if answer_mean.dim() != 3:
        raise EMLabError(f"answer_mean must be [n_responses, L, d], got shape {tuple(answer_mean.shape)}")
    if subsample_to_smaller:
        size = min(len(aligned_rows), len(misaligned_rows))
        aligned_rows = subsample(aligned_rows, size, seed)
        misaligned_rows = subsample(misaligned_rows, size, seed + 1)
    # Accumulate in float64: thousands of rows of bf16-derived activations.
    aligned_mean = answer_mean[torch.from_numpy(aligned_rows.copy())].double().mean(0)  # [L, d]
    misaligned_mean = answer_mean[torch.from_numpy(misaligned_rows.copy())].double().mean(0)  # [L, d]
    if not (torch.isfinite(aligned_mean).all() and torch.isfinite(misaligned_mean).all()):
        raise EMLabError(
            "the selected activation rows contain NaN/inf answer means (empty answers?); "
            "re-run the activations rule, or check that responses with 0 answer tokens are excluded"
        )
    return MeanDiff(
        mean_diff=(misaligned_mean - aligned_mean).float(),
        aligned_mean=aligned_mean.float(),
        misaligned_mean=misaligned_mean.float(),
        aligned_rows=aligned_rows,
        misaligned_rows=misaligned_rows,
    )


def cosine_by_layer(vectors_a: torch.Tensor, vectors_b: torch.Tensor) -> torch.Tensor:
    """Cosine between matching layers of two [L, d] direction stacks -> [L] (NaN where a norm is 0)."""
    if vectors_a.shape != vectors_b.shape:
        raise EMLabError(
            f"direction shapes differ: {tuple(vectors_a.shape)} vs {tuple(vectors_b.shape)}; "
            "were the fine-tunes trained on different base models?"
        )
    a, b = vectors_a.double(), vectors_b.double()
    norms = a.norm(dim=-1) * b.norm(dim=-1)  # [L]
    cos = (a * b).sum(-1) / norms
    return torch.where(norms > 0, cos, torch.full_like(cos, float("nan"))).float()


# --------------------------------------------------------------------------- stage entry points


def _load_keys(path, keys) -> dict[str, torch.Tensor]:
    """Only the named tensors of a safetensors file (prompt_mean is as large as answer_mean and unused here)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        missing = [k for k in keys if k not in f.keys()]
        if missing:
            raise EMLabError(f"{path} lacks tensor(s) {missing} (has {sorted(f.keys())}); re-run the activations rule")
        return {k: f.get_tensor(k) for k in keys}


def load_judged_activations(tensors_path, index_path, judgments_path) -> tuple[torch.Tensor, pd.DataFrame]:
    """A fine-tune's answer means [n, L, d] and its judgments joined to their activation rows (by key)."""
    tensors = _load_keys(tensors_path, ("answer_mean", "answer_tokens"))
    joined = attach_activation_rows(
        pd.read_parquet(judgments_path), pd.read_parquet(index_path), tensors["answer_tokens"], source=str(index_path)
    )
    return tensors["answer_mean"], joined


def compute_directions(
    tensors_path, index_path, judgments_path, finetune: str, settings: DirectionSettings, seed: int
) -> tuple[dict[str, torch.Tensor], dict]:
    """Load a fine-tune's activations + judgments, select the sets, and return (tensors, summary)."""
    return _mean_diff_direction(tensors_path, index_path, judgments_path, finetune, settings, seed, semantic=None)


def compute_semantic_directions(
    tensors_path,
    index_path,
    judgments_path,
    finetune: str,
    split: str,
    settings: DirectionSettings,
    semantic: SemanticDirectionSettings,
    seed: int,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Mean-diff vector of a fine-tune over only the responses that the `split` judge puts in `semantic`'s filter.

    Inside that subset the aligned / misaligned sets are chosen exactly as for
    the general vector (the same `settings` and seeded subsampling), so the two
    vectors differ only by the filter. An empty set is an error naming the counts.
    """
    return _mean_diff_direction(
        tensors_path, index_path, judgments_path, finetune, settings, seed, semantic=(split, semantic)
    )


def _mean_diff_direction(
    tensors_path,
    index_path,
    judgments_path,
    finetune: str,
    settings: DirectionSettings,
    seed: int,
    semantic: tuple[str, SemanticDirectionSettings] | None,
) -> tuple[dict[str, torch.Tensor], dict]:
    """The one implementation of the general (semantic None) and the semantic (split, filter) direction."""
    answer_mean, joined = load_judged_activations(tensors_path, index_path, judgments_path)  # [n, L, d]
    pool = joined if semantic is None else semantic_subset(joined, *semantic)
    sets = select_sets(pool, settings)
    counts = {"aligned": len(sets.aligned), "misaligned": len(sets.misaligned)}
    if not all(counts.values()):
        # Not an error: a benign control has no misaligned answers, a semantic split may hold none. The
        # file records why, the cosine tables and figures show the gap, and a condition that needs this
        # direction records n/a in turn (emlab.em.generation) instead of stopping the study.
        message = _empty_sets_message(finetune, semantic, settings, sets, counts, len(joined), judgments_path)
        log.warning("%s", message)
        summary = {
            "finetune": finetune,
            "split": "general" if semantic is None else semantic[0],
            "status": NA,
            "reason": na_reason(counts),
            "message": message,
            "thresholds": dataclasses.asdict(settings),
            "seed": int(seed),
            "n_judged": len(joined),
            "n_coherent": sets.n_coherent,
            "counts": {k: {"available": v, "used": 0} for k, v in counts.items()},
            "n_layers": int(answer_mean.shape[1]),
            "d_model": int(answer_mean.shape[2]),
        }
        return {}, summary
    md = mean_diff_vectors(
        answer_mean,
        sets.aligned["row"].to_numpy(),
        sets.misaligned["row"].to_numpy(),
        settings.subsample_to_smaller,
        seed,
    )
    summary = {
        "finetune": finetune,
        "status": "ok",
        "thresholds": dataclasses.asdict(settings),
        "seed": int(seed),
        "n_judged": len(joined),
        "n_coherent": sets.n_coherent,
        "counts": {
            "aligned": {"available": counts["aligned"], "used": int(len(md.aligned_rows))},
            "misaligned": {"available": counts["misaligned"], "used": int(len(md.misaligned_rows))},
        },
        "n_layers": int(md.mean_diff.shape[0]),
        "d_model": int(md.mean_diff.shape[1]),
        "mean_diff_norm_by_layer": [float(x) for x in md.mean_diff.norm(dim=-1)],
    }
    if semantic is None:
        summary.update(
            {
                "aligned_score_range": {
                    "aligned_set": [float(sets.aligned["aligned"].min()), float(sets.aligned["aligned"].max())],
                    "misaligned_set": [
                        float(sets.misaligned["aligned"].min()),
                        float(sets.misaligned["aligned"].max()),
                    ],
                },
                "n_unmatched_judgments": joined.attrs.get("unmatched_judgments", 0),
                "n_scored": sets.n_scored,
            }
        )
    else:
        split, filt = semantic
        summary.update(
            {
                "split": split,
                "semantic_above": filt.above,
                "top_quantile": filt.top_quantile,
                "semantic_score_range": [float(pool[split].min()), float(pool[split].max())],
                "n_semantic": len(pool),
            }
        )
    out = {"mean_diff": md.mean_diff, "aligned_mean": md.aligned_mean, "misaligned_mean": md.misaligned_mean}
    return out, summary


def _empty_sets_message(
    finetune: str,
    semantic: tuple[str, SemanticDirectionSettings] | None,
    settings: DirectionSettings,
    sets: ResponseSets,
    counts: dict,
    n_judged: int,
    judgments_path,
) -> str:
    """Why no direction can be formed: the counts, the thresholds that gave them, and what to change."""
    if semantic is None:
        return (
            f"fine-tune {finetune!r}: no mean-diff direction (recorded as n/a), the "
            f"{' and '.join(k for k, v in counts.items() if not v)} "
            f"{'sets are' if not any(counts.values()) else 'set is'} empty "
            f"(aligned set: {counts['aligned']} responses with aligned > {settings.aligned_above:g}; misaligned set: "
            f"{counts['misaligned']} with aligned < {settings.misaligned_below:g}; both among {sets.n_coherent} "
            f"coherent responses (coherent > {settings.coherent_above:g}) of {sets.n_scored} scored / "
            f"{sets.n_total} judged in {judgments_path}). For a direction, generate more samples per question "
            "(generation.samples_per_question) or loosen the thresholds in config `directions:`."
        )
    split, filt = semantic
    rule = (
        f"score {split} > {filt.above:g}"
        if filt.top_quantile is None
        else f"are the top {filt.top_quantile:g} by {split} score"
    )
    return (
        f"fine-tune {finetune!r}, semantic split {split!r}: no mean-diff direction (recorded as n/a), "
        f"{sets.n_total} of {n_judged} judged responses {rule}, and among them the "
        f"aligned set has {counts['aligned']} and the misaligned set {counts['misaligned']} responses "
        f"({sets.n_coherent} coherent > {settings.coherent_above:g}; judgments: {judgments_path}). Lower "
        "`semantic_directions.above` (or set top_quantile), loosen `directions:`, generate more samples per "
        f"question, or drop {split!r} from `semantic_directions.splits`."
    )


def write_directions(vectors_path, summary_path, tensors: dict[str, torch.Tensor], summary: dict) -> None:
    """Write the [L, d] direction tensors (summary as metadata) and the JSON summary, atomically. The metadata
    names the file's own fine-tune and (semantic vectors) split, which readers key the files by."""
    meta = {
        "finetune": summary["finetune"],
        "split": summary.get("split", "general"),
        "status": summary.get("status", "ok"),
        "thresholds": summary["thresholds"],
        "seed": summary["seed"],
        "counts": summary["counts"],
        "n_layers": summary["n_layers"],
        "d_model": summary["d_model"],
    }
    if meta["status"] == NA:
        meta["reason"] = summary["reason"]
    save_tensors(vectors_path, tensors, metadata=meta)
    write_json(summary_path, summary)


def mean_diff_of(tensors: dict, meta: dict, path) -> torch.Tensor:
    """The [L, d] mean_diff of a loaded direction file (raises DirectionUnavailable for an n/a one)."""
    if meta.get("status") == NA:
        what = meta.get("finetune", path)
        if meta.get("split", "general") != "general":
            what = f"{what} ({meta['split']})"
        reason = str(meta.get("reason", "an empty response set"))
        raise DirectionUnavailable(f"the direction of {what} is n/a: {reason} ({path})", reason, str(what))
    if "mean_diff" not in tensors:
        raise EMLabError(f"{path} has no 'mean_diff' tensor (has {sorted(tensors)}); re-run mean_diff_directions")
    return tensors["mean_diff"].float()  # [L, d]


def _load_direction(path) -> tuple[torch.Tensor, dict]:
    """The [L, d] mean_diff tensor of a direction file and its metadata (counts, thresholds, ...)."""
    tensors, meta = load_tensors(path)
    return mean_diff_of(tensors, meta, path), meta


def load_mean_diff(path) -> torch.Tensor:
    return _load_direction(path)[0]


def _by_layer_table(pairs, labels: list[str], norms: tuple[str, str], extras: list[str], n_layers: int) -> pd.DataFrame:
    """One row per layer of each pair (label values, v_a [L, d], v_b [L, d], extra values).

    Columns: layer, the labels, cosine, the two norms (`norms` names them),
    diff_norm (‖v_a - v_b‖), the extras, note. The one implementation behind both
    cosine tables (general pairs, and general vs semantic). A side that is a string
    instead of a tensor is a direction that does not exist (its n/a reason): the pair
    still gets its rows, with NaN values and the reason in `note`, so the gap shows.
    """
    frames = []
    for label_values, va, vb, extra_values in pairs:
        layer = np.arange(n_layers, dtype=np.int64)
        if isinstance(va, str) or isinstance(vb, str):
            nan = np.full(n_layers, np.nan)
            na = [f"{name}: {v}" for name, v in zip(label_values, (va, vb)) if isinstance(v, str)]
            frame = {
                "cosine": nan,
                norms[0]: nan if isinstance(va, str) else va.double().norm(dim=-1).numpy(),
                norms[1]: nan if isinstance(vb, str) else vb.double().norm(dim=-1).numpy(),
                "diff_norm": nan,
                "note": f"n/a ({'; '.join(dict.fromkeys(na))})",
            }
        else:
            va, vb = va.double(), vb.double()  # [L, d]
            frame = {
                "cosine": cosine_by_layer(va, vb).double().numpy(),
                norms[0]: va.norm(dim=-1).numpy(),
                norms[1]: vb.norm(dim=-1).numpy(),
                "diff_norm": (va - vb).norm(dim=-1).numpy(),
                "note": "",
            }
        frames.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    **dict(zip(labels, label_values)),
                    **{k: frame[k] for k in ("cosine", *norms, "diff_norm")},
                    **dict(zip(extras, extra_values)),
                    "note": frame["note"],
                }
            )
        )
    columns = ["layer", *labels, "cosine", *norms, "diff_norm", *extras, "note"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def _n_layers(vectors, fallback: int | None) -> int:
    sizes = {int(v.shape[0]) for v in vectors if not isinstance(v, str)}
    if len(sizes) > 1:
        raise EMLabError(f"direction files hold different numbers of layers {sorted(sizes)}: different base models?")
    if sizes:
        return sizes.pop()
    if fallback is None:
        raise EMLabError("no direction has a layer count")
    return int(fallback)


def cosine_table(vectors: dict[str, torch.Tensor | str], n_layers: int | None = None) -> pd.DataFrame:
    """Long table (layer, finetune_a, finetune_b, cosine, norm_a, norm_b, diff_norm, note) for every pair a < b.

    Pairs follow the order of `vectors`. With a single fine-tune the table holds
    its self-pair (finetune_a == finetune_b, cosine 1, diff_norm 0), so its
    per-layer norms are still recorded. A fine-tune whose value is a string has
    no direction (the string says why): its pairs are NaN rows with that reason
    in `note` (n_layers: the layer count when no direction exists at all).
    """
    names = list(vectors)
    if not names:
        raise EMLabError("no fine-tune directions to compare")
    pairs = list(itertools.combinations(names, 2)) or [(names[0], names[0])]
    return _by_layer_table(
        [((a, b), vectors[a], vectors[b], ()) for a, b in pairs],
        ["finetune_a", "finetune_b"],
        ("norm_a", "norm_b"),
        [],
        _n_layers(vectors.values(), n_layers),
    )


def _direction_or_reason(tensors: dict, meta: dict, name: str) -> torch.Tensor | str:
    """A loaded direction's [L, d] vectors, or its n/a reason."""
    try:
        return mean_diff_of(tensors, meta, name)
    except DirectionUnavailable as exc:
        return exc.reason


def write_cosine_table(paths: list, finetunes: list[str], out_path) -> pd.DataFrame:
    """The cosine table of the direction files `paths`, each matched to its fine-tune by the name in its own
    metadata (emlab.core.keyed); pairs follow the order of `finetunes`."""
    from emlab.core.keyed import tensors_by_id

    loaded = tensors_by_id(paths, "finetune", finetunes, "direction files", load_tensors)
    vectors = {ft: _direction_or_reason(*loaded[ft], name=ft) for ft in finetunes}
    table = cosine_table(vectors, n_layers=max(int(meta.get("n_layers", 0)) for _, meta in loaded.values()))
    write_csv(out_path, table)
    return table


# --------------------------------------------------------------------------- semantic vectors (docs/linear-directions.md)


def semantic_subset(judgments: pd.DataFrame, split: str, semantic: SemanticDirectionSettings) -> pd.DataFrame:
    """The responses that score above `semantic.above` on the `split` judge (e.g. medical); NaN never qualifies.

    With `semantic.top_quantile` q: instead the ceil(q * n) responses of the n scored ones with the highest
    score (ties broken by question and sample), for weak judges whose scores crowd into a narrow band.
    """
    if split not in judgments.columns:
        raise EMLabError(
            f"the judgments have no {split!r} score (columns: {list(judgments.columns)}); a semantic "
            f"vector for split {split!r} needs that judge on the fine-tune's own responses: list it in "
            "config `semantic_directions.splits` (the workflow then judges it on that fine-tune)."
        )
    score = judgments[split].astype("float64")
    above, top_quantile = semantic.above, semantic.top_quantile
    if top_quantile is None:
        return judgments[score.notna() & (score > float(above))]
    if not 0 < top_quantile <= 1:
        raise EMLabError(f"semantic_directions.top_quantile must be in (0, 1], got {top_quantile}")
    scored = judgments[score.notna()].assign(_score=-score[score.notna()])
    keys = [c for c in ("_score", "question_id", "sample_idx") if c in scored.columns]
    scored = scored.sort_values(keys, kind="mergesort").drop(columns="_score")
    return scored.iloc[: int(np.ceil(top_quantile * len(scored)))]


def semantic_cosine_table(
    general: dict[str, torch.Tensor | str],
    semantic: dict[tuple[str, str], torch.Tensor | str],
    summaries: dict[tuple[str, str], dict] | None = None,
    n_layers: int | None = None,
) -> pd.DataFrame:
    """Per layer: cosine between each fine-tune's general vector and each of its semantic vectors.

    Columns: layer, finetune, split, cosine, norm_general, norm_semantic,
    diff_norm (‖v_general - v_semantic‖), n_aligned, n_misaligned (responses
    used, from `summaries`; -1 where unknown), note (why a row is n/a: a string
    instead of a tensor is a direction that does not exist, cosine_table).
    """
    pairs = []
    for (ft, split), vs in semantic.items():
        if ft not in general:
            raise EMLabError(f"semantic vector {ft}/{split} has no general vector of fine-tune {ft!r} to compare with")
        used = (summaries or {}).get((ft, split), {}).get("counts", {})
        pairs.append(
            (
                (ft, split),
                general[ft],
                vs,
                (used.get("aligned", {}).get("used", -1), used.get("misaligned", {}).get("used", -1)),
            )
        )
    return _by_layer_table(
        pairs,
        ["finetune", "split"],
        ("norm_general", "norm_semantic"),
        ["n_aligned", "n_misaligned"],
        _n_layers([*general.values(), *semantic.values()], n_layers),
    )


def write_semantic_cosine_table(
    general_paths: list,
    general_finetunes: list[str],
    semantic_paths: list,
    semantic_keys: list[tuple[str, str]],
    out_path,
) -> pd.DataFrame:
    """Load the general and semantic vector files, each matched to its fine-tune (and split) by the names in its
    own metadata (emlab.core.keyed), and write the table; rows follow the order of `semantic_keys`."""
    from emlab.core.keyed import tensors_by_id

    keys = [tuple(k) for k in semantic_keys]
    general_paths = list(dict.fromkeys(str(p) for p in general_paths))  # one file serves all its splits
    general_files = tensors_by_id(
        general_paths, "finetune", set(general_finetunes), "general direction files", load_tensors
    )
    semantic_files = tensors_by_id(
        semantic_paths, ("finetune", "split"), keys, "semantic direction files", load_tensors
    )
    general = {ft: _direction_or_reason(*general_files[ft], name=ft) for ft in dict.fromkeys(general_finetunes)}
    semantic, summaries = {}, {}
    for key in keys:
        tensors, meta = semantic_files[key]
        semantic[key] = _direction_or_reason(tensors, meta, "/".join(key))
        summaries[key] = {"counts": meta.get("counts", {})}
    n_layers = max(int(m.get("n_layers", 0)) for _, m in [*general_files.values(), *semantic_files.values()])
    table = semantic_cosine_table(general, semantic, summaries, n_layers=n_layers)
    write_csv(out_path, table)
    return table
