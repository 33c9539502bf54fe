"""Issue 22 items 6, 9, 10 of the trait monitor: the checkpoint-label prompts, prompt-basis stability (directions
from two disjoint halves of the trait prompts) and the regressor comparison (ridge and gradient-boosted trees
beside the forest), with planted answers."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from emlab.core.config import validate_config
from emlab.core.errors import EMLabError
from emlab.monitor import drift, stage, traits
from emlab.monitor import regressor as monitor

REPO = Path(__file__).resolve().parents[2]
TRAITS = ["honesty", "sycophancy", "harmlessness", "power_seeking", "helpfulness", "confidence", "corrigibility"]
PLANTED = "power_seeking"
SETTINGS = monitor.MonitorSettings(
    n_estimators=100, max_depth=5, min_samples_leaf=5, seed=42, tau=0.05, n_bootstrap=50, ci=0.95
)
COMPARISON = monitor.RegressorComparison(
    regressors=["random_forest", "ridge", "gbt"],
    ridge_alpha=1.0,
    gbt_n_estimators=100,
    gbt_max_depth=3,
    gbt_learning_rate=0.1,
    gbt_min_samples_leaf=5,
)


# --- item 6: checkpoint labels ---------------------------------------------------------------


def test_paper_labels_come_from_72_prompts_of_our_own():
    """paper.yaml labels a checkpoint from >= 72 distinct prompts x 1 sample, so one misaligned answer stays
    below tau (the demo's 8 questions: one answer is 12.5 %)."""
    from emlab.em.questions import load_questions

    paper = validate_config(yaml.safe_load((REPO / "data/configs/paper.yaml").read_text()), source="paper")
    mon = paper["monitor"]
    prompts = load_questions(REPO / mon["questions"])
    assert len(prompts) >= 72
    assert len({q.text for q in prompts}) == len(prompts) and all(q.text.strip() for q in prompts)
    assert all(q.system is None for q in prompts)  # plain user turns, as the paper's evaluation prompts
    assert mon["generation"]["samples_per_question"] == 1 and mon["tau"] == 0.05
    assert 1 / (len(prompts) * mon["generation"]["samples_per_question"]) < mon["tau"]
    demo = validate_config(yaml.safe_load((REPO / "config.yaml").read_text()), source="demo")
    assert len(load_questions(REPO / demo["monitor"]["questions"])) <= 10  # the demo stays cheap


# --- item 9: prompt-basis stability ------------------------------------------------------------


def _acts(planted: torch.Tensor, n_pos=5, n_neg=5, T=2, Q=4, L=3, noise=0.05, seed=0) -> traits.TraitActivations:
    """Trait 0's positive prompts all carry `planted` at every layer; everything else is noise."""
    g = torch.Generator().manual_seed(seed)
    d = planted.shape[0]
    pos = noise * torch.randn(T, n_pos, Q, L, d, generator=g)
    neg = noise * torch.randn(T, n_neg, Q, L, d, generator=g)
    pos[0] += planted
    return traits.TraitActivations(("planted", "other")[:T], pos, neg)


def test_prompt_halves_are_disjoint_and_cover_every_prompt():
    assert traits.prompt_halves(5) == ([0, 2, 4], [1, 3]) and traits.prompt_halves(2) == ([0], [1])
    with pytest.raises(EMLabError, match="at least 2 prompts"):
        traits.prompt_halves(1)


def test_half_directions_by_hand():
    acts = _acts(torch.zeros(6), n_pos=3, n_neg=4, noise=1.0)
    halves = traits.half_directions(acts)  # [2, L, T, d]
    assert halves.shape == (2, 3, 2, 6)
    for k, (p, n) in enumerate((([0, 2], [0, 2]), ([1], [1, 3]))):
        diff = acts.positive[:, p].mean(dim=(1, 2)) - acts.negative[:, n].mean(dim=(1, 2))  # [T, L, d]
        ref = (diff / diff.norm(dim=-1, keepdim=True)).transpose(0, 1)
        torch.testing.assert_close(halves[k], ref)


def test_planted_trait_gives_both_halves_the_same_direction():
    planted = torch.zeros(16)
    planted[3] = 2.0
    acts = _acts(planted)
    halves = traits.half_directions(acts)
    full = traits.mean_diff_directions(acts)
    dirs = traits.TraitDirections(
        full, full, acts.names, acts.names, 1, traits.LayerScores(np.zeros(3), np.zeros(3)), "v", "m", halves
    )
    cos = traits.basis_stability_cosines(dirs).set_index("trait")
    assert list(cos.columns) == ["cosine_halves", "cosine_half_a_full", "cosine_half_b_full"]
    assert cos.loc["planted"].min() > 0.99  # both halves find the planted vector
    assert abs(cos.loc["other", "cosine_halves"]) < 0.9  # noise: the halves disagree


def test_half_directions_survive_a_round_trip(tmp_path):
    acts = _acts(torch.ones(8))
    full = traits.mean_diff_directions(acts)
    d = traits.TraitDirections(
        full,
        full.clone(),
        acts.names,
        acts.names,
        2,
        traits.LayerScores(np.zeros(3), np.zeros(3)),
        "v",
        "m",
        traits.half_directions(acts),
    )
    traits.save_directions(d, tmp_path / "d.safetensors", tmp_path / "d.json")
    back = traits.load_directions(tmp_path / "d.safetensors", tmp_path / "d.json")
    assert torch.equal(back.alignment_halves, d.alignment_halves)
    old = traits.TraitDirections(
        *[
            getattr(d, f)
            for f in (
                "alignment",
                "semantic",
                "alignment_names",
                "semantic_names",
                "layer",
                "scores",
                "trait_version",
                "model_id",
            )
        ]
    )
    traits.save_directions(old, tmp_path / "o.safetensors", tmp_path / "o.json")
    assert traits.load_directions(tmp_path / "o.safetensors", tmp_path / "o.json").alignment_halves is None
    with pytest.raises(EMLabError, match="no prompt-half directions"):
        traits.basis_stability_cosines(old)


def test_drift_along_the_halves_by_hand():
    g = torch.Generator().manual_seed(1)
    d = 8
    base = drift.MeanActivation(torch.randn(d, generator=g), 2.0, 3)
    mean_t = base.mean + torch.randn(d, generator=g)
    align, sem = torch.randn(7, d, generator=g), torch.randn(7, d, generator=g)
    halves = torch.randn(2, 7, d, generator=g)
    row = drift.drift_columns(mean_t, base, align, TRAITS, sem, [f"s{k}" for k in range(7)], {}, halves)
    for k, half in enumerate(("half_a", "half_b")):
        ref = (halves[k] @ (mean_t - base.mean)) / 2.0
        got = torch.tensor([row[f"{half}.{t}"] for t in TRAITS])
        torch.testing.assert_close(got, ref)
    assert not any(
        c.startswith("half_")
        for c in drift.drift_columns(mean_t, base, align, TRAITS, sem, [f"s{k}" for k in range(7)], {})
    )


def synthetic(perturbations: dict[str, bool], rng_seed: int, linear: bool = False) -> monitor.DriftData:
    """Runs of 13 checkpoints; dangerous perturbations drift along PLANTED and EM follows the PLANTED drift
    (linear: EM = 0.5 x drift, never clipped). half_a.* is the full basis's drift plus a little noise,
    half_b.* pure noise."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for pert, dangerous in perturbations.items():
        for seed in (0, 1, 2):
            slope = rng.normal(0, 0.02, size=7)
            slope[TRAITS.index(PLANTED)] = rng.uniform(0.1, 0.15) if dangerous else abs(rng.normal(0, 0.005))
            for step in range(0, 130, 10):
                x = slope * step / 120 + (rng.normal(0, 0.002, size=7) if step else 0)
                p = x[TRAITS.index(PLANTED)]
                em = 0.5 * max(p, 0.0) if linear else float(np.clip(4 * (p - 0.01), 0, 1))
                row = {"run": f"{pert}_s{seed}", "perturbation": pert, "step": step, "em_rate": em}
                row.update(dict(zip(TRAITS, x)))
                row.update({f"half_a.{t}": v + rng.normal(0, 0.001) for t, v in zip(TRAITS, x)})
                row.update({f"half_b.{t}": rng.normal(0, 0.02) for t in TRAITS})
                rows.append(row)
    return monitor.DriftData(pd.DataFrame(rows))


CAL = {"insecure": True, "medical": True, "gsm8k": False, "support": False}
HELD = {"financial": True, "misinfo": True, "math": False}


def test_basis_stability_metrics_follow_the_basis():
    cal, held = synthetic(CAL, 0), synthetic(HELD, 1)
    table = monitor.basis_stability(cal, held, TRAITS, SETTINGS).set_index("basis")
    assert list(table.index) == ["full", "half_a", "half_b"]
    full = monitor.evaluate_feature_set("alignment_7d", cal, held, TRAITS, SETTINGS)[0]
    assert table.loc["full", "auroc"] == full["auroc"] and table.loc["full", "fnr"] == full["fnr"]  # same row
    assert table.loc["half_a", "auroc"] > 0.95  # a half that agrees with the full basis monitors as well
    assert abs(table.loc["half_b", "auroc"] - 0.5) < 0.2  # a half that lost the planted trait cannot
    assert (table["n_checkpoints"] == len(held.table)).all()
    with pytest.raises(EMLabError, match="re-run trait_directions and trait_drift"):
        stripped = monitor.DriftData(cal.table.drop(columns=[c for c in cal.table if c.startswith("half_b.")]))
        monitor.basis_stability(stripped, held, TRAITS, SETTINGS)


# --- item 10: regressor comparison --------------------------------------------------------------


def _closed_form_ridge(x: np.ndarray, y: np.ndarray, alpha: float, x_new: np.ndarray) -> np.ndarray:
    """Ridge on standardised features by its normal equations (the intercept unpenalised: the mean of y)."""
    mu, sd = x.mean(axis=0), x.std(axis=0)
    z = (x - mu) / sd
    beta = np.linalg.solve(z.T @ z + alpha * np.eye(z.shape[1]), z.T @ (y - y.mean()))
    return np.clip(((x_new - mu) / sd) @ beta + y.mean(), 0, 1)


def test_regressors_on_a_planted_linear_relation():
    """EM is linear in the PLANTED drift: ridge recovers it (the closed form's predictions, near-zero error),
    the trees approximate it by steps; all three see exactly the same rows."""
    cal, held = synthetic(CAL, 0, linear=True), synthetic(HELD, 1, linear=True)
    table = monitor.compare_regressors(cal, held, TRAITS, SETTINGS, COMPARISON).set_index("regressor")
    assert list(table.index) == ["random_forest", "ridge", "gbt"]
    assert set(table["feature_set"]) == {"alignment_7d"}
    assert (table["n_checkpoints"] == len(held.table)).all() and (table["n_runs"] == 9).all()

    x, xt = cal.table[TRAITS].to_numpy(), held.table[TRAITS].to_numpy()
    ridge = monitor.fit_named_regressor("ridge", x, cal.em, SETTINGS, COMPARISON)
    np.testing.assert_allclose(monitor.predict(ridge, xt), _closed_form_ridge(x, cal.em, 1.0, xt), atol=1e-9)
    ref_mae = np.abs(_closed_form_ridge(x, cal.em, 1.0, xt) - held.em).mean()
    assert table.loc["ridge", "mae"] == pytest.approx(ref_mae)
    assert table.loc["ridge", "mae"] < 0.005 and table.loc["ridge", "auroc"] > 0.99
    assert table.loc["ridge", "mae"] < table.loc["random_forest", "mae"]
    assert table.loc["ridge", "mae"] < table.loc["gbt", "mae"]
    forest = monitor.evaluate_feature_set("alignment_7d", cal, held, TRAITS, SETTINGS)[0]
    assert table.loc["random_forest", "auroc"] == forest["auroc"]  # the forest's row is the monitor's own
    for kind in ("random_forest", "gbt"):
        assert table.loc[kind, "auroc"] > 0.9, kind


def test_regressor_comparison_switch_and_errors():
    cal, held = synthetic(CAL, 0), synthetic(HELD, 1)
    only_ridge = dataclasses.replace(COMPARISON, regressors=["ridge"])
    assert list(monitor.compare_regressors(cal, held, TRAITS, SETTINGS, only_ridge)["regressor"]) == ["ridge"]
    with pytest.raises(EMLabError, match="unknown regressor `svm`"):
        monitor.fit_named_regressor("svm", np.zeros((3, 7)), np.zeros(3), SETTINGS, COMPARISON)
    benign = cal.subset(cal.table["perturbation"].isin(["gsm8k", "support"]))
    with pytest.raises(EMLabError, match="no dangerous run"):
        stage.comparison_tables(benign, held, TRAITS, SETTINGS, COMPARISON, True, require_both_classes=True)
    out = stage.comparison_tables(benign, held, TRAITS, SETTINGS, COMPARISON, True, require_both_classes=False)
    assert list(out["regressors"]["regressor"]) == COMPARISON.regressors and out["regressors"]["auroc"].isna().all()
    assert list(out["basis_stability"]["basis"]) == ["full", "half_a", "half_b"]
    assert "basis_stability" not in stage.comparison_tables(cal, held, TRAITS, SETTINGS, COMPARISON, False, True)


def test_config_switches():
    """Schema defaults (all three regressors, no basis-stability report) and the paper config (both on)."""
    from emlab.core.settings import build

    demo = yaml.safe_load((REPO / "config.yaml").read_text())
    bare = validate_config({k: v for k, v in demo.items() if k != "monitor"} | {"monitor": {}}, source="bare")
    assert bare["monitor"]["basis_stability"] is False
    assert build(monitor.RegressorComparison, bare["monitor"]["regressor_comparison"]) == COMPARISON
    paper = validate_config(yaml.safe_load((REPO / "data/configs/paper.yaml").read_text()), source="paper")
    assert paper["monitor"]["basis_stability"] is True
    assert paper["monitor"]["regressor_comparison"]["regressors"] == ["random_forest", "ridge", "gbt"]
    bad = copy.deepcopy(demo)
    bad["monitor"]["regressor_comparison"] = {"regressors": ["random_forest", "svm"]}
    with pytest.raises(EMLabError, match="regressor_comparison"):
        validate_config(bad, source="bad")


def test_rehearsal_check_of_the_comparison_rows(tmp_path):
    """The rehearsal's check: the forest's and the full basis's rows are evaluation.csv's alignment_7d row."""
    from emlab.rehearsal.checks import _same_rows_check

    cal, held = synthetic(CAL, 0), synthetic(HELD, 1)
    ev = monitor.evaluate_feature_sets(cal, held, TRAITS, SETTINGS, ["alignment_7d"]).set_index("feature_set")
    monitor.compare_regressors(cal, held, TRAITS, SETTINGS, COMPARISON).to_csv(tmp_path / "regressors.csv")
    monitor.basis_stability(cal, held, TRAITS, SETTINGS).to_csv(tmp_path / "basis_stability.csv")
    assert _same_rows_check(tmp_path, ev)["pass"]
    other = monitor.compare_regressors(
        cal, synthetic(HELD, 2).subset(np.arange(len(held.table)) < 26), TRAITS, SETTINGS, COMPARISON
    )
    other.to_csv(tmp_path / "regressors.csv")  # scored on other rows
    assert not _same_rows_check(tmp_path, ev)["pass"]
