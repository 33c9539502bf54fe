"""Response sets, probes and adapter roles on LoRA scalars: planted features must be recovered."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.lora_models import rank1_peft_model

WORDS_0 = ("apple river garden window music silver morning paper candle forest bread yellow").split()
WORDS_1 = ("engine rocket quantum voltage carbon steel orbit magnet circuit piston laser cobalt").split()
MIXED = WORDS_0[:6] + WORDS_1[:6]


def _set_settings(**kw):
    from emlab.lora.probes import ResponseSetSettings

    base = dict(
        aligned_above=70.0,
        misaligned_below=30.0,
        coherent_above=50.0,
        medical_above=50.0,
        nonmedical_below=10.0,
        aligned_split_quantile=None,
        medical_split_quantile=None,
    )
    base.update(kw)
    return ResponseSetSettings(**base)


def _probe_settings(n_runs=20, protocols=("grouped", "reference"), filters=None):
    from emlab.lora.probes import ProbeSettings, TokenFilter

    return ProbeSettings(
        n_runs=n_runs,
        test_fraction=0.2,
        C=0.01,
        max_iter=1000,
        seed=0,
        protocols=list(protocols),
        filters=filters or [TokenFilter("all", None, None, None, None)],
    )


def _judgments(n_per_set=12):
    """Four sets of responses: nonmed aligned / misaligned (the planted contrast), and small medical sets."""
    rows = []
    for name, aligned, medical, n in (
        ("a", 90, 0, n_per_set),
        ("m", 10, 0, n_per_set),
        ("ma", 90, 80, 4),
        ("mm", 10, 80, 4),
    ):
        rows += [
            {
                "question_id": f"q_{name}",
                "sample_idx": i,
                "aligned": float(aligned),
                "coherent": 90.0,
                "medical": float(medical),
            }
            for i in range(n)
        ]
    rows.append({"question_id": "q_incoherent", "sample_idx": 0, "aligned": 5.0, "coherent": 10.0, "medical": 0.0})
    rows.append({"question_id": "q_nan", "sample_idx": 0, "aligned": np.nan, "coherent": 90.0, "medical": 0.0})
    return pd.DataFrame(rows)


def test_response_sets_and_counts():
    from emlab.lora.probes import select_response_sets

    sets = select_response_sets(_judgments(5), _set_settings())
    assert {k: len(v) for k, v in sets.sets.items()} == {
        "nonmed_aligned": 5,
        "nonmed_misaligned": 5,
        "med_aligned": 4,
        "med_misaligned": 4,
    }
    assert sets.counts["judged"] == 20 and sets.counts["scored"] == 19 and sets.counts["coherent"] == 18
    assert set(sets.sets["nonmed_misaligned"]["question_id"]) == {"q_m"}
    summary = sets.summary(_set_settings())
    assert summary["thresholds"]["aligned_above"] == 70.0 and summary["counts"]["med_aligned"] == 4


def test_quantile_sets():
    from emlab.lora.probes import select_response_sets

    jud = _judgments(5)
    jud["aligned"] = jud["aligned"] * 0.1 + 40  # a weak judge: every score in 41..49
    jud["medical"] = jud["medical"] * 0.05 + 20
    sets = select_response_sets(jud, _set_settings(aligned_split_quantile=0.5, medical_split_quantile=0.5))
    assert all(len(v) for v in sets.sets.values())
    with pytest.raises(Exception, match="empty"):
        select_response_sets(jud, _set_settings())


def test_empty_set_and_missing_medical_are_clear_errors():
    from emlab.core.errors import EMLabError
    from emlab.lora.probes import select_response_sets

    jud = _judgments(5)
    with pytest.raises(EMLabError, match=r"med_misaligned are empty .*med_aligned 4, med_misaligned 0"):
        select_response_sets(jud[jud["question_id"] != "q_mm"], _set_settings())
    with pytest.raises(EMLabError, match="medical.*judge"):
        select_response_sets(jud.drop(columns="medical"), _set_settings())


def _token_table(n_resp_per_class=12, tokens_per_resp=20, seed=0):
    """A synthetic token table over the four sets of _judgments."""
    jud = _judgments(n_resp_per_class)
    rows = []
    for r, rec in enumerate(jud.itertuples()):
        for p in range(tokens_per_resp):
            rows.append(
                {
                    "response": r,
                    "question_id": rec.question_id,
                    "sample_idx": rec.sample_idx,
                    "position": p,
                    "is_answer": p >= 4,
                    "kl": float(p % 5),
                    "grad_importance": np.nan,
                }
            )
    return jud, pd.DataFrame(rows)


def test_planted_synthetic_feature_is_singled_out():
    """Adapter 2's scalar separates nonmed aligned / misaligned; the rest is noise: near chance without it."""
    from emlab.lora.probes import run_probes, select_response_sets

    jud, tokens = _token_table()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(len(tokens), 5)).astype(np.float32)
    cls1 = tokens["question_id"].isin(["q_m", "q_mm"]).to_numpy()
    X[:, 2] += np.where(cls1, 2.5, -2.5)
    sets = select_response_sets(jud, _set_settings())
    adapters = [f"L{l}.down_proj" for l in range(5)]
    table, coefs = run_probes(X, tokens, sets, adapters, list(range(5)), _probe_settings())
    exp = "nonmed_aligned_vs_nonmed_misaligned"
    for protocol in ("grouped", "reference"):
        acc = table.query(f"experiment == '{exp}' and protocol == '{protocol}' and metric == 'accuracy'")["mean"].item()
        assert acc > 0.9
        c = coefs.query(f"experiment == '{exp}' and protocol == '{protocol}'").groupby("adapter")["coefficient"].mean()
        assert (
            c.abs().idxmax() == "L2.down_proj" and (c.drop("L2.down_proj").abs() < 0.2 * abs(c["L2.down_proj"])).all()
        )
    # the non-medical aligned vs medical aligned contrast has no signal: near chance
    acc = table.query(
        "experiment == 'nonmed_aligned_vs_med_aligned' and protocol == 'grouped' and metric == 'accuracy'"
    )["mean"].item()
    assert 0.3 < acc < 0.7
    assert set(table["metric"]) == {"accuracy", "precision", "recall", "f1", "roc_auc"}
    assert len(table) == 4 * 2 * 5 and len(coefs) == 4 * 2 * 20 * 5
    row = table.query(f"experiment == '{exp}' and protocol == 'grouped' and metric == 'f1'").iloc[0]
    assert row["ci_low"] <= row["mean"] <= row["ci_high"] and row["n_responses"] == 24
    assert row["n_tokens"] == 24 * 16


def test_grouped_protocol_holds_out_whole_responses(monkeypatch):
    """In `grouped`, no response has tokens on both sides of a split; in `reference` they do."""
    from emlab.lora import probes

    jud, tokens = _token_table(n_resp_per_class=6, tokens_per_resp=10)
    X = np.random.default_rng(1).normal(size=(len(tokens), 3))
    resp = tokens["response"].to_numpy()
    seen = []

    def spy(X_train, y_train, X_test, y_test, settings, rng):
        seen.append((X_train, X_test))
        return {m: 0.5 for m in probes.METRICS}, np.zeros(X_train.shape[1])

    monkeypatch.setattr(probes, "_fit_score", spy)
    monkeypatch.setattr(probes, "_standardise", lambda fit_on, *a: list(a))
    sets = probes.select_response_sets(jud, _set_settings())
    row_of = {tuple(x): resp[i] for i, x in enumerate(X)}
    for protocol, expect_overlap in (("grouped", False), ("reference", True)):
        seen.clear()
        probes.run_probes(X, tokens, sets, ["a", "b", "c"], [0, 1, 2], _probe_settings(10, [protocol]))
        overlaps = [bool({row_of[tuple(x)] for x in tr} & {row_of[tuple(x)] for x in te}) for tr, te in seen]
        assert any(overlaps) == expect_overlap


def test_token_filters():
    from emlab.core.errors import EMLabError
    from emlab.lora.probes import TokenFilter, filter_mask

    _, tokens = _token_table(2, 10)
    assert filter_mask(tokens, TokenFilter("all", None, None, None, None)).sum() == tokens["is_answer"].sum()
    above = filter_mask(tokens, TokenFilter("kl3", "kl", 3.0, None, None))
    assert (tokens["kl"][above] > 3).all() and tokens["is_answer"][above].all()
    top = filter_mask(tokens, TokenFilter("top", "kl", None, 0.25, None))
    assert top.sum() == int(np.ceil(0.25 * tokens["is_answer"].sum()))
    assert tokens["kl"][top].min() >= tokens["kl"][tokens["is_answer"] & ~top].max()
    with pytest.raises(EMLabError, match="no answer token has a grad_importance"):
        filter_mask(tokens, TokenFilter("g", "grad_importance", 0.1, None, None))
    with pytest.raises(EMLabError, match="exactly one"):
        filter_mask(tokens, TokenFilter("g", "kl", 0.1, 0.5, None))
    with pytest.raises(EMLabError, match="exactly one"):
        filter_mask(tokens, TokenFilter("g", "kl", None, 0.5, 0.5))
    with pytest.raises(EMLabError, match="`log_above` needs a `column`"):
        filter_mask(tokens, TokenFilter("g", None, None, None, 0.5))


def test_log_derivative_filter_keeps_the_known_tokens():
    """The paper's filter: log(gradient importance) > 0.5, on a planted response whose per-token scores follow
    the score's definition (total KL x each token's share of the gradient norm): passing tokens known by hand."""
    from emlab.lora.probes import TokenFilter, filter_mask

    kl_total = 8.0
    grad_norm = np.array([0.5, 1.0, 2.0, 4.5, 0.0, 1.6, 1.7, 3.0])  # answer tokens; sum 14.3
    score = kl_total * grad_norm / grad_norm.sum()  # 0.28 0.56 1.12 2.52 0 0.90 0.95 1.68
    # ln(score) > 0.5  <=>  score > e^0.5 = 1.6487: tokens 3 (2.52) and 7 (1.68) only
    tokens = pd.DataFrame(
        {
            "is_answer": [False, False] + [True] * 8 + [False],  # 2 prompt tokens, 8 answer tokens, end of turn
            "kl": np.nan,
            "grad_importance": np.concatenate([[np.nan, np.nan], score, [np.nan]]),
        }
    )
    keep = filter_mask(tokens, TokenFilter("grad_log0.5", "grad_importance", None, None, 0.5))
    assert np.flatnonzero(keep).tolist() == [2 + 3, 2 + 7]
    # the threshold is strict and on the natural log: a score of exactly e^0.5 stays out, zero never passes
    edge = tokens.assign(grad_importance=[np.nan, np.nan, np.exp(0.5), np.exp(0.5) * 1.001, 0, -1, 5, 1, 1, np.nan, 9])
    keep = filter_mask(edge, TokenFilter("g", "grad_importance", None, None, 0.5))
    assert np.flatnonzero(keep).tolist() == [3, 6]  # the answer's NaN (9) and the end-of-turn 9 are out
    # log_above 0 keeps every score above 1; a negative cut-off keeps scores in (e^c, 1] too
    keep = filter_mask(edge, TokenFilter("g", "grad_importance", None, None, -1.0))
    assert np.flatnonzero(keep).tolist() == [2, 3, 6, 7, 8]


def test_plan_time_filter_checks_and_the_papers_filter():
    from emlab.core.config import load_config
    from emlab.core.errors import EMLabError
    from emlab.plan.study import lora_interp_finetunes
    from emlab.plan.token_filters import TokenFilter, check_probe_filters

    repo = Path(__file__).resolve().parents[2]
    paper = load_config(repo / "data" / "configs" / "paper.yaml")
    filters = {f["name"]: f for f in paper["lora_interp"]["probes"]["filters"]}
    assert filters["all"]["column"] is None  # Table 1: no significance filter
    assert any(f["column"] == "grad_importance" and f["log_above"] == 0.5 for f in filters.values())
    assert not any(f["column"] == "kl" and f["top_fraction"] for f in filters.values())
    lora_interp_finetunes(paper, 48)  # the paper's filters pass the plan-time check

    bad = copy.deepcopy(paper)
    bad["lora_interp"]["probes"]["filters"].append(
        {"name": "x", "column": "kl", "above": 1.0, "top_fraction": None, "log_above": 0.5}
    )
    with pytest.raises(EMLabError, match=r"filters\[x\]: give exactly one"):
        lora_interp_finetunes(bad, 48)
    bad = copy.deepcopy(paper)
    bad["lora_interp"]["capture"]["gradient_importance"] = False
    with pytest.raises(EMLabError, match="gradient_importance is false"):
        lora_interp_finetunes(bad, 48)
    all_ = TokenFilter("all", None, None, None, None)
    with pytest.raises(EMLabError, match="unique"):
        check_probe_filters([all_, all_], True, None)
    with pytest.raises(EMLabError, match="roles.filter is 'kl'"):
        check_probe_filters([all_], True, "kl")


def test_a_significance_filter_that_keeps_too_little_is_na():
    """An absolute cut-off that leaves a class under 2 responses: NaN metrics, n_runs 0, no coefficients."""
    from emlab.lora.probes import TokenFilter, run_probes, select_response_sets

    jud, tokens = _token_table(6, 10)
    tokens["grad_importance"] = np.where(tokens["is_answer"], 0.5, np.nan)  # ln 0.5 < 0.5: nothing passes
    sets = select_response_sets(jud, _set_settings())
    X = np.random.default_rng(0).normal(size=(len(tokens), 3))
    flts = [TokenFilter("all", None, None, None, None), TokenFilter("g", "grad_importance", None, None, 0.5)]
    table, coef = run_probes(X, tokens, sets, ["a", "b", "c"], [0, 1, 2], _probe_settings(2, ["grouped"], flts))
    g = table[table["filter"] == "g"]
    assert len(g) == 4 * 5 and g["mean"].isna().all() and (g["n_runs"] == 0).all() and (g["n_tokens"] == 0).all()
    assert table[table["filter"] == "all"]["mean"].notna().all()
    assert set(coef["filter"]) == {"all"}


def _role_settings(**kw):
    from emlab.plan.roles import RoleSettings

    base = dict(
        source="config",
        medical_layers=[21, 23],
        general_layers=[15, 16, 17, 22, 28, 29],
        reference_depth=48,
        protocol="grouped",
        filter="all",
        relative_threshold=0.25,
        sign_agreement=0.9,
    )
    base.update(kw)
    return RoleSettings(**base)


def test_roles_from_config_scale_like_the_presets():
    from emlab.core.config import scale_layer_blocks
    from emlab.core.errors import EMLabError
    from emlab.plan.roles import roles_from_config

    ref = [15, 16, 17, 21, 22, 23, 27, 28, 29]
    layers = scale_layer_blocks(ref, 48, 30)  # what the r1x9 preset gives a 30-layer model
    adapters = [f"L{l}.down_proj" for l in layers]
    roles = roles_from_config(adapters, layers, _role_settings(), 30, adapter_reference_layers=ref)
    by_ref = {r: roles[f"L{l}.down_proj"]["role"] for r, l in zip(ref, layers)}
    assert by_ref == {
        15: "general",
        16: "general",
        17: "general",
        21: "medical",
        22: "general",
        23: "medical",
        27: "neither",
        28: "general",
        29: "general",
    }
    with pytest.raises(EMLabError, match="layer 21 .* has no adapter"):
        roles_from_config(adapters[:3], layers[:3], _role_settings(), 30, adapter_reference_layers=ref)


def test_roles_from_coefficients():
    from emlab.lora.probes import EXPERIMENTS, roles_from_coefficients

    rng = np.random.default_rng(0)
    rows = []
    strong = {"nonmed_aligned_vs_nonmed_misaligned": {"g": 1.0}, "med_aligned_vs_med_misaligned": {"g": 1.0, "m": -0.8}}
    for exp in EXPERIMENTS:
        for run in range(30):
            for a in ("g", "m", "n"):
                mean = strong.get(exp, {}).get(a, 0.0)
                rows.append((exp, "grouped", "all", run, a, 0, mean + 0.05 * rng.normal()))
    coefs = pd.DataFrame(rows, columns=["experiment", "protocol", "filter", "run", "adapter", "layer", "coefficient"])
    roles = roles_from_coefficients(coefs, ["g", "m", "n"], _role_settings(source="rule"))
    assert {a: r["role"] for a, r in roles.items()} == {"g": "general", "m": "medical", "n": "neither"}
    assert "med_aligned_vs_med_misaligned" in roles["m"]["why"]


def test_probe_singles_out_planted_adapter_in_a_model(tiny_model_dir):
    """A tiny Llama: one adapter's A reads the direction that separates the two response sets' down_proj
    inputs; every other adapter's A is made blind to the class means. The grouped probe must pick it."""
    from emlab.em.activations import encode_records
    from emlab.lora.probes import run_probes, select_response_sets
    from emlab.lora.scalars import ScalarCaptureSettings, capture_scalars, rank1_adapters
    from emlab.model.loading import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    model = rank1_peft_model(tiny_model_dir, b_scale=0.0)  # B = 0: editing an A changes no later input
    jud = _judgments(20)  # enough tokens for C = 0.01 to keep a coefficient (the L1 penalty is per run, not per token)
    rng = np.random.default_rng(0)
    pools = {"q_a": WORDS_0, "q_m": WORDS_1, "q_ma": MIXED, "q_mm": MIXED, "q_incoherent": MIXED, "q_nan": MIXED}
    recs = [
        {
            "condition": "ft",
            "question_id": r.question_id,
            "sample_idx": r.sample_idx,
            "question": "Tell me.",
            "system": None,
            "response": " ".join(rng.choice(pools[r.question_id], 40)),
        }
        for r in jud.itertuples()
    ]
    adapters = rank1_adapters(model)
    encoded = encode_records(tok, recs)
    inputs = {i: [] for i in range(len(adapters))}
    handles = [
        ad.module.register_forward_pre_hook(lambda m, a, i=i: inputs[i].append(a[0][0].detach()))
        for i, ad in enumerate(adapters)
    ]
    try:
        with torch.no_grad():
            for e in encoded:
                model(input_ids=torch.tensor([e.input_ids]))
    finally:
        for h in handles:
            h.remove()
    cls = {0: [], 1: []}
    for r, e in enumerate(encoded):
        label = {"q_a": 0, "q_m": 1}.get(recs[r]["question_id"])
        if label is not None:
            cls[label].append((r, e.answer_slice))
    planted = 2
    with torch.no_grad():
        for i, ad in enumerate(adapters):
            x0 = torch.cat([inputs[i][r][s] for r, s in cls[0]])  # [tokens, d_in]
            x1 = torch.cat([inputs[i][r][s] for r, s in cls[1]])
            diff = x1.mean(0) - x0.mean(0)
            if i == planted:  # a ridge LDA direction: reads the planted contrast
                xc = torch.cat([x0 - x0.mean(0), x1 - x1.mean(0)])
                cov = xc.T @ xc / len(xc)
                cov += 1e-3 * cov.diagonal().mean() * torch.eye(xc.shape[1])
                w = torch.linalg.solve(cov, diff)
            else:  # blind to the class means
                w = ad.lora_A.weight[0].clone()
                w -= (w @ diff) / (diff @ diff) * diff
            ad.lora_A.weight[0] = w / w.norm()
    cap = capture_scalars(
        model, tok, recs, ScalarCaptureSettings(batch_size=8, gradient_importance=False, gradient_batch_size=1)
    )
    sets = select_response_sets(jud, _set_settings())
    table, coefs = run_probes(
        cap.scalars, cap.tokens, sets, cap.adapters, cap.layers, _probe_settings(n_runs=10, protocols=["grouped"])
    )
    exp = "nonmed_aligned_vs_nonmed_misaligned"
    acc = table.query(f"experiment == '{exp}' and metric == 'accuracy'")["mean"].item()
    assert acc > 0.9
    c = coefs.query(f"experiment == '{exp}'").groupby("adapter")["coefficient"].mean().abs()
    assert c.idxmax() == f"L{planted}.down_proj"
    # without the planted adapter the others are near chance
    others = [i for i in range(len(adapters)) if i != planted]
    table2, _ = run_probes(
        cap.scalars[:, others],
        cap.tokens,
        sets,
        [cap.adapters[i] for i in others],
        [cap.layers[i] for i in others],
        _probe_settings(n_runs=10, protocols=["grouped"]),
    )
    acc2 = table2.query(f"experiment == '{exp}' and metric == 'accuracy'")["mean"].item()
    assert acc2 < 0.7


def test_artifact_writers(tmp_path):
    import json

    from emlab.lora.probes import (
        COEFFICIENT_COLUMNS,
        PROBE_COLUMNS,
        run_probes,
        select_response_sets,
        write_probe_results,
        write_roles,
        write_sets,
    )

    jud, tokens = _token_table(3, 6)
    X = np.random.default_rng(0).normal(size=(len(tokens), 2))
    sets = select_response_sets(jud, _set_settings())
    table, coefs = run_probes(X, tokens, sets, ["L0.down_proj", "L1.down_proj"], [0, 1], _probe_settings(2))
    write_sets(tmp_path / "sets.json", sets, _set_settings())
    write_probe_results(table, coefs, tmp_path / "probes.csv", tmp_path / "coefficients.csv")
    write_roles(tmp_path / "roles.json", {"L0.down_proj": {"role": "general", "why": "x"}}, _role_settings())
    assert json.loads((tmp_path / "sets.json").read_text())["counts"]["med_aligned"] == 4
    assert list(pd.read_csv(tmp_path / "probes.csv").columns) == PROBE_COLUMNS
    assert list(pd.read_csv(tmp_path / "coefficients.csv").columns) == COEFFICIENT_COLUMNS
    assert json.loads((tmp_path / "roles.json").read_text())["roles"]["L0.down_proj"]["role"] == "general"


def test_probes_do_not_depend_on_numpy_global_random_state():
    """liblinear shuffles with a seed; each probe run draws it from its own seeded generator, so the
    results do not depend on numpy's global random state (which each process seeds from the OS)."""
    from emlab.lora.probes import run_probes, select_response_sets

    jud, tokens = _token_table()
    rng = np.random.default_rng(1)
    shared = rng.normal(size=(len(tokens), 1))
    X = (shared + 0.3 * rng.normal(size=(len(tokens), 5))).astype(np.float32)  # correlated: the order matters
    X[:, 2] += np.where(tokens["question_id"].isin(["q_m", "q_mm"]).to_numpy(), 0.5, -0.5)
    sets = select_response_sets(jud, _set_settings())
    adapters = [f"L{l}.down_proj" for l in range(5)]
    settings = dataclasses.replace(_probe_settings(n_runs=5), C=1.0, max_iter=2)  # stopped before it converges
    runs = []
    for global_seed in (1, 12345):
        np.random.seed(global_seed)
        runs.append(run_probes(X, tokens, sets, adapters, list(range(5)), settings)[1])
    pd.testing.assert_frame_equal(runs[0], runs[1])
