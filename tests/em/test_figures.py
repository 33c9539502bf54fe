"""Each figure function writes a non-empty PNG and PDF, for typical and for
degenerate inputs (no conditions of its kind, one fine-tune, missing scores)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from emlab.core.config import validate_config
from emlab.core.settings import build
from emlab.em import figures
from emlab.em.directions import cosine_table
from emlab.em.metrics import EMThresholds, em_tables

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def conditions():
    conds = {
        "base": {"model": "base", "group": "model", "intervention": {"kind": "none"}},
        "ft": {"model": "ft", "group": "model", "intervention": {"kind": "none"}},
        "other": {"model": "other", "group": "model", "intervention": {"kind": "none"}},
    }
    for layer in (1, 2):
        for s in (2.0, 4.0):
            conds[f"steer__ft__L{layer}__s{s:g}"] = {
                "model": "base",
                "group": "steering",
                "intervention": {"kind": "steer", "vector": "ft", "layer": layer, "scale": s},
            }
    conds["ablate__ft__layerwise"] = {
        "model": "ft",
        "group": "ablation",
        "intervention": {"kind": "ablate", "vector": "ft", "mode": "layerwise"},
    }
    conds["ablate__ft__single_L2"] = {
        "model": "ft",
        "group": "ablation",
        "intervention": {"kind": "ablate", "vector": "ft", "mode": "single", "layer": 2},
    }
    conds["ablate__ft__random_L2_seed0"] = {
        "model": "ft",
        "group": "ablation",
        "intervention": {"kind": "ablate", "vector": "ft", "mode": "random", "layer": 2, "seed": 0},
    }
    conds["ablate__other__transfer_ft_L2"] = {
        "model": "other",
        "group": "transfer",
        "intervention": {"kind": "ablate", "vector": "ft", "mode": "single", "layer": 2},
    }
    for s in (2.0, 4.0):  # a semantic steering vector
        conds[f"steer__ft__medical__L2__s{s:g}"] = {
            "model": "base",
            "group": "steering",
            "intervention": {"kind": "steer", "vector": "ft", "split": "medical", "layer": 2, "scale": s},
        }
    conds["single"] = {"model": "single", "group": "model", "intervention": {"kind": "none"}}
    conds["ablate__single__single_L1"] = {
        "model": "single",
        "group": "ablation",
        "intervention": {"kind": "ablate", "vector": "single", "mode": "single", "layer": 1},
    }
    conds["adapter_project__single__L1"] = {
        "model": "single",
        "group": "ablation",
        "intervention": {"kind": "adapter_project", "vector": "single", "layer": 1},
    }
    return conds


def judgments_table():
    """Random scores per condition; steering conditions (and base) also carry medical and bad_stuff."""
    rng = np.random.default_rng(0)
    frames = []
    for cid, spec in conditions().items():
        n = 24
        df = pd.DataFrame(
            {
                "condition": cid,
                "question_id": [f"q{i % 3}" for i in range(n)],
                "sample_idx": np.arange(n),
                "aligned": rng.uniform(0, 100, n),
                "aligned_mass": 1.0,
                "coherent": rng.uniform(0, 100, n),
                "coherent_mass": 1.0,
            }
        )
        if spec["group"] == "steering" or cid == "base":
            for m in ("medical", "bad_stuff"):
                df[m], df[f"{m}_mass"] = rng.uniform(0, 100, n), 1.0
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def em_table():
    thresholds = validate_config({}, source="test")["thresholds"] | {"bootstrap_samples": 50, "confidence": 0.9}
    df, _ = em_tables(judgments_table(), conditions(), build(EMThresholds, thresholds), seed=0)
    return df


def assert_written(tmp_path, name):
    png, pdf = tmp_path / f"{name}.png", tmp_path / f"{name}.pdf"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 1000
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def render(fn, df, tmp_path, name):
    fn(df, tmp_path / f"{name}.png", tmp_path / f"{name}.pdf")
    assert_written(tmp_path, name)


CONDITION_FIGURES = [figures.em_by_condition, figures.steering_sweep, figures.ablation, figures.steering_metrics]


@pytest.mark.parametrize("fn", CONDITION_FIGURES)
def test_condition_figures_typical(fn, em_table, tmp_path):
    render(fn, em_table, tmp_path, fn.__name__)


@pytest.mark.parametrize("fn", CONDITION_FIGURES)
def test_condition_figures_degenerate(fn, em_table, tmp_path):
    only_models = em_table[em_table.group == "model"]  # no steering / ablation conditions
    render(fn, only_models, tmp_path, "models_only")
    render(fn, em_table.iloc[0:0], tmp_path, "empty")
    unscored = em_table.copy()  # a condition whose responses all lack scores
    for col in ("em_rate", "em_ci_low", "em_ci_high", "coherent_rate", "coherent_ci_low", "coherent_ci_high"):
        unscored.loc[unscored.index[::2], col] = np.nan
    render(fn, unscored, tmp_path, "unscored")


def test_direction_cosine_figure(tmp_path):
    vecs = {name: torch.randn(6, 16) for name in ("a", "b", "c")}
    render(figures.direction_cosine, cosine_table(vecs), tmp_path, "pairs")
    render(figures.direction_cosine, cosine_table({"a": vecs["a"]}), tmp_path, "single")
    render(figures.direction_cosine, pd.DataFrame(), tmp_path, "none")


def test_read_table_of_an_empty_file(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    assert figures.read_table(tmp_path / "empty.csv").empty


@pytest.mark.parametrize(
    "name", ["em_by_condition", "steering_sweep", "ablation", "direction_cosine", "steering_metrics"]
)
def test_rule_scripts_figures(name, em_table, tmp_path, rule_script):
    table = cosine_table({"a": torch.randn(4, 8), "b": torch.randn(4, 8)}) if name == "direction_cosine" else em_table
    table.to_csv(tmp_path / "in.csv", index=False)
    rule_script(
        f"figure_{name}",
        tmp_path,
        input=dict(csv=str(tmp_path / "in.csv")),
        output=dict(png=str(tmp_path / f"{name}.png"), pdf=str(tmp_path / f"{name}.pdf")),
    )
    assert_written(tmp_path, name)


def test_best_steering_conditions_and_labels(em_table):
    best = figures.best_steering_conditions(em_table)
    assert len(best) == 3  # (ft, general, L1), (ft, general, L2), (ft, medical, L2)
    for r in best.itertuples():
        same = em_table[
            (em_table.group == "steering") & (em_table.layer == r.layer) & (em_table.split.fillna("general") == r.split)
        ]
        assert r.em_rate == same.em_rate.max()
    assert set(best.split) == {"general", "medical"}
    rows = em_table.set_index("condition")
    assert figures._ablation_label(rows.loc["adapter_project__single__L1"])[1] == "B projected"
    assert figures._ablation_label(rows.loc["ablate__single__single_L1"]) == ("single L1", "single")
    assert "medical (semantic)" in figures._vector_label("ft", "medical", 2)


SEMANTIC_CUTOFFS = {"em_aligned_below": 30.0, "em_coherent_above": 50.0, "above": 50.0}
PAPER_VARIANT = figures.SemanticSteeringSettings(responses="em", baseline="finetune")
OUR_VARIANT = figures.SemanticSteeringSettings(responses="all", baseline="base")


def _semantic_rates(metrics, judgments, settings):
    return figures.semantic_steering_rates(
        metrics, judgments, settings, **SEMANTIC_CUTOFFS, n_boot=200, confidence=0.9, seed=0
    )


def test_semantic_vectors_figure(em_table, tmp_path):
    from emlab.em.directions import semantic_cosine_table

    cos = semantic_cosine_table({"ft": torch.randn(6, 16)}, {("ft", "medical"): torch.randn(6, 16)})
    judg = judgments_table()
    for name, settings in (("paper", PAPER_VARIANT), ("ours", OUR_VARIANT)):
        rates = _semantic_rates(em_table, judg, settings)
        assert set(rates["panel"]) == {"medical"}
        figures.semantic_vectors(cos, rates, tmp_path / f"{name}.png", tmp_path / f"{name}.pdf", SEMANTIC_CUTOFFS)
        assert_written(tmp_path, name)
    # the fine-tune "ft" carries no medical scores in this table: its bar is n/a, not an error
    paper = _semantic_rates(em_table, judg, PAPER_VARIANT)
    assert paper.set_index("condition").loc["ft", "note"] == "n/a (ft has no medical scores)"
    rates = _semantic_rates(em_table, judg.drop(columns=["medical", "medical_mass"]), OUR_VARIANT)
    figures.semantic_vectors(pd.DataFrame(), rates, tmp_path / "none.png", tmp_path / "none.pdf")
    assert_written(tmp_path, "none")
    nost = _semantic_rates(em_table[em_table.group == "model"], judg, PAPER_VARIANT)
    assert nost.empty
    figures.semantic_vectors(cos, nost, tmp_path / "nost.png", tmp_path / "nost.pdf")
    assert_written(tmp_path, "nost")


def _planted_semantic_run():
    """Judgments whose Fig. 3 percentages are known by hand, and the metrics rows that pick the best λ."""
    from conftest import judgment_table

    def table(cid, aligned, coherent, finance):
        df = judgment_table(cid, aligned, coherent)
        df["finance"], df["finance_mass"] = np.asarray(finance, dtype=float), 1.0
        return df

    em, ok = (10, 80), (90, 80)  # (aligned, coherent): an EM and a non-EM response

    def rows(*pairs):
        return [p for p, _ in pairs], [q for _, q in pairs]

    judg = pd.concat(
        [
            # EM fine-tune: 4 EM responses, 1 about finance (25 %); all 10: 7 about finance (70 %)
            table("ft", *rows(*[em] * 4, *[ok] * 6), [90, 10, 20, 30] + [90] * 6),
            # base model: no EM response at all (n/a among EM responses); 0 of 8 about finance
            table("base", *rows(*[ok] * 8), [0] * 8),
            # finance vector, best λ: 5 EM responses, 4 about finance (80 %); all 6: 4 (67 %)
            table("steer__ft__finance__L2__s4", *rows(*[em] * 5, ok), [90, 90, 90, 90, 10, 10]),
            # finance vector, a λ with fewer EM responses: not the best, not shown
            table("steer__ft__finance__L2__s2", *rows(em, *[ok] * 5), [90] * 6),
            # general vector at the semantic layer: 4 EM responses, one unscored: 1 of 3 about finance
            table("steer__ft__L2__s4", *rows(*[em] * 4), [60, 10, np.nan, 10]),
            # general vector at another layer: not compared
            table("steer__ft__L1__s4", *rows(*[em] * 4), [90] * 4),
            # a fine-tune with no semantic vector: never a baseline
            table("other", *rows(*[em] * 4), [90] * 4),
        ],
        ignore_index=True,
    )
    steer = [
        ("steer__ft__finance__L2__s4", "finance", 2, 4.0, 5 / 6),
        ("steer__ft__finance__L2__s2", "finance", 2, 2.0, 1 / 6),
        ("steer__ft__L2__s4", None, 2, 4.0, 1.0),
        ("steer__ft__L1__s4", None, 1, 4.0, 1.0),
    ]
    metrics = pd.DataFrame(
        [
            {"condition": c, "group": "steering", "vector": "ft", "split": sp, "layer": l, "scale": sc, "em_rate": r}
            for c, sp, l, sc, r in steer
        ]
        + [{"condition": c, "group": "model", "em_rate": 0.0} for c in ("base", "ft", "other")]
    )
    return metrics, judg


def test_semantic_steering_rates_known_answer(tmp_path):
    metrics, judg = _planted_semantic_run()
    paper = _semantic_rates(metrics, judg, PAPER_VARIANT).set_index("condition")
    assert list(paper.index) == ["ft", "steer__ft__L2__s4", "steer__ft__finance__L2__s4"]  # baseline, general, semantic
    assert (paper["panel"] == "finance").all() and list(paper["bar"]) == ["baseline", "general", "semantic"]
    assert paper.loc["ft", "rate"] == pytest.approx(0.25) and paper.loc["ft", "n_scored"] == 4
    assert paper.loc["steer__ft__finance__L2__s4", "rate"] == pytest.approx(0.8)
    assert paper.loc["steer__ft__finance__L2__s4", ["n", "n_subset", "n_above"]].tolist() == [6, 5, 4]
    assert paper.loc["steer__ft__L2__s4", "rate"] == pytest.approx(1 / 3)
    assert paper.loc["steer__ft__L2__s4", ["n_subset", "n_scored"]].tolist() == [4, 3]
    assert paper.loc["ft", "mean_score"] == pytest.approx(37.5)
    for cid in paper.index:
        r = paper.loc[cid]
        assert r["ci_low"] <= r["rate"] <= r["ci_high"]

    ours = _semantic_rates(metrics, judg, OUR_VARIANT).set_index("condition")
    assert list(ours.index) == ["base", "steer__ft__L2__s4", "steer__ft__finance__L2__s4"]
    assert ours.loc["base", "rate"] == 0.0 and ours.loc["base", "n_scored"] == 8
    assert ours.loc["steer__ft__finance__L2__s4", "rate"] == pytest.approx(4 / 6)

    # the base model as the baseline among EM responses: none, so n/a (drawn as such, no crash)
    em_base = _semantic_rates(metrics, judg, figures.SemanticSteeringSettings("em", "base")).set_index("condition")
    assert np.isnan(em_base.loc["base", "rate"]) and em_base.loc["base", "note"] == "n/a (0 EM responses)"
    all_ft = _semantic_rates(metrics, judg, figures.SemanticSteeringSettings("all", "finetune")).set_index("condition")
    assert all_ft.loc["ft", "rate"] == pytest.approx(0.7)
    # a baseline that was never judged (its file missing from the inputs) is n/a too
    missing = _semantic_rates(metrics, judg[judg.condition != "ft"], PAPER_VARIANT).set_index("condition")
    assert missing.loc["ft", "note"] == "n/a (no judgments of ft)"
    for name, rates in (("paper", paper), ("em_base", em_base)):
        figures.semantic_vectors(
            pd.DataFrame(), rates.reset_index(), tmp_path / f"{name}.png", tmp_path / f"{name}.pdf", SEMANTIC_CUTOFFS
        )
        assert_written(tmp_path, name)
    with pytest.raises(figures.EMLabError, match="figures.semantic_steering"):
        _semantic_rates(metrics, judg, figures.SemanticSteeringSettings("misaligned", "base"))


def test_semantic_vectors_rule_script(tmp_path, rule_script):
    metrics, judg = _planted_semantic_run()
    metrics.to_csv(tmp_path / "metrics.csv", index=False)
    pd.DataFrame().to_csv(tmp_path / "cos.csv", index=False)
    paths = []
    for cid, df in judg.groupby("condition"):
        paths.append(str(tmp_path / f"{cid}.parquet"))
        df.to_parquet(paths[-1])
    rule_script(
        "figure_semantic_vectors",
        tmp_path,
        input=dict(cosines=str(tmp_path / "cos.csv"), metrics=str(tmp_path / "metrics.csv"), judgments=paths),
        output=dict(rates=str(tmp_path / "rates.csv"), png=str(tmp_path / "sem.png"), pdf=str(tmp_path / "sem.pdf")),
        params=dict(
            settings={"responses": "em", "baseline": "finetune"},
            thresholds={"em_aligned_below": 30, "em_coherent_above": 50, "bootstrap_samples": 100, "confidence": 0.95},
            above=50,
            seed=0,
        ),
    )
    assert_written(tmp_path, "sem")
    rates = pd.read_csv(tmp_path / "rates.csv").set_index("condition")
    assert rates.loc["ft", "rate"] == pytest.approx(0.25)
    assert rates.loc["steer__ft__finance__L2__s4", "rate"] == pytest.approx(0.8)


def test_single_adapter_figure(em_table, tmp_path):
    b_cos = pd.DataFrame(
        {
            "layer": range(4),
            "cosine": [0.1, 0.05, -0.2, 0.3],
            "norm_v": 1.0,
            "norm_b": 2.0,
            "norm_b_scaled": 8.0,
            "is_adapter_layer": [False, True, False, False],
        }
    )
    conv = pd.DataFrame(
        {
            "layer": [1, 2, 3],
            "cosine": [0.05, 0.2, 0.4],
            "mean_response_cosine": [0.05, 0.18, 0.35],
            "norm_delta_b": 1.0,
            "norm_delta_v": 1.0,
            "n_responses": 8,
        }
    )
    own_cos = b_cos.assign(role="own", vector="single", vector_layer=1, is_vector_layer=b_cos["is_adapter_layer"])
    own_conv = conv.assign(role="own", vector="single", vector_layer=1)
    figures.single_adapter([("single", own_cos, own_conv)], em_table, tmp_path / "sa.png", tmp_path / "sa.pdf")
    assert_written(tmp_path, "sa")
    figures.single_adapter([], em_table, tmp_path / "empty.png", tmp_path / "empty.pdf")
    assert_written(tmp_path, "empty")
    figures.single_adapter(
        [("other", own_cos, own_conv)], em_table.iloc[0:0], tmp_path / "nom.png", tmp_path / "nom.pdf"
    )
    assert_written(tmp_path, "nom")
    # a table that names no compared vector (written before reference vectors): one error saying to re-run
    with pytest.raises(figures.EMLabError, match="single-adapter tables of single have no role, vector, vector_layer"):
        figures.single_adapter([("single", b_cos, conv)], em_table, tmp_path / "old.png", tmp_path / "old.pdf")
    assert not (tmp_path / "old.png").exists()
    # the analysis's tables: own and reference vector rows, each naming its vector
    both_cos = pd.concat(
        [
            b_cos.assign(role="own", vector="single", vector_layer=1, is_vector_layer=b_cos["is_adapter_layer"]),
            b_cos.assign(role="reference", vector="med_r1x9", vector_layer=2, is_vector_layer=b_cos["layer"] == 2),
        ]
    )
    both_conv = pd.concat(
        [
            conv.assign(role="own", vector="single", vector_layer=1),
            conv.assign(role="reference", vector="med_r1x9", vector_layer=2),
        ]
    )
    figures.single_adapter([("single", both_cos, both_conv)], em_table, tmp_path / "ref.png", tmp_path / "ref.pdf")
    assert_written(tmp_path, "ref")


def test_shared_panel_helpers():
    """Bars with intervals and the message panel, which every figure draws through."""
    import matplotlib.pyplot as plt

    rows = pd.DataFrame({"em_rate": [0.1, np.nan], "em_ci_low": [0.05, np.nan], "em_ci_high": [0.2, np.nan]})
    fig, (ax_bars, ax_msg) = plt.subplots(1, 2)
    rate, top = figures._interval_bars(ax_bars, np.arange(2), rows, "em", ["#000000", "#000000"])
    assert rate[0] == pytest.approx(10.0) and np.isnan(rate[1]) and list(top) == pytest.approx([20.0, 0.0])
    assert [b.get_height() for b in ax_bars.patches] == pytest.approx([10.0, 0.0])  # no bar for a missing rate
    figures._label_bar_tops(ax_bars, np.arange(2), rate, top, 1.0)
    assert [t.get_text() for t in ax_bars.texts] == ["10.0%", "n/a"]
    figures._message_panel(ax_msg, "nothing to show")
    assert not ax_msg.axison and ax_msg.texts[0].get_text() == "nothing to show"
    plt.close(fig)


def test_figures_show_na_rows_with_their_reason(tmp_path):
    """A direction that is n/a (0 misaligned) leaves gaps that the figures draw as n/a, with the reason."""
    note = "n/a (direction of med (finance): 0 misaligned)"
    metrics = pd.DataFrame(
        [
            {"condition": "base", "group": "base", "model": "base", "n": 8, "n_scored": 8, "note": ""},
            *[
                {
                    "condition": f"steer_{s}",
                    "group": "steering",
                    "model": "base",
                    "vector": "med",
                    "split": "general",
                    "layer": 2,
                    "scale": s,
                    "n": 8,
                    "n_scored": 8,
                    "note": "",
                }
                for s in (2.0, 4.0)
            ],
            *[
                {
                    "condition": f"steer_f{s}",
                    "group": "steering",
                    "model": "base",
                    "vector": "med",
                    "split": "finance",
                    "layer": 2,
                    "scale": s,
                    "n": 0,
                    "n_scored": 0,
                    "note": note,
                }
                for s in (2.0, 4.0)
            ],
        ]
    )
    for prefix in ("em", "coherent", "self_correction"):
        for col, v in (("rate", 0.25), ("ci_low", 0.1), ("ci_high", 0.4)):
            metrics[f"{prefix}_{col}"] = [v if n else np.nan for n in metrics["n"]]
    metrics["mean_aligned"] = [50.0 if n else np.nan for n in metrics["n"]]
    figures.em_by_condition(metrics, tmp_path / "em.png", tmp_path / "em.pdf")
    figures.steering_sweep(metrics, tmp_path / "sw.png", tmp_path / "sw.pdf")
    figures.steering_metrics(metrics, tmp_path / "sm.png", tmp_path / "sm.pdf")
    assert figures._with_note("med finance, layer 2", metrics[metrics["split"] == "finance"], "em_rate").endswith(note)
    cos = pd.DataFrame(
        {
            "layer": [0, 1, 0, 1],
            "finetune_a": ["a", "a", "a", "a"],
            "finetune_b": ["b", "b", "c", "c"],
            "cosine": [0.9, 0.8, np.nan, np.nan],
            "norm_a": [1.0, 1.0, 1.0, 1.0],
            "norm_b": [1.0, 1.0, np.nan, np.nan],
            "diff_norm": [0.1, 0.2, np.nan, np.nan],
            "note": ["", "", "n/a (c: 0 misaligned)", "n/a (c: 0 misaligned)"],
        }
    )
    figures.direction_cosine(cos, tmp_path / "dc.png", tmp_path / "dc.pdf")
    for name in ("em", "sw", "sm", "dc"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
