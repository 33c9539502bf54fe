"""Drift (known answers on a tiny model) and the trait monitor (synthetic drift with one planted trait)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from emlab.core.errors import EMLabError
from emlab.monitor import drift
from emlab.monitor import regressor as monitor
from emlab.plan.traits import MeasurementPrompt

TRAITS = ["honesty", "sycophancy", "harmlessness", "power_seeking", "helpfulness", "confidence", "corrigibility"]
PLANTED = "power_seeking"
SETTINGS = monitor.MonitorSettings(
    n_estimators=100, max_depth=5, min_samples_leaf=5, seed=42, tau=0.05, n_bootstrap=100, ci=0.95
)


# --- drift -------------------------------------------------------------------------


def test_basis_drift_by_hand():
    base = drift.MeanActivation(torch.tensor([1.0, 0.0, 0.0]), mean_norm=2.0, n_prompts=3)
    mean_t = torch.tensor([1.0, 4.0, 0.0])
    basis = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert drift.basis_drift(mean_t, base, basis).tolist() == [2.0, 0.0]
    assert drift.drift_norm(mean_t, base) == pytest.approx(4.0)
    row = drift.drift_columns(mean_t, base, basis, ["a", "b"], basis, ["c", "d"], {3: basis})
    assert row == {
        "a": 2.0,
        "b": 0.0,
        "semantic.c": 2.0,
        "semantic.d": 0.0,
        "random3.0": 2.0,
        "random3.1": 0.0,
        "drift_norm": 4.0,
    }
    with pytest.raises(EMLabError, match="does not fit activations of width 3"):
        drift.basis_drift(mean_t, base, torch.zeros(2, 4))


def test_measured_drift_of_a_steered_model(tiny_model_dir):
    """Adding v after block l shifts every last-token activation at l by v: drift = B v / mean||h_0||."""
    from emlab.model.hooks import steer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.padding_side = "left"
    prompts = [
        MeasurementPrompt(f"p{i}", "casual", t)
        for i, t in enumerate(
            ["Hi there", "What is a good book?", "Tell me about the weather in a long sentence please."]
        )
    ]
    base = drift.measure(model, tok, prompts, layer=2, batch_size=2)
    assert base.mean.shape == (64,) and base.n_prompts == 3
    v = torch.randn(64, generator=torch.Generator().manual_seed(0))
    with steer(model, {2: v}):
        shifted = drift.measure(model, tok, prompts, layer=2, batch_size=2)
    basis = torch.linalg.qr(torch.randn(64, 7, generator=torch.Generator().manual_seed(1)))[0].T
    got = drift.basis_drift(shifted.mean, base, basis)
    assert torch.allclose(got, basis @ v / base.mean_norm, atol=1e-4)
    assert torch.allclose(drift.delta_mean(shifted.mean, base), v, atol=1e-4)
    assert drift.drift_norm(shifted.mean, base) == pytest.approx(float(v.norm() / base.mean.norm()), rel=1e-4)


def test_lora_delta_w_norm_matches_peft(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert drift.lora_delta_w_norm(model) == 0.0
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    ref = 0.0
    for module in peft_model.modules():
        if hasattr(module, "lora_B") and isinstance(module.lora_B, torch.nn.ModuleDict) and "default" in module.lora_B:
            torch.nn.init.normal_(module.lora_B["default"].weight)
    for module in peft_model.modules():
        if hasattr(module, "get_delta_weight") and isinstance(getattr(module, "lora_B", None), torch.nn.ModuleDict):
            ref += float(module.get_delta_weight("default").detach().float().pow(2).sum())
    assert ref > 0
    assert drift.lora_delta_w_norm(peft_model) == pytest.approx(ref**0.5, rel=1e-5)


# --- synthetic calibration grid ------------------------------------------------------


def synthetic(perturbations: dict[str, bool], seeds=(0, 1, 2), d=16, rng_seed=0) -> monitor.DriftData:
    """Runs whose 7-D drift moves randomly; dangerous perturbations also drift along PLANTED,
    and EM depends on the PLANTED drift only. Random/semantic columns are noise."""
    rng = np.random.default_rng(rng_seed)
    embed = rng.normal(size=(7, d))
    rows, deltas = [], []
    steps = np.arange(0, 130, 10)
    for pert, dangerous in perturbations.items():
        for seed in seeds:
            slope = rng.normal(0, 0.02, size=7)
            slope[TRAITS.index(PLANTED)] = rng.uniform(0.1, 0.15) if dangerous else rng.normal(0, 0.005)
            for step in steps:
                x = slope * step / 120 + (rng.normal(0, 0.002, size=7) if step else 0)
                em = float(np.clip(4 * (x[TRAITS.index(PLANTED)] - 0.01), 0, 1))
                row = {"run": f"{pert}_s{seed}", "perturbation": pert, "step": int(step), "em_rate": em}
                row.update(dict(zip(TRAITS, x)))
                row.update({f"semantic.s{k}": rng.normal(0, 0.02) for k in range(7)})
                for rs in range(5):
                    row.update({f"random{rs}.{k}": rng.normal(0, 0.02) for k in range(7)})
                row["drift_norm"] = float(np.linalg.norm(x))
                row["train_loss"] = 2.0 - step / 100 + rng.normal(0, 0.01)
                row["delta_w_norm"] = step / 10 + rng.normal(0, 0.1)
                rows.append(row)
                deltas.append(x @ embed + rng.normal(0, 0.001, size=d))
    return monitor.DriftData(pd.DataFrame(rows), np.asarray(deltas))


CAL = {"insecure": True, "medical": True, "gsm8k": False, "support": False}
HELD = {"financial": True, "misinfo": True, "math": False}


@pytest.fixture(scope="module")
def grid():
    return synthetic(CAL, rng_seed=0), synthetic(HELD, rng_seed=1)


def test_monitor_beats_random_bases_on_planted_trait(grid):
    cal, held = grid
    ev = monitor.evaluate_feature_sets(cal, held, TRAITS, SETTINGS)
    names = list(ev["feature_set"])
    assert names[:3] == ["alignment_7d", "pc1_abs", "pc1_signed"]
    assert {"drift_norm", "train_loss", "delta_w_norm", "pca7_full", "semantic_7d"} <= set(names)
    assert [n for n in names if n.startswith("random")] == [f"random{s}_7d" for s in range(5)]
    for col in ("fnr", "fpr", "auroc"):
        assert {col, f"{col}_ci_low", f"{col}_ci_high"} <= set(ev.columns)
    row = ev.set_index("feature_set").loc["alignment_7d"]
    assert row["auroc"] > 0.95 and row["fnr"] < 0.2 and row["fpr"] < 0.2
    assert row["auroc_ci_low"] <= row["auroc"] <= row["auroc_ci_high"]
    assert row["n_runs"] == 9 and row["n_checkpoints"] == 9 * 13
    rand = ev[ev["feature_set"].str.startswith("random")]["auroc"]
    assert (abs(rand - 0.5) < 0.2).all(), rand.tolist()
    assert abs(ev.set_index("feature_set").loc["semantic_7d", "auroc"] - 0.5) < 0.2


def test_pc1_lopo_sweep_and_step_alarm(grid):
    cal, held = grid
    summary = monitor.pc1_summary(cal.table, TRAITS)
    assert max(summary["loadings"], key=lambda t: abs(summary["loadings"][t])) == PLANTED
    assert summary["loadings"][PLANTED] > 0
    assert 0 < summary["pc1_variance_explained"] <= 1 and len(summary["explained_variance_ratio"]) == 7
    assert sum(summary["explained_variance_ratio"]) == pytest.approx(1.0)

    lopo = monitor.leave_one_perturbation_out(cal, TRAITS, SETTINGS)
    assert list(lopo["perturbation"]) == sorted(CAL)
    benign = lopo.set_index("perturbation").loc["gsm8k"]
    assert np.isnan(benign["auroc"]) and np.isnan(benign["fnr"])  # one class only: undefined, not an error

    sweep = monitor.tau_sweep(cal, held, TRAITS, SETTINGS)
    assert sweep["tau"].tolist() == [0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1]
    assert (sweep["auroc"] > 0.9).all()

    per_step, per_run = monitor.step_aware_alarm(cal, held, TRAITS, SETTINGS)
    assert len(per_step) == len(held.table) and per_step["probability"].between(0, 1).all()
    runs = per_run.set_index("run")
    assert len(runs) == 9
    for run in ("financial_s0", "misinfo_s1"):
        assert runs.loc[run, "first_alarm_step"] <= 120
    assert runs.filter(like="math", axis=0)["first_alarm_step"].isna().all()


def test_calibration_needs_both_kinds_of_run(grid):
    cal, _ = grid
    benign_only = cal.subset(cal.table["perturbation"].isin(["gsm8k", "support"]))
    with pytest.raises(EMLabError, match="calibration set: no dangerous run"):
        monitor.evaluate_feature_sets(benign_only, cal, TRAITS, SETTINGS)
    with pytest.raises(EMLabError, match="calibration set: no benign run"):
        monitor.fit_monitor(cal.subset(cal.table["perturbation"] == "insecure"), TRAITS, SETTINGS, 2, "v1", "m")


def test_saved_monitor_round_trip_and_mismatch(grid, tmp_path):
    cal, held = grid
    mon = monitor.fit_monitor(cal, TRAITS, SETTINGS, layer=2, trait_version="alignment=1", base_model="tiny/llama")
    path = tmp_path / "monitor.skops"
    monitor.save_monitor(mon, path)
    assert monitor.sidecar_path(path).is_file()
    back = monitor.load_monitor(path, base_model="tiny/llama", trait_version="alignment=1")
    assert back.features == tuple(TRAITS) and back.layer == 2 and back.tau == 0.05
    np.testing.assert_array_equal(back.predict(held.table), mon.predict(held.table))
    assert back.alarm(held.table).any()
    np.testing.assert_array_equal(back.predict_drift(held.table[TRAITS].to_numpy()), mon.predict(held.table))
    with pytest.raises(EMLabError, match="expects 7"):
        back.predict_drift(np.zeros((1, 6)))
    with pytest.raises(EMLabError, match=r"fitted on base model `tiny/llama`, not `other/model`"):
        monitor.load_monitor(path, base_model="other/model", trait_version="alignment=1")
    with pytest.raises(EMLabError, match=r"fitted with trait files `alignment=1`, not `alignment=2`"):
        monitor.load_monitor(path, base_model="tiny/llama", trait_version="alignment=2")
    with pytest.raises(EMLabError, match="does not exist"):
        monitor.load_monitor(tmp_path / "none.skops", base_model="tiny/llama", trait_version="alignment=1")


def test_bootstrap_intervals_and_undefined_metrics():
    em = np.array([0.0, 0.0, 0.2, 0.3])
    score = np.array([0.0, 0.1, 0.2, 0.01])
    m = monitor.alarm_metrics(score, em, 0.05)
    assert m == {"fnr": 0.5, "fpr": 0.5, "auroc": 0.75}
    assert np.isnan(monitor.alarm_metrics(score, np.zeros(4), 0.05)["auroc"])
    out = monitor.evaluate_scores(score, em, np.array(["a", "a", "b", "b"]), SETTINGS)
    assert out["n_runs"] == 2 and out["fnr_ci_low"] <= out["fnr"] <= out["fnr_ci_high"]


def test_rank_auroc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    score = np.round(rng.random(60), 1)  # with ties
    label = rng.random(60) > 0.6
    assert monitor.alarm_metrics(score, label.astype(float), 0.5)["auroc"] == pytest.approx(roc_auc_score(label, score))


@pytest.mark.parametrize(
    "name", ["risky_financial_advice", "subtle_misinformation", "math_word_problems", "customer_support"]
)
def test_calibration_demo_datasets_are_valid(name):
    """The perturbation sets added for the calibration grid (their generator match is tested in test_datasets)."""
    import json

    from conftest import REPO
    from emlab.em.datasets import load_chat_jsonl

    recs = load_chat_jsonl(REPO / "data" / "datasets" / f"{name}.jsonl")
    assert len(recs) == 300 and len({json.dumps(r) for r in recs}) == 300
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in recs)


def test_monitor_file_with_unexpected_types_is_refused(grid, tmp_path):
    """skops builds only trusted types (no code runs); a file holding anything but the forest is still refused."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    cal, _ = grid
    mon = monitor.fit_monitor(cal, TRAITS, SETTINGS, layer=2, trait_version="v", base_model="m")
    odd = make_pipeline(FunctionTransformer(np.exp), mon.regressor)
    path = tmp_path / "odd.skops"
    monitor.save_monitor(monitor.TraitMonitor(odd, mon.features, 2, "v", "m", 0.05), path)
    with pytest.raises(EMLabError, match="holds a Pipeline, not the RandomForestRegressor"):
        monitor.load_monitor(path, base_model="m", trait_version="v")
