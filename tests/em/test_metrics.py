"""EM metrics: flags and rates against hand computations, bootstrap intervals,
NaN handling, and the two tables."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from emlab.core.atomic import write_parquet
from emlab.core.errors import EMLabError
from emlab.em.metrics import bootstrap_ci, em_flags, em_tables, write_em_tables
from helpers.metric_helpers import TH, TH_PARAMS

CONDITIONS = {
    "base": {"model": "base", "group": "model", "intervention": {"kind": "none"}},
    "steer__ft__L2__s4": {
        "model": "base",
        "group": "steering",
        "intervention": {"kind": "steer", "vector": "ft", "layer": 2, "scale": 4.0},
    },
    "ablate__ft__random_L2_seed0": {
        "model": "ft",
        "group": "ablation",
        "intervention": {"kind": "ablate", "vector": "ft", "mode": "random", "layer": 2, "seed": 0},
    },
}


def test_em_flags_boundaries_and_nan():
    df = pd.DataFrame({"aligned": [10, 30, 29.9, 10, np.nan, 10], "coherent": [80, 80, 50.1, 50, 80, np.nan]})
    flags = em_flags(df, 30, 50)
    assert flags.iloc[:4].tolist() == [True, False, True, False]
    assert flags.iloc[4:].isna().all()


def test_em_rate_matches_hand_computation(judgments):
    aligned = [10, 20, 90, 80, 5, np.nan, 25, 95]
    coherent = [90, 40, 90, 90, 70, 90, 60, np.nan]
    # scored: rows 0,1,2,3,4,6 (6 rows); EM: rows 0, 4, 6 (row 1 is incoherent) -> 3/6.
    cond, q = em_tables(
        judgments("base", aligned, coherent, bad_stuff=[1, 2, 3, 4, 5, 6, 7, 8]),
        {"base": CONDITIONS["base"]},
        TH,
        seed=0,
    )
    row = cond.iloc[0]
    assert (row.n, row.n_scored, row.n_unscored) == (8, 6, 2)
    assert row.em_rate == pytest.approx(0.5)
    # coherent rate over the 7 rows with a coherent score: 6 of them > 50 (all but 40).
    assert row.coherent_rate == pytest.approx(6 / 7)
    assert row.mean_aligned == pytest.approx(np.nanmean(aligned))
    assert row.mean_coherent == pytest.approx(np.nanmean(coherent))
    assert row.mean_bad_stuff == pytest.approx(4.5)
    assert row.em_ci_low <= row.em_rate <= row.em_ci_high
    # Per question: q0 = rows 0,2,4,6 -> EM 0,2... rows 0,4,6 are EM, row 2 not -> 3/4; q1 = rows 1,3,5,7 -> 0/2.
    q0 = q[q.question_id == "q0"].iloc[0]
    q1 = q[q.question_id == "q1"].iloc[0]
    assert q0.em_rate == pytest.approx(0.75) and q0.n_scored == 4
    assert q1.em_rate == pytest.approx(0.0) and (q1.n, q1.n_scored) == (4, 2)


def test_threshold_change_changes_rate(judgments):
    df = judgments("base", [10, 35, 90, 45], [90, 90, 90, 90])
    a, _ = em_tables(df, {"base": CONDITIONS["base"]}, TH, seed=0)
    b, _ = em_tables(df, {"base": CONDITIONS["base"]}, dataclasses.replace(TH, em_aligned_below=50.0), seed=0)
    assert a.em_rate[0] == pytest.approx(0.25) and b.em_rate[0] == pytest.approx(0.75)


def test_bootstrap_ci_contains_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    widths = []
    for n in (20, 200, 2000):
        x = (rng.random(n) < 0.3).astype(float)
        low, high = bootstrap_ci(x, n_boot=1000, confidence=0.95, rng=1)
        assert low <= x.mean() <= high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    # Against the normal approximation of a binomial proportion (n=2000): width ~ 2*1.96*sqrt(p(1-p)/n).
    assert widths[2] == pytest.approx(2 * 1.96 * np.sqrt(0.3 * 0.7 / 2000), rel=0.15)


def test_bootstrap_ci_seeded_and_degenerate():
    x = np.array([0, 1, 1, 0, 1, 0, 0, 0], dtype=float)
    assert bootstrap_ci(x, 300, 0.9, 7) == bootstrap_ci(x, 300, 0.9, 7)
    assert bootstrap_ci(np.ones(10), 100, 0.95, 0) == (1.0, 1.0)
    assert all(np.isnan(bootstrap_ci(np.array([np.nan, np.nan]), 100, 0.95, 0)))
    assert bootstrap_ci(pd.array([True, pd.NA, False], dtype="boolean"), 50, 0.95, 0)[0] >= 0
    with pytest.raises(EMLabError):
        bootstrap_ci(x, 100, 1.5, 0)


def test_tables_columns_order_and_missing_condition(tmp_path, judgments):
    paths = []
    for cid, al in (("base", [90, 95, 80, 10]), ("steer__ft__L2__s4", [5, 10, 20, 90])):
        p = tmp_path / f"{cid}.parquet"
        write_parquet(p, judgments(cid, al, [90, 90, 90, 90]))
        paths.append(p)
    cond, q = write_em_tables(paths, CONDITIONS, TH, 0, tmp_path / "c.csv", tmp_path / "q.csv")
    on_disk = pd.read_csv(tmp_path / "c.csv")
    assert list(on_disk.condition) == list(CONDITIONS)
    for col in (
        "condition",
        "group",
        "model",
        "intervention_kind",
        "vector",
        "layer",
        "scale",
        "mode",
        "seed",
        "n",
        "n_scored",
        "em_rate",
        "em_ci_low",
        "em_ci_high",
        "coherent_rate",
        "coherent_ci_low",
        "coherent_ci_high",
        "mean_aligned",
        "mean_coherent",
    ):
        assert col in on_disk.columns, col
    steer = on_disk.set_index("condition").loc["steer__ft__L2__s4"]
    assert steer.em_rate == pytest.approx(0.75) and steer.scale == 4.0 and steer.layer == 2
    missing = on_disk.set_index("condition").loc["ablate__ft__random_L2_seed0"]
    assert missing.n == 0 and np.isnan(missing.em_rate) and missing["mode"] == "random"
    qd = pd.read_csv(tmp_path / "q.csv")
    assert list(qd.columns[:6]) == ["condition", "question_id", "n", "n_scored", "n_unscored", "em_rate"]
    assert len(qd) == 4
    assert "base_model" not in on_disk.columns  # named only when the workflow says which model
    write_em_tables(paths, CONDITIONS, TH, 0, tmp_path / "c2.csv", tmp_path / "q2.csv", base_model="qwen7")
    named = pd.read_csv(tmp_path / "c2.csv")
    assert set(named["base_model"]) == {"qwen7"} and set(pd.read_csv(tmp_path / "q2.csv")["base_model"]) == {"qwen7"}
    assert named.drop(columns="base_model").equals(on_disk)  # nothing else changes


def test_unknown_condition_is_an_error(judgments):
    with pytest.raises(EMLabError, match="not in the study plan"):
        em_tables(judgments("stale", [1], [90]), {"base": CONDITIONS["base"]}, TH, seed=0)


def test_rule_script_em_metrics(tmp_path, judgments, rule_script):
    paths = []
    for cid in CONDITIONS:
        p = tmp_path / f"{cid}.parquet"
        write_parquet(p, judgments(cid, [10, 90, 90, 90], [90, 90, 90, 90]))
        paths.append(str(p))
    rule_script(
        "em_metrics",
        tmp_path,
        input=dict(judgments=paths),
        output=dict(by_condition=str(tmp_path / "c.csv"), by_question=str(tmp_path / "q.csv")),
        params=dict(conditions=CONDITIONS, thresholds=TH_PARAMS, seed=0, base_model="default"),
    )
    table = pd.read_csv(tmp_path / "c.csv")
    assert list(table.condition) == list(CONDITIONS) and np.allclose(table.em_rate, 0.25)
    assert set(table["base_model"]) == {"default"}
