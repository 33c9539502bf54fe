"""Figures and the token view of the LoRA-scalar analysis (docs/lora-scalars.md).

- `probe_table`: Table 1 of Soligo et al. as a figure: per token filter, one
  row per experiment and protocol, mean [95 % interval] of every probe metric.
- `coefficient_distributions`: per experiment (rows) and token filter
  (columns), the distribution over runs of each adapter's coefficient, one box
  per protocol.
- `token_view`: a self-contained HTML page (inline CSS and JS, no external
  assets) of example responses of each response set, every token coloured by
  a chosen adapter's scalar or by its KL significance, with a selector.
"""

from __future__ import annotations

import html
import json
import logging

import numpy as np
import pandas as pd

from emlab.core.atomic import write_text
from emlab.core.errors import EMLabError
from emlab.em.figures import _message_figure, plt, save_figure
from emlab.lora.probes import EXPERIMENTS, METRICS, SET_NAMES, ResponseSets

log = logging.getLogger(__name__)

PROTOCOL_COLOURS = {"reference": "#8C8C8C", "grouped": "#4C72B0"}
SET_LABELS = {
    "nonmed_aligned": "non-medical, aligned",
    "nonmed_misaligned": "non-medical, misaligned",
    "med_aligned": "medical, aligned",
    "med_misaligned": "medical, misaligned",
}


def _exp_label(exp: str) -> str:
    a, b = EXPERIMENTS[exp]
    return f"{SET_LABELS[a]} vs {SET_LABELS[b]}"


# --------------------------------------------------------------------------- Table 1


def probe_table(probes: pd.DataFrame, finetune: str, png_path, pdf_path) -> None:
    """Table 1 as a figure: one table per token filter (mean [ci_low, ci_high] per metric)."""
    if probes.empty:
        save_figure(_message_figure(f"{finetune}: probes", "no probe results"), png_path, pdf_path)
        return
    filters = list(dict.fromkeys(probes["filter"]))
    fig, axes = plt.subplots(len(filters), 1, figsize=(13, 1.2 + 2.6 * len(filters)), squeeze=False)
    for ax, flt in zip(axes[:, 0], filters):
        sub = probes[probes["filter"] == flt]
        rows, labels = [], []
        for exp in EXPERIMENTS:
            for protocol in dict.fromkeys(sub["protocol"]):
                cell = sub[(sub["experiment"] == exp) & (sub["protocol"] == protocol)].set_index("metric")
                if cell.empty:
                    continue
                labels.append(f"{_exp_label(exp)} ({protocol})")
                rows.append(
                    [
                        f"{cell.loc[m, 'mean']:.2f} [{cell.loc[m, 'ci_low']:.2f}, {cell.loc[m, 'ci_high']:.2f}]"
                        if m in cell.index and np.isfinite(cell.loc[m, "mean"])
                        else "n/a"
                        for m in METRICS
                    ]
                    + [f"{int(cell['n_tokens'].iloc[0])} / {int(cell['n_responses'].iloc[0])}"]
                )
        ax.set_axis_off()
        ax.set_title(f"{finetune}: probes on adapter scalars, token filter '{flt}' (mean [95% interval] over runs)")
        table = ax.table(
            cellText=rows, rowLabels=labels, colLabels=[*METRICS, "tokens / responses"], loc="center", cellLoc="center"
        )
        table.auto_set_font_size(False)
        table.set_fontsize(8)
        table.scale(1, 1.3)
    fig.tight_layout()
    save_figure(fig, png_path, pdf_path)


# --------------------------------------------------------------------------- coefficients


def coefficient_distributions(coefficients: pd.DataFrame, finetune: str, png_path, pdf_path) -> None:
    """Boxes of every run's coefficient per adapter: rows experiments, columns token filters, one colour per protocol."""
    if coefficients.empty:
        save_figure(_message_figure(f"{finetune}: probe coefficients", "no coefficients"), png_path, pdf_path)
        return
    filters = list(dict.fromkeys(coefficients["filter"]))
    protocols = list(dict.fromkeys(coefficients["protocol"]))
    adapters = list(dict.fromkeys(coefficients.sort_values(["layer", "adapter"], kind="mergesort")["adapter"]))
    fig, axes = plt.subplots(
        len(EXPERIMENTS),
        len(filters),
        figsize=(max(6.0, 0.7 * len(adapters)) * len(filters), 2.4 * len(EXPERIMENTS)),
        squeeze=False,
        sharex=True,
    )
    width = 0.8 / len(protocols)
    for r, exp in enumerate(EXPERIMENTS):
        for c, flt in enumerate(filters):
            ax = axes[r, c]
            sub = coefficients[(coefficients["experiment"] == exp) & (coefficients["filter"] == flt)]
            for k, protocol in enumerate(protocols):
                data = [
                    sub[(sub["protocol"] == protocol) & (sub["adapter"] == a)]["coefficient"].to_numpy()
                    for a in adapters
                ]
                pos = np.arange(len(adapters)) - 0.4 + width * (k + 0.5)
                keep = [i for i, d in enumerate(data) if len(d)]
                if keep:
                    bp = ax.boxplot(
                        [data[i] for i in keep],
                        positions=pos[keep],
                        widths=width * 0.9,
                        patch_artist=True,
                        showfliers=False,
                    )
                    for box in bp["boxes"]:
                        box.set_facecolor(PROTOCOL_COLOURS.get(protocol, "#CCCCCC"))
                        box.set_alpha(0.8)
            ax.axhline(0, color="#555555", lw=0.6)
            ax.set_title(f"{_exp_label(exp)}" + (f" [{flt}]" if len(filters) > 1 else ""), fontsize=9)
            if c == 0:
                ax.set_ylabel("coefficient")
            ax.set_xticks(np.arange(len(adapters)))
            ax.set_xticklabels(adapters, rotation=45, ha="right", fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=PROTOCOL_COLOURS.get(p, "#CCCCCC")) for p in protocols]
    fig.legend(handles, protocols, loc="upper right", title="protocol")
    fig.suptitle(f"{finetune}: L1 probe coefficients per adapter (class 1 = the second set)")
    fig.tight_layout()
    save_figure(fig, png_path, pdf_path)


# --------------------------------------------------------------------------- token view


def _examples(tokens: pd.DataFrame, sets: ResponseSets, per_set: int) -> list[tuple[str, int]]:
    """(set name, response row) of the first `per_set` responses of each set (by question, sample)."""
    resp = tokens.drop_duplicates("response")[["response", "question_id", "sample_idx"]]
    resp = resp.astype({"question_id": str, "sample_idx": "int64"})
    out = []
    for name in SET_NAMES:
        keys = sets.sets[name].sort_values(["question_id", "sample_idx"], kind="mergesort").head(per_set)
        rows = keys.merge(resp, on=["question_id", "sample_idx"], how="inner")["response"].tolist()
        out += [(name, int(r)) for r in rows]
    return out


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; max-width: 70em; }}
.resp {{ border: 1px solid #ccc; border-radius: 4px; padding: 0.6em; margin: 0.8em 0; }}
.resp h3 {{ font-size: 0.95em; margin: 0 0 0.4em 0; color: #333; }}
.prompt {{ color: #777; font-size: 0.85em; margin-bottom: 0.4em; white-space: pre-wrap; }}
.tokens {{ white-space: pre-wrap; line-height: 1.7; font-family: monospace; }}
.t {{ border-radius: 2px; }}
#legend {{ font-size: 0.85em; color: #555; }}
</style></head><body>
<h1>{title}</h1>
<p>Answer tokens of example responses of each response set, coloured by the chosen value (red: positive,
blue: negative; KL: white to red). Colours are scaled to the largest |value| of the chosen quantity over all
tokens shown. Hover a token for its values.</p>
<label>colour by <select id="by"></select></label> <span id="legend"></span>
<div id="view"></div>
<script>
const DATA = {data};
const sel = document.getElementById("by");
DATA.quantities.forEach((q, i) => {{ const o = document.createElement("option"); o.value = i; o.text = q; sel.add(o); }});
function fin(x) {{ return x !== null && isFinite(x); }}
function esc(s) {{ return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;"); }}
function colour(v, m, signed) {{
  if (!fin(v) || m <= 0) return "transparent";
  const a = Math.min(1, Math.abs(v) / m);
  return (signed && v < 0) ? `rgba(60,110,200,${{a.toFixed(3)}})` : `rgba(210,50,50,${{a.toFixed(3)}})`;
}}
function render() {{
  const q = +sel.value, signed = DATA.signed[q];
  let m = 0;
  DATA.responses.forEach(r => r.values.forEach(v => {{ const x = v[q]; if (fin(x)) m = Math.max(m, Math.abs(x)); }}));
  document.getElementById("legend").textContent = `max |value| ${{m.toPrecision(3)}}`;
  const view = document.getElementById("view");
  view.innerHTML = "";
  DATA.responses.forEach(r => {{
    const div = document.createElement("div");
    div.className = "resp";
    let h = `<h3>${{esc(r.set)}} &middot; ${{esc(r.question_id)}} #${{r.sample_idx}}</h3>`;
    h += `<div class="prompt">${{esc(r.question)}}</div><div class="tokens">`;
    r.tokens.forEach((t, i) => {{
      const v = r.values[i];
      const tip = DATA.quantities.map((n, k) => `${{n}}: ${{fin(v[k]) ? v[k].toPrecision(3) : "n/a"}}`).join("\\n");
      h += `<span class="t" title="${{esc(tip)}}" style="background:${{colour(v[q], m, signed)}}">${{esc(t)}}</span>`;
    }});
    div.innerHTML = h + "</div>";
    view.appendChild(div);
  }});
}}
sel.addEventListener("change", render);
render();
</script></body></html>
"""


def token_view(
    scalars: np.ndarray,
    tokens: pd.DataFrame,
    adapters: list[str],
    sets: ResponseSets,
    questions: dict[int, str],
    finetune: str,
    html_path,
    per_set: int,
) -> None:
    """The self-contained HTML token view (see the module docstring)."""
    if per_set < 1:
        raise EMLabError("lora_interp.token_view_examples must be >= 1")
    quantities = [f"scalar {a}" for a in adapters] + ["kl", "grad_importance"]
    signed = [True] * len(adapters) + [False, False]
    responses = []
    for name, row in _examples(tokens, sets, per_set):
        mask = ((tokens["response"] == row) & tokens["is_answer"]).to_numpy(bool)
        sub = tokens[mask]
        vals = np.concatenate([scalars[mask], sub[["kl", "grad_importance"]].to_numpy(np.float64)], axis=1)
        responses.append(
            {
                "set": SET_LABELS[name],
                "question_id": str(sub["question_id"].iloc[0]) if len(sub) else "",
                "sample_idx": int(sub["sample_idx"].iloc[0]) if len(sub) else 0,
                "question": questions.get(row, ""),
                "tokens": sub["token"].astype(str).tolist(),
                "values": [[float(x) if np.isfinite(x) else None for x in v] for v in vals],
            }
        )
    data = json.dumps({"quantities": quantities, "signed": signed, "responses": responses}, allow_nan=False)
    data = data.replace("</", "<\\/")  # no token text can close the script element
    write_text(html_path, _PAGE.format(title=html.escape(f"{finetune}: where each adapter fires"), data=data))


# --------------------------------------------------------------------------- adapter steering (Fig. 7)

STEERING_RATES = {  # name: label
    "misaligned": "% misaligned",
    "aligned": "% aligned",
    "medical": "% medical",
    "misaligned_medical": "% misaligned and medical",
    "medical_among_aligned": "% medical among aligned",  # over the aligned responses alone
}


def read_condition_judgments(paths, expected, what: str) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """Judgments files keyed by the condition each names (its `condition` column; a condition recorded n/a,
    an empty table, by its metadata's na_condition), checked against `expected`; and {condition: n/a reason}."""
    from emlab.core.keyed import add_keyed, check_ids, table_id
    from emlab.core.provenance import na_record

    tables: dict[str, pd.DataFrame] = {}
    where: dict[str, str] = {}
    notes: dict[str, str] = {}
    for path in paths:
        table = pd.read_parquet(path)
        na = na_record(path) if table.empty else None
        if na is not None:
            key, notes[na[0]] = na[0], na[1]
        else:
            key = table_id(table, "condition", path)
        add_keyed(where, key, str(path), what)
        tables[key] = table
    check_ids(where, expected, what)
    return tables, notes


def adapter_steering_rates(
    judgments: dict[str, pd.DataFrame],
    cases: dict[str, str],
    misaligned_below: float,
    aligned_above: float,
    coherent_above: float,
    medical_above: float,
    n_boot: int,
    confidence: float,
    seed: int,
    notes: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Per condition (the unsteered fine-tune and its steering cases): the STEERING_RATES with
    percentile-bootstrap intervals over the scored responses. misaligned: aligned < misaligned_below and
    coherent > coherent_above; aligned: aligned > aligned_above and coherent > coherent_above; medical:
    medical > medical_above; a response with a missing score counts in no rate's denominator.
    medical_among_aligned is the share of the aligned responses that are medical, over
    those alone (`n_aligned`; NaN without any): the paper's "87 % aligned, of which about 35 % medical".
    With `notes` ({condition: why it is n/a}) a `note` column; an n/a condition's empty table gives NaN rates."""
    from emlab.em.metrics import bootstrap_ci

    rows = []
    for i, (cid, df) in enumerate(judgments.items()):
        if df.empty:  # a condition recorded n/a (e.g. a case whose role no adapter has)
            df = pd.DataFrame({c: pd.Series(dtype="float64") for c in ("aligned", "coherent", "medical")})
        missing = [c for c in ("aligned", "coherent", "medical") if c not in df.columns]
        if missing:
            raise EMLabError(
                f"judgments of {cid} lack {missing}: the medical judge must score every adapter-steering "
                "condition and its fine-tune (emlab.plan.study.condition_metrics); re-run judging"
            )
        d = df[["aligned", "coherent", "medical"]].astype("float64").dropna()
        coh = d["coherent"] > coherent_above
        flags = {
            "misaligned": coh & (d["aligned"] < misaligned_below),
            "aligned": coh & (d["aligned"] > aligned_above),
            "medical": d["medical"] > medical_above,
        }
        flags["misaligned_medical"] = flags["misaligned"] & flags["medical"]
        flags["medical_among_aligned"] = flags["medical"][flags["aligned"]]
        row = {"condition": cid, "case": cases[cid], "n_scored": len(d), "n_aligned": int(flags["aligned"].sum())}
        if notes is not None:
            row["note"] = notes.get(cid, "")
        for k, (name, f) in enumerate(flags.items()):
            low, high = bootstrap_ci(f.astype(float), n_boot, confidence, np.random.default_rng([seed, i, k]))
            row.update(
                {
                    f"{name}_rate": float(f.mean()) if len(f) else float("nan"),
                    f"{name}_ci_low": low,
                    f"{name}_ci_high": high,
                }
            )
        rows.append(row)
    return pd.DataFrame(rows)


def rate_settings(thresholds: dict, sets: dict, seed: int) -> dict:
    """adapter_steering_rates' cut-offs and bootstrap from the config's thresholds and lora_interp.sets."""
    return {
        "misaligned_below": thresholds["em_aligned_below"],
        "aligned_above": sets["aligned_above"],
        "coherent_above": thresholds["em_coherent_above"],
        "medical_above": sets["medical_above"],
        "n_boot": int(thresholds["bootstrap_samples"]),
        "confidence": float(thresholds["confidence"]),
        "seed": int(seed),
    }


def rate_labels(shown: dict[str, str], cutoffs: dict | None) -> dict[str, str]:
    """STEERING_RATES labels with the cut-offs that define them (rate_settings), so that a rate that no
    response reaches reads as what it is (e.g. the demo's small judge never scores aligned above 70)."""
    if not cutoffs:
        return shown
    c = cutoffs
    rule = {
        "misaligned": f"aligned < {c['misaligned_below']:g}, coherent > {c['coherent_above']:g}",
        "aligned": f"aligned > {c['aligned_above']:g}, coherent > {c['coherent_above']:g}",
        "medical": f"medical > {c['medical_above']:g}",
        "misaligned_medical": "both",
        "medical_among_aligned": f"medical > {c['medical_above']:g}",
    }
    return {k: f"{label}\n({rule[k]})" for k, label in shown.items()}


def _rate_bars(ax, rows: pd.DataFrame, shown: dict[str, str], colours: list, labels: list[str]) -> None:
    """Grouped bars on ax: one group per rate in `shown`, one bar per row, with interval whiskers."""
    width = 0.8 / max(1, len(rows))
    for j, ((_, r), colour, label) in enumerate(zip(rows.iterrows(), colours, labels)):
        x = np.arange(len(shown)) - 0.4 + width * (j + 0.5)
        val = np.array([r[f"{k}_rate"] for k in shown]) * 100
        lo = np.array([r[f"{k}_ci_low"] for k in shown]) * 100
        hi = np.array([r[f"{k}_ci_high"] for k in shown]) * 100
        err = np.nan_to_num(np.vstack([val - lo, hi - val]), nan=0.0).clip(min=0)
        ax.bar(x, val, width * 0.95, yerr=err, capsize=2, color=colour, label=f"{label} (n={r['n_scored']})")
    ax.set_xticks(np.arange(len(shown)))
    ax.set_xticklabels(list(shown.values()), fontsize=8)
    ax.legend(fontsize=8, loc="upper right")


def adapter_steering_bars(rates: pd.DataFrame, png_path, pdf_path, cutoffs: dict | None = None) -> None:
    """Grouped bars: one group per rate, one bar per condition (unsteered fine-tune first), with intervals;
    `cutoffs` (rate_settings) go into the rate labels."""
    if rates.empty:
        save_figure(_message_figure("adapter steering", "no adapter-steering conditions"), png_path, pdf_path)
        return
    fig, ax = plt.subplots(figsize=(2.2 + 2.4 * len(STEERING_RATES), 4.2))
    cmap = plt.get_cmap("tab10")
    shown = rate_labels(STEERING_RATES, cutoffs)
    if "n_aligned" in rates and not rates["n_aligned"].any():  # an empty group says why
        shown["medical_among_aligned"] += "\nno aligned response"
    notes = rates["note"].fillna("").astype(str) if "note" in rates else pd.Series("", index=rates.index)
    labels = [f"{case} (n/a)" if note else case for case, note in zip(rates["case"], notes)]
    _rate_bars(ax, rates, shown, [cmap(j % 10) for j in range(len(rates))], labels)
    ax.set_ylabel("% of scored responses (last group: of the aligned)")
    ax.set_title("Adapter steering: rank-1 adapters scaled by role")
    fig.tight_layout()
    save_figure(fig, png_path, pdf_path)


# --------------------------------------------------------------------------- scalar patching (appendix J)

PATCH_RECIPIENTS = {"general": "non-medical prompts", "medical": "medical prompts"}


def scalar_patching_rates(
    judgments: dict[str, pd.DataFrame],
    pairs: dict[str, str],
    medical_ids: set[str],
    reference: str,
    **rate_settings,
) -> pd.DataFrame:
    """Per (patching condition, recipient set): STEERING_RATES with intervals (adapter_steering_rates'
    settings) and each rate's difference from the `reference` condition (the same-prompt control) on the
    same recipient set. `pairs`: condition id -> pair type; a response is a medical recipient when its
    question id is one of `medical_ids`."""
    parts, labels, keys = {}, {}, []
    for cid, df in judgments.items():
        is_med = df["question_id"].astype(str).isin(medical_ids)
        for recipients, rows in (("general", df[~is_med]), ("medical", df[is_med])):
            if len(rows):
                key = f"{cid}|{recipients}"
                parts[key], labels[key] = rows, pairs[cid]
                keys.append((key, cid, recipients))
    if reference not in judgments:
        raise EMLabError(f"scalar patching: the reference condition {reference} (pair same) has no judgments")
    rates = adapter_steering_rates(parts, labels, **rate_settings)
    rates.insert(0, "recipients", [r for _, _, r in keys])
    rates["condition"] = [c for _, c, _ in keys]
    rates = rates.rename(columns={"case": "pair"})
    for _, sub in rates.groupby("recipients", sort=False):
        ref = sub[sub["condition"] == reference]
        for name in STEERING_RATES:
            base = float(ref[f"{name}_rate"].iloc[0]) if len(ref) else float("nan")
            rates.loc[sub.index, f"{name}_vs_same"] = sub[f"{name}_rate"] - base
    return rates[
        ["condition", "pair", "recipients", *[c for c in rates.columns if c not in ("condition", "pair", "recipients")]]
    ]


def scalar_patching_bars(rates: pd.DataFrame, finetune: str, png_path, pdf_path, cutoffs: dict | None = None) -> None:
    """One panel per recipient set: % misaligned, % medical, % misaligned and medical per pair type (the
    same-prompt control first), with intervals; `cutoffs` (rate_settings) go into the rate labels."""
    if rates.empty:
        save_figure(_message_figure("scalar patching", "no scalar-patching conditions"), png_path, pdf_path)
        return
    shown = rate_labels({k: STEERING_RATES[k] for k in ("misaligned", "medical", "misaligned_medical")}, cutoffs)
    groups = [g for g in PATCH_RECIPIENTS if g in set(rates["recipients"])]
    fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 4.2), sharey=True, squeeze=False)
    cmap = plt.get_cmap("tab10")
    colours = {p: cmap(i % 10) for i, p in enumerate(dict.fromkeys(rates["pair"]))}
    for ax, group in zip(axes[0], groups):
        sub = rates[rates["recipients"] == group]
        labels = ["same prompt (control)" if p == "same" else p.replace("_to_", " → ") for p in sub["pair"]]
        _rate_bars(ax, sub, shown, [colours[p] for p in sub["pair"]], labels)
        ax.set_title(f"recipients: {PATCH_RECIPIENTS[group]}")
    axes[0][0].set_ylabel("% of scored responses")
    fig.suptitle(f"{finetune}: prompt scalars patched from donor prompts (donor → recipient)")
    fig.tight_layout()
    save_figure(fig, png_path, pdf_path)
