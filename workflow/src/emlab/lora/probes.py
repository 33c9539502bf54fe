"""Linear probes on rank-1 LoRA scalars (Soligo et al. section 4.2, Table 1, Fig. 6).

Response sets (cheap; thresholds from config): among coherent responses,
aligned (aligned > aligned_above) / misaligned (aligned < misaligned_below),
crossed with medical (medical > medical_above) / non-medical (medical <
nonmedical_below): four sets. Quantile variants replace an absolute split by
the top / bottom fraction of the scored responses (for weak demo judges).

Probes: one answer token = one sample, its features the scalars of every
adapter (layer order). Four experiments (EXPERIMENTS: class 0 vs class 1),
`LogisticRegression(penalty="l1", C, solver="liblinear", max_iter)` as the
reference, `n_runs` seeded runs. Two protocols:
  - `reference`: the reference code's: per run, the larger class's tokens are
    downsampled to the smaller's count, z-scoring is fitted on that whole
    balanced set, then a stratified token-level split (test statistics leak
    into the scaler, and one response's tokens land on both sides);
  - `grouped` (the default): per run, each class's *responses* are split
    (test_fraction of them, at least one, for testing), train and test tokens
    are balanced separately by downsampling, the scaler is fitted on the
    training tokens only.
Token filters (TokenFilter) keep only significant answer tokens (KL or gradient
importance above a value, its natural log above a value, or the top fraction of
all answer tokens of the fine-tune by that column) before the sets are split.
The paper's coefficient plots keep tokens whose gradient importance (its
"derivative" score, emlab.lora.scalars.GRAD_IMPORTANCE_DEFINITION) has
log(score) > 0.5: `{column: grad_importance, log_above: 0.5}`. The scores stay
raw in tokens.parquet; a filter is applied here, so changing it never re-runs
the capture.

Standardised features make the choice between `scalars` and `effective` moot
(they differ by a positive factor per adapter); probes read `scalars`.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from emlab.core.atomic import write_csv, write_json
from emlab.core.errors import EMLabError
from emlab.plan.roles import RoleSettings, roles_from_config
from emlab.plan.token_filters import TokenFilter, check_token_filter

log = logging.getLogger(__name__)

JOIN_KEYS = ["question_id", "sample_idx"]
SET_NAMES = ("nonmed_aligned", "nonmed_misaligned", "med_aligned", "med_misaligned")
EXPERIMENTS = {  # name: (class 0, class 1)
    "nonmed_aligned_vs_med_aligned": ("nonmed_aligned", "med_aligned"),
    "nonmed_misaligned_vs_med_misaligned": ("nonmed_misaligned", "med_misaligned"),
    "nonmed_aligned_vs_nonmed_misaligned": ("nonmed_aligned", "nonmed_misaligned"),
    "med_aligned_vs_med_misaligned": ("med_aligned", "med_misaligned"),
}
PROTOCOLS = ("reference", "grouped")
METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc")
PROBE_COLUMNS = [
    "experiment",
    "protocol",
    "filter",
    "metric",
    "mean",
    "std",
    "ci_low",
    "ci_high",
    "n_tokens",
    "n_responses",
    "n_tokens_class0",
    "n_tokens_class1",
    "n_responses_class0",
    "n_responses_class1",
    "n_runs",
]
COEFFICIENT_COLUMNS = ["experiment", "protocol", "filter", "run", "adapter", "layer", "coefficient"]


# --------------------------------------------------------------------------- response sets


@dataclass(frozen=True)
class ResponseSetSettings:
    """Judge-score thresholds of the four response sets (config `lora_interp.sets`)."""

    aligned_above: float
    misaligned_below: float
    coherent_above: float
    medical_above: float
    nonmedical_below: float
    aligned_split_quantile: float | None  # q: top / bottom ceil(q n) coherent responses by aligned score instead
    medical_split_quantile: float | None  # q: top / bottom ceil(q n) coherent responses by medical score instead


@dataclass
class ResponseSets:
    """The four sets as (question_id, sample_idx) key tables, and the counts that led to them."""

    sets: dict[str, pd.DataFrame]
    counts: dict[str, int]

    def summary(self, settings: ResponseSetSettings) -> dict:
        """sets.json: the thresholds used and the counts."""
        from dataclasses import asdict

        return {"thresholds": asdict(settings), "counts": dict(self.counts)}


def _split(
    score: pd.Series, pool: pd.Series, above: float, below: float, quantile: float | None, keys: pd.DataFrame, what: str
) -> tuple[pd.Series, pd.Series]:
    """(high, low) boolean masks over `pool` by absolute thresholds or by quantile."""
    if quantile is None:
        if not below <= above:
            raise EMLabError(
                f"lora_interp.sets: the {what} thresholds overlap ({what} below {below:g} must not "
                f"exceed above {above:g})"
            )
        return pool & (score > above), pool & (score < below)
    if not 0 < quantile <= 0.5:
        raise EMLabError(f"lora_interp.sets.{what}_split_quantile must be in (0, 0.5], got {quantile}")
    ranked = keys[pool].assign(_s=score[pool]).sort_values(["_s"] + JOIN_KEYS, kind="mergesort")
    k = min(int(np.ceil(quantile * len(ranked))), len(ranked) // 2)
    high, low = pd.Series(False, index=score.index), pd.Series(False, index=score.index)
    if k:
        high[ranked.index[len(ranked) - k :]] = True
        low[ranked.index[:k]] = True
    return high, low


def select_response_sets(
    judgments: pd.DataFrame, settings: ResponseSetSettings, where: str = "judgments"
) -> ResponseSets:
    """The four sets; an empty one is an error naming every count; missing scores never qualify."""
    missing = [c for c in JOIN_KEYS + ["aligned", "coherent", "medical"] if c not in judgments.columns]
    if missing:
        hint = (
            " the medical judge must score the fine-tune's own responses: add `medical` to the judge metrics "
            "of this fine-tune's condition"
            if "medical" in missing
            else " re-run judging"
        )
        raise EMLabError(f"{where}: lacks column(s) {missing} (has {list(judgments.columns)});{hint}")
    jud = judgments.reset_index(drop=True)
    keys = jud[JOIN_KEYS].astype({"question_id": str, "sample_idx": "int64"})
    dup = keys.duplicated(keep=False)
    if dup.any():
        raise EMLabError(
            f"{where}: {int(dup.sum())} rows repeat a (question_id, sample_idx); each response must "
            "appear once (judgments of one condition only)"
        )
    aligned, coherent, medical = (jud[c].astype("float64") for c in ("aligned", "coherent", "medical"))
    scored = aligned.notna() & coherent.notna() & medical.notna()
    pool = scored & (coherent > settings.coherent_above)
    is_al, is_mis = _split(
        aligned,
        pool,
        settings.aligned_above,
        settings.misaligned_below,
        settings.aligned_split_quantile,
        keys,
        "aligned",
    )
    is_med, is_non = _split(
        medical,
        pool,
        settings.medical_above,
        settings.nonmedical_below,
        settings.medical_split_quantile,
        keys,
        "medical",
    )
    masks = {
        "nonmed_aligned": is_non & is_al,
        "nonmed_misaligned": is_non & is_mis,
        "med_aligned": is_med & is_al,
        "med_misaligned": is_med & is_mis,
    }
    sets = {name: keys[masks[name]].reset_index(drop=True) for name in SET_NAMES}
    counts = {
        "judged": len(jud),
        "scored": int(scored.sum()),
        "coherent": int(pool.sum()),
        "aligned": int(is_al.sum()),
        "misaligned": int(is_mis.sum()),
        "medical": int(is_med.sum()),
        "nonmedical": int(is_non.sum()),
        **{name: len(sets[name]) for name in SET_NAMES},
    }
    empty = [name for name in SET_NAMES if counts[name] == 0]
    if empty:
        raise EMLabError(
            f"{where}: the response set(s) {', '.join(empty)} are empty (counts: "
            + ", ".join(f"{k} {v}" for k, v in counts.items())
            + f"; thresholds: {settings}). Generate more samples per question, add medical questions, or loosen "
            "lora_interp.sets (or use its split quantiles)"
        )
    return ResponseSets(sets, counts)


# --------------------------------------------------------------------------- tokens of the sets


def filter_mask(tokens: pd.DataFrame, flt: TokenFilter) -> np.ndarray:
    """Boolean [n_tokens]: answer tokens passing the filter (top fractions are over all answer tokens;
    log_above keeps positive scores whose natural log exceeds it, so a score of 0 never passes)."""
    check_token_filter(flt)
    answer = tokens["is_answer"].to_numpy(dtype=bool)
    if flt.column is None:
        return answer
    values = tokens[flt.column].to_numpy(dtype=np.float64)
    usable = answer & np.isfinite(values)
    if not usable.any():
        raise EMLabError(
            f"lora_interp.probes.filters[{flt.name}]: no answer token has a {flt.column} value "
            "(was gradient importance computed? lora_interp.capture.gradient_importance)"
        )
    if flt.above is not None:
        return usable & (values > flt.above)
    if flt.log_above is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log(np.where(usable & (values > 0), values, np.nan))  # NaN (never kept) where score <= 0
        return usable & (logs > flt.log_above)
    k = max(1, int(np.ceil(flt.top_fraction * usable.sum())))
    order = np.argsort(-np.where(usable, values, -np.inf), kind="stable")
    keep = np.zeros(len(values), dtype=bool)
    keep[order[:k]] = True
    return keep & usable


def _set_members(tokens: pd.DataFrame, keys: pd.DataFrame) -> np.ndarray:
    """Boolean [n_tokens]: tokens of the responses in `keys`."""
    tk = pd.MultiIndex.from_arrays([tokens["question_id"].astype(str), tokens["sample_idx"].astype("int64")])
    sk = pd.MultiIndex.from_arrays([keys["question_id"].astype(str), keys["sample_idx"].astype("int64")])
    return tk.isin(sk)


# --------------------------------------------------------------------------- probes


@dataclass(frozen=True)
class ProbeSettings:
    """The probe protocol (config `lora_interp.probes`); penalty l1 and solver liblinear are fixed (reference)."""

    n_runs: int
    test_fraction: float
    C: float
    max_iter: int
    seed: int
    protocols: list[str]
    filters: list[TokenFilter]


def _rng(seed: int, *parts) -> np.random.Generator:
    return np.random.default_rng([int(seed)] + [zlib.crc32(str(p).encode()) for p in parts])


def _balanced(rng, idx0: np.ndarray, idx1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = min(len(idx0), len(idx1))
    return rng.choice(idx0, m, replace=False), rng.choice(idx1, m, replace=False)


def _l1_penalty() -> dict:
    """The L1 penalty in the spelling this scikit-learn wants (1.8 deprecates `penalty` for `l1_ratio`)."""
    import sklearn

    major, minor = (int(x) for x in sklearn.__version__.split(".")[:2])
    return {"l1_ratio": 1.0} if (major, minor) >= (1, 8) else {"penalty": "l1"}


_L1: dict = {}


def _fit_score(X_train, y_train, X_test, y_test, settings: ProbeSettings, rng) -> tuple[dict, np.ndarray]:
    """One L1 probe. liblinear shuffles its coordinates with a seed; it comes from the run's own generator
    (drawn after the split), not from numpy's global state, which each process seeds from the OS."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

    if not _L1:
        _L1.update(_l1_penalty())

    seed = int(rng.integers(2**31 - 1))
    clf = LogisticRegression(C=settings.C, solver="liblinear", max_iter=settings.max_iter, random_state=seed, **_L1)
    clf.fit(X_train, y_train)
    pred = clf.predict(X_test)
    score = clf.decision_function(X_test)
    metrics = {
        "accuracy": accuracy_score(y_test, pred),
        "precision": precision_score(y_test, pred, zero_division=0),
        "recall": recall_score(y_test, pred, zero_division=0),
        "f1": f1_score(y_test, pred, zero_division=0),
        "roc_auc": roc_auc_score(y_test, score) if len(set(y_test)) == 2 else float("nan"),
    }
    return metrics, clf.coef_[0].copy()


def _standardise(fit_on: np.ndarray, *arrays: np.ndarray) -> list[np.ndarray]:
    mean = fit_on.mean(0)
    std = fit_on.std(0)
    std = np.where(std > 0, std, 1.0)
    return [(a - mean) / std for a in arrays]


def _run_reference(X, tok0, tok1, rng, settings):
    b0, b1 = _balanced(rng, tok0, tok1)
    Xb = np.concatenate([X[b0], X[b1]])
    yb = np.concatenate([np.zeros(len(b0), int), np.ones(len(b1), int)])
    (Xb,) = _standardise(Xb, Xb)  # the reference's leak: fitted on the whole balanced set
    n_test = max(1, int(round(settings.test_fraction * len(b0))))
    test = np.zeros(len(yb), dtype=bool)
    for start in (0, len(b0)):  # stratified: the same test share of each class
        test[start + rng.permutation(len(b0))[:n_test]] = True
    return _fit_score(Xb[~test], yb[~test], Xb[test], yb[test], settings, rng)


def _run_grouped(X, resp, tok0, tok1, rng, settings):
    split = {}
    for cls, toks in ((0, tok0), (1, tok1)):
        responses = np.unique(resp[toks])
        n_test = min(len(responses) - 1, max(1, int(round(settings.test_fraction * len(responses)))))
        test_resp = rng.permutation(responses)[:n_test]
        in_test = np.isin(resp[toks], test_resp)
        split[cls] = (toks[~in_test], toks[in_test])
    tr0, tr1 = _balanced(rng, split[0][0], split[1][0])
    te0, te1 = _balanced(rng, split[0][1], split[1][1])
    X_train, X_test = np.concatenate([X[tr0], X[tr1]]), np.concatenate([X[te0], X[te1]])
    y_train = np.concatenate([np.zeros(len(tr0), int), np.ones(len(tr1), int)])
    y_test = np.concatenate([np.zeros(len(te0), int), np.ones(len(te1), int)])
    X_train, X_test = _standardise(X_train, X_train, X_test)
    return _fit_score(X_train, y_train, X_test, y_test, settings, rng)


def run_probes(
    scalars: np.ndarray,
    tokens: pd.DataFrame,
    sets: ResponseSets,
    adapters: list[str],
    layers: list[int],
    settings: ProbeSettings,
    where: str = "probes",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(probes table PROBE_COLUMNS, coefficients COEFFICIENT_COLUMNS) for every experiment x protocol x filter.

    `scalars` [n_tokens, n_adapters] lines up with `tokens` (emlab.lora.scalars
    token index). n_tokens / n_responses count the filtered answer tokens and
    their responses available to an experiment, before balancing; ci_low /
    ci_high are the 2.5 / 97.5 percentiles of the per-run values. A
    significance filter that leaves a class tokens of fewer than 2 responses
    gives that experiment NaN metrics and n_runs 0 (n/a); without a filter it
    is an error.
    """
    if scalars.shape != (len(tokens), len(adapters)) or len(layers) != len(adapters):
        raise EMLabError(
            f"{where}: scalars of shape {scalars.shape} do not match {len(tokens)} tokens and "
            f"{len(adapters)} adapters; re-run the lora_scalars rule"
        )
    unknown = [p for p in settings.protocols if p not in PROTOCOLS]
    if unknown or not settings.protocols:
        raise EMLabError(
            f"lora_interp.probes.protocols must be a non-empty list of {PROTOCOLS}, got {settings.protocols}"
        )
    if settings.n_runs < 1 or not 0 < settings.test_fraction < 1:
        raise EMLabError("lora_interp.probes: n_runs must be >= 1 and test_fraction in (0, 1)")
    if not settings.filters:
        raise EMLabError("lora_interp.probes.filters must list at least one filter (name: all, column: null)")
    X = np.asarray(scalars, dtype=np.float64)
    resp = tokens["response"].to_numpy(dtype=np.int64)
    members = {name: _set_members(tokens, keys) for name, keys in sets.sets.items()}
    rows, coef_rows = [], []
    for flt in settings.filters:
        keep = filter_mask(tokens, flt)
        for exp, (c0, c1) in EXPERIMENTS.items():
            tok0, tok1 = np.flatnonzero(keep & members[c0]), np.flatnonzero(keep & members[c1])
            n_resp = (len(np.unique(resp[tok0])), len(np.unique(resp[tok1])))
            if min(n_resp) < 2 and flt.column is not None:
                # a significance cut-off is absolute (the paper's log(score) > 0.5): at a small scale it can keep
                # too few tokens; the experiment is then reported as n/a for that filter, not fitted
                log.warning(
                    "probes: experiment %s, filter %s keeps tokens of %d / %d responses; reported as n/a",
                    exp,
                    flt.name,
                    *n_resp,
                )
                nan = float("nan")
                rows.extend(
                    (exp, protocol, flt.name, m, nan, nan, nan, nan, len(tok0) + len(tok1), sum(n_resp))
                    + (len(tok0), len(tok1), n_resp[0], n_resp[1], 0)
                    for protocol in settings.protocols
                    for m in METRICS
                )
                continue
            if min(n_resp) < 2:
                raise EMLabError(
                    f"{where}: experiment {exp}, filter {flt.name}: {c0} has {len(tok0)} tokens in {n_resp[0]} "
                    f"responses and {c1} {len(tok1)} tokens in {n_resp[1]}; each class needs tokens of at least 2 "
                    "responses. Loosen the filter or the set thresholds, or generate more samples"
                )
            for protocol in settings.protocols:
                per_run = {m: [] for m in METRICS}
                for run in range(settings.n_runs):
                    rng = _rng(settings.seed, exp, flt.name, protocol, run)
                    if protocol == "reference":
                        metrics, coef = _run_reference(X, tok0, tok1, rng, settings)
                    else:
                        metrics, coef = _run_grouped(X, resp, tok0, tok1, rng, settings)
                    for m in METRICS:
                        per_run[m].append(metrics[m])
                    coef_rows.extend(
                        (exp, protocol, flt.name, run, a, int(l), float(c)) for a, l, c in zip(adapters, layers, coef)
                    )
                for m in METRICS:
                    v = np.asarray(per_run[m], dtype=np.float64)
                    finite = v[np.isfinite(v)]
                    rows.append(
                        (
                            exp,
                            protocol,
                            flt.name,
                            m,
                            float(finite.mean()) if len(finite) else float("nan"),
                            float(finite.std(ddof=1)) if len(finite) > 1 else float("nan"),
                            float(np.percentile(finite, 2.5)) if len(finite) else float("nan"),
                            float(np.percentile(finite, 97.5)) if len(finite) else float("nan"),
                            len(tok0) + len(tok1),
                            sum(n_resp),
                            len(tok0),
                            len(tok1),
                            n_resp[0],
                            n_resp[1],
                            settings.n_runs,
                        )
                    )
    return pd.DataFrame(rows, columns=PROBE_COLUMNS), pd.DataFrame(coef_rows, columns=COEFFICIENT_COLUMNS)


# --------------------------------------------------------------------------- adapter roles


ROLE_RULE = (
    "An adapter is *selected* by an experiment when |mean coefficient| over the runs is at least relative_threshold "
    "times the largest |mean coefficient| of that experiment, and at least sign_agreement of the runs give it the "
    "mean's sign. general: selected by nonmed_aligned_vs_nonmed_misaligned (it tracks misalignment without medical "
    "content). medical: not general, and selected by med_aligned_vs_med_misaligned or "
    "nonmed_misaligned_vs_med_misaligned (misalignment only in a medical context, or medical content among "
    "misaligned responses). neither: the rest."
)


def roles_from_coefficients(
    coefficients: pd.DataFrame, adapters: list[str], settings: RoleSettings, probes: pd.DataFrame | None = None
) -> dict:
    """{adapter: {"role", "why"}} by ROLE_RULE. An experiment without coefficients (n/a under a significance
    filter, run_probes) selects nothing; when `probes` (the probes table) shows every experiment of the
    protocol and filter n/a, every adapter is "neither" and says why (adapter steering by role is then n/a)."""
    sub = coefficients[(coefficients["protocol"] == settings.protocol) & (coefficients["filter"] == settings.filter)]
    fitted = (
        None
        if probes is None
        else probes[(probes["protocol"] == settings.protocol) & (probes["filter"] == settings.filter)]
    )
    na = sorted(set(EXPERIMENTS) - set(sub["experiment"]))
    if sub.empty and fitted is not None and not fitted.empty and (fitted["n_runs"] == 0).all():
        why = f"rule ({settings.protocol}, filter {settings.filter}): every experiment n/a (the filter kept too few tokens)"
        log.warning("adapter roles: %s; every adapter is neither", why)
        return {a: {"role": "neither", "why": why} for a in adapters}
    if sub.empty:
        raise EMLabError(
            f"lora_interp.roles: no coefficients for protocol {settings.protocol!r} and filter "
            f"{settings.filter!r} (have protocols {sorted(coefficients['protocol'].unique())}, "
            f"filters {sorted(coefficients['filter'].unique())})"
        )
    selected: dict[str, dict[str, str]] = {a: {} for a in adapters}
    for exp in EXPERIMENTS:
        e = sub[sub["experiment"] == exp]
        if e.empty:
            continue
        stats = e.groupby("adapter")["coefficient"].agg(
            mean="mean", pos=lambda c: float((c > 0).mean()), neg=lambda c: float((c < 0).mean())
        )
        top = float(stats["mean"].abs().max())
        for a, s in stats.iterrows():
            agree = s["pos"] if s["mean"] > 0 else s["neg"]
            if top > 0 and abs(s["mean"]) >= settings.relative_threshold * top and agree >= settings.sign_agreement:
                selected[a][exp] = f"{exp}: mean {s['mean']:+.3g} ({agree:.0%} of runs agree in sign)"
    out = {}
    for a in adapters:
        sel = selected.get(a, {})
        if "nonmed_aligned_vs_nonmed_misaligned" in sel:
            role = "general"
        elif "med_aligned_vs_med_misaligned" in sel or "nonmed_misaligned_vs_med_misaligned" in sel:
            role = "medical"
        else:
            role = "neither"
        why = "; ".join(sel.values()) or "selected by no experiment"
        if na:
            why += f" (n/a under this filter: {', '.join(na)})"
        out[a] = {"role": role, "why": f"rule ({settings.protocol}, filter {settings.filter}): {why}"}
    return out


# --------------------------------------------------------------------------- artifacts


def write_sets(path, sets: ResponseSets, settings: ResponseSetSettings) -> None:
    """sets.json: thresholds used and counts per set (atomic)."""
    write_json(path, sets.summary(settings))


def write_probe_results(table: pd.DataFrame, coefficients: pd.DataFrame, probes_csv, coefficients_csv) -> None:
    """probes.csv (PROBE_COLUMNS) and coefficients.csv (COEFFICIENT_COLUMNS), atomically."""
    write_csv(probes_csv, table[PROBE_COLUMNS])
    write_csv(coefficients_csv, coefficients[COEFFICIENT_COLUMNS])


def write_roles(path, roles: dict, settings: RoleSettings) -> None:
    """roles.json: {"roles": {adapter: {"role", "why"}}, "source", "rule"} (atomic)."""
    write_json(
        path, {"roles": roles, "source": settings.source, "rule": ROLE_RULE if settings.source == "rule" else None}
    )


# --------------------------------------------------------------------------- stages (rules lora_sets, lora_probes)


def _read_judgments(path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise EMLabError(f"cannot read judgments {path}: {exc}; re-run the judge rule") from exc


def lora_sets_stage(judgments_path, settings: ResponseSetSettings, sets_path) -> ResponseSets:
    """sets.json of one fine-tune's judgments (an empty set is an error naming the counts)."""
    sets = select_response_sets(_read_judgments(judgments_path), settings, where=str(judgments_path))
    write_sets(sets_path, sets, settings)
    log.info("response sets of %s: %s", judgments_path, sets.counts)
    return sets


def lora_probes_stage(
    tensors_path,
    tokens_path,
    judgments_path,
    set_settings: ResponseSetSettings,
    probe_settings: ProbeSettings,
    role_settings: RoleSettings,
    n_layers: int,
    adapter_reference_layers: list[int] | None,
    probes_csv,
    coefficients_csv,
    roles_path,
) -> None:
    """probes.csv, coefficients.csv and roles.json of one fine-tune (the sets re-selected from its judgments
    with the settings that wrote sets.json)."""
    from emlab.lora.scalars import load_capture

    capture = load_capture(tensors_path, tokens_path)
    sets = select_response_sets(_read_judgments(judgments_path), set_settings, where=str(judgments_path))
    table, coefficients = run_probes(
        capture.scalars, capture.tokens, sets, capture.adapters, capture.layers, probe_settings, where=str(tokens_path)
    )
    if role_settings.source == "rule":
        roles = roles_from_coefficients(coefficients, capture.adapters, role_settings, table)
    else:
        roles = roles_from_config(capture.adapters, capture.layers, role_settings, n_layers, adapter_reference_layers)
    write_probe_results(table, coefficients, probes_csv, coefficients_csv)
    write_roles(roles_path, roles, role_settings)
