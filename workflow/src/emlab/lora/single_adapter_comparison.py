"""The single-adapter comparison table (docs/linear-directions.md, "The single rank-1 adapter").

One row per mean-diff vector a single rank-1 adapter fine-tune is compared with
(its own v_l, and the reference vector of single_adapter.reference_vector): the
analysis's cos(B, v) and downstream convergence, and the EM rates of the
fine-tune unmodified, with v ablated from every layer and with v projected out
of B. Tables only (no torch): the rule runs after judging and re-runs when a
threshold changes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from emlab.core.errors import EMLabError

COMPARISON_COLUMNS = [
    "finetune",
    "role",
    "vector",
    "vector_layer",
    "adapter_layer",
    "cosine_b_v",
    "convergence_layer",
    "convergence_cosine",
    "em_unmodified",
    "ablation_condition",
    "em_ablated",
    "ablation_reduction",
    "projection_condition",
    "em_projected",
    "projection_reduction",
    "note",
]


def comparison_table(finetune: str, planned: list[dict], summary: dict, metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per compared vector (own, reference) of a single-adapter fine-tune: cos(B, v), downstream
    convergence at the last layer, and EM of the fine-tune unmodified, with v ablated from every layer and with v
    projected out of B, with the relative reductions (1 - EM(edited) / EM(unmodified); NaN when EM(unmodified) is 0).

    `planned`: emlab.plan.study.ComparedVector.to_params() of each vector (role, finetune, layer and the two
    condition ids); `summary`: the analysis's summary.json; `metrics`: em_by_condition.csv. Rows are matched by
    role and checked against the vector and layer each source names, never by position.
    """
    if str(summary.get("finetune")) != finetune:
        raise EMLabError(f"the single-adapter summary is of {summary.get('finetune')!r}, not {finetune!r}")
    measured = {}
    for entry in summary.get("vectors") or []:
        if entry["role"] in measured:
            raise EMLabError(f"the single-adapter summary of {finetune!r} lists role {entry['role']!r} twice")
        measured[entry["role"]] = entry
    repeated = sorted(set(metrics.loc[metrics["condition"].duplicated(), "condition"]))
    if repeated:
        raise EMLabError(f"em_by_condition.csv has several rows for condition(s) {repeated}; re-run em_metrics")
    em = metrics.set_index("condition")

    def rate(cid: str) -> tuple[float, str]:
        if cid not in em.index:
            raise EMLabError(f"em_by_condition.csv has no row for condition {cid!r}; re-run em_metrics")
        note = em.loc[cid, "note"] if "note" in em.columns else None
        return float(em.loc[cid, "em_rate"]), (note if isinstance(note, str) and note else "")

    em_unmodified, unmod_note = rate(finetune)
    rows = []
    for want in planned:
        got = measured.get(want["role"])
        if got is None or (str(got["vector"]), int(got["vector_layer"])) != (want["finetune"], int(want["layer"])):
            raise EMLabError(
                f"the single-adapter summary of {finetune!r} does not hold the planned {want['role']} vector "
                f"({want['finetune']} L{want['layer']}; it has "
                f"{None if got is None else (got['vector'], got['vector_layer'])}): re-run single_adapter_analysis"
            )
        em_ablated, ab_note = rate(want["ablation"])
        em_projected, pr_note = rate(want["projection"])
        notes = [n for n in (unmod_note, ab_note, pr_note) if n]
        rows.append(
            {
                "finetune": finetune,
                "role": want["role"],
                "vector": want["finetune"],
                "vector_layer": int(want["layer"]),
                "adapter_layer": int(summary["layer"]),
                "cosine_b_v": float(got["cosine_b_v"]),
                "convergence_layer": int(got["convergence_layer"]),
                "convergence_cosine": float(got["convergence_last_layer"]),
                "em_unmodified": em_unmodified,
                "ablation_condition": want["ablation"],
                "em_ablated": em_ablated,
                "ablation_reduction": _reduction(em_ablated, em_unmodified),
                "projection_condition": want["projection"],
                "em_projected": em_projected,
                "projection_reduction": _reduction(em_projected, em_unmodified),
                "note": "; ".join(dict.fromkeys(notes)),
            }
        )
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def _reduction(edited: float, unmodified: float) -> float:
    """1 - edited / unmodified: the share of the EM rate an edit removes (NaN without EM to remove)."""
    if not np.isfinite(unmodified) or unmodified <= 0 or not np.isfinite(edited):
        return float("nan")
    return 1.0 - edited / unmodified
