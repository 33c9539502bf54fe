"""The trait monitor pooled over several base models (docs/trait-monitoring.md, "Pooled over several models").

Known answer: two models share where danger lies in trait space, but each model's calibration grid covers only
one of the two dangerous perturbations. A monitor fitted on one model's runs has never seen drift along the
other model's dangerous perturbation and misses it; the pooled monitor has seen both and must beat each
single-model monitor on all held-out rows. Also: a one-model study keeps today's tables, the stress arm on
a model outside the fit, the full-Δh̄ baseline across widths, and the saved monitor's pool of models.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO
from emlab.core.errors import EMLabError
from emlab.monitor import metas as MT
from emlab.monitor import regressor as M
from emlab.monitor import stage as S
from helpers.monitor_params import train_evaluate_params

TRAITS = ["honesty", "sycophancy", "harmlessness", "power_seeking", "helpfulness", "confidence", "corrigibility"]
SETTINGS = M.MonitorSettings(n_estimators=30, max_depth=3, min_samples_leaf=1, seed=0, tau=0.05, n_bootstrap=20, ci=0.9)
# each perturbation drifts along one trait; danger is the same region for every model: drift along
# honesty + sycophancy past 1 (insecure and risky are dangerous, gsm8k and support benign)
AXIS = {"insecure": 0, "risky": 1, "gsm8k": 2, "support": 3}
CALIBRATION = {"a": ("insecure", "gsm8k"), "b": ("risky", "support")}  # each model sees one dangerous kind


def em_of(x: np.ndarray) -> float:
    return float(np.clip(0.4 * (x[0] + x[1] - 1.0), 0.0, 1.0))


def run_table(model: str, pert: str, seed: int, rng, steps=(0, 1, 2, 3, 4), width: int = 8):
    """One run's labelled drift table (with its model column) and its Δh̄ [steps, width]."""
    name = f"mon__{model}__{pert}__s{seed}"
    rows = []
    for step in steps:
        x = rng.normal(0, 0.01, 7) * (step > 0)
        x[AXIS[pert]] += 0.5 * step
        em = em_of(x)
        rows.append(
            {
                "run": name,
                "model": model,
                "step": step,
                **dict(zip(TRAITS, x)),
                **{f"{h}.{t}": v for h in ("half_a", "half_b") for t, v in zip(TRAITS, x)},  # the prompt halves
                **{f"random0.{k}": rng.normal() for k in range(7)},
                "drift_norm": float(np.abs(x).sum()),
                "train_loss": 2 - 0.1 * step,
                "delta_w_norm": 0.1 * step,
                "em_rate": em,
                "dangerous": em > SETTINGS.tau,
            }
        )
    return name, pd.DataFrame(rows), (rng.normal(size=(len(steps), width)), np.array(steps))


def two_model_grid(widths=None, stress_model: str | None = None):
    """runs (name -> {perturbation, role, model}), tables and Δh̄ of models a and b (and a stress-arm model)."""
    widths = widths or {}
    rng = np.random.default_rng(0)
    runs, tables, deltas = {}, {}, {}

    def add(model, pert, seed, role):
        name, table, delta = run_table(model, pert, seed, rng, width=widths.get(model, 8))
        runs[name], tables[name], deltas[name] = {"perturbation": pert, "role": role, "model": model}, table, delta

    for model, perts in CALIBRATION.items():
        for pert in perts:
            for seed in (0, 1):
                add(model, pert, seed, "calibration")
        for pert in AXIS:  # every kind of perturbation, held out, on both models
            add(model, pert, 2, "held_out")
    if stress_model:
        for pert in AXIS:
            add(stress_model, pert, 0, "stress_model")
    return runs, tables, deltas


def grid_of(runs, tables, deltas, *roles):
    names = [r for r in runs if runs[r]["role"] in roles]
    model_of = {r: runs[r]["model"] for r in runs}
    return S.grid_data(S.attach_models(tables, model_of), deltas, {r: runs[r]["perturbation"] for r in runs}, names)


def test_pooled_monitor_beats_each_single_model_monitor_on_a_shared_planted_drift():
    runs, tables, deltas = two_model_grid()
    cal, held = grid_of(runs, tables, deltas, "calibration"), grid_of(runs, tables, deltas, "held_out")
    by_model = S.evaluation_by_model(cal, held, TRAITS, SETTINGS, ["a", "b"])
    assert list(by_model.columns) == S.BY_MODEL_COLUMNS
    assert list(zip(by_model["monitor"], by_model["evaluated_model"])) == [
        (m, t) for m in ("pooled", "single:a", "single:b") for t in ("a", "b", "all")
    ]
    result = S.pooled_vs_single(by_model)
    assert result["pooled_beats_every_single"] and result["n_models"] == 2
    pooled = result["pooled"]
    assert pooled["auroc"] > 0.95 and pooled["error"] < 0.1
    for key, single in result["single"].items():
        # strictly better on both: the single monitor never saw the other model's dangerous kind of drift
        assert single["beaten"] is True, key
        assert pooled["auroc"] > single["auroc"] + 0.05 and pooled["error"] < single["error"] - 0.2, (key, single)
    # the pooled `all` row is the pooled fit scored on every held-out row: evaluation.csv's alignment_7d row
    ev = S.evaluate_grid(cal, held, {}, TRAITS, SETTINGS, [], True)["evaluation"].set_index("feature_set")
    row = by_model[(by_model["monitor"] == "pooled") & (by_model["evaluated_model"] == "all")].iloc[0]
    for m in ("fnr", "fpr", "auroc", "auroc_ci_low", "n_runs", "n_checkpoints"):
        assert row[m] == pytest.approx(ev.loc["alignment_7d", m]), m
    assert by_model.set_index(["monitor", "evaluated_model"]).loc[("single:a", "all"), "n_calibration_runs"] == 4


def test_pooled_vs_single_is_undecided_on_undefined_metrics():
    rows = pd.DataFrame(
        {
            "monitor": ["pooled", "single:a", "single:b"],
            "evaluated_model": "all",
            "fnr": [0.0, 0.5, np.nan],
            "fpr": [0.1, 0.1, np.nan],
            "auroc": [0.9, 0.9, np.nan],
        }
    )
    result = S.pooled_vs_single(rows)
    assert result["single"]["a"]["beaten"] is True  # same AUROC, lower error
    assert result["single"]["b"]["beaten"] is None and not result["pooled_beats_every_single"]


def test_lopo_leaves_out_one_model_and_perturbation_at_a_time():
    runs, tables, deltas = two_model_grid()
    cal = grid_of(runs, tables, deltas, "calibration")
    lopo = M.leave_one_perturbation_out(cal, TRAITS, SETTINGS)
    assert list(zip(lopo["model"], lopo["perturbation"])) == [
        ("a", "gsm8k"),
        ("a", "insecure"),
        ("b", "risky"),
        ("b", "support"),
    ]
    assert (lopo["n_runs"] == 2).all()


def test_one_model_study_keeps_its_tables():
    """Tables without a model column (one model, `default`): evaluation.csv as before, lopo.csv one row per
    perturbation (plus its model column) whose metrics are those of leaving that perturbation out."""
    rng = np.random.default_rng(1)
    tables, deltas, pert = {}, {}, {}
    for p in ("insecure", "gsm8k", "support"):
        for seed in (0, 1):
            name, table, delta = run_table("x", p, seed, rng)
            tables[name], deltas[name], pert[name] = table.drop(columns="model").assign(run=name), delta, p
    cal_names = [r for r in tables if r.endswith("s0")]
    held_names = [r for r in tables if r.endswith("s1")]
    cal = S.grid_data(tables, deltas, pert, cal_names)
    held = S.grid_data(tables, deltas, pert, held_names)
    out = S.evaluate_grid(cal, held, {}, TRAITS, SETTINGS, [0.05], True)
    metrics = [f"{m}{s}" for m in ("fnr", "fpr", "auroc") for s in ("", "_ci_low", "_ci_high")]
    assert list(out["evaluation"].columns) == ["feature_set", *metrics, "n_runs", "n_checkpoints"]
    assert "pca7_full" in set(out["evaluation"]["feature_set"])
    lopo = out["lopo"]
    assert list(lopo.columns) == ["model", "perturbation", "feature_set", *metrics, "n_runs", "n_checkpoints"]
    assert list(lopo["perturbation"]) == ["gsm8k", "insecure", "support"] and set(lopo["model"]) == {"default"}
    for _, row in lopo.iterrows():
        left = (cal.table["perturbation"] == row["perturbation"]).to_numpy()
        ref, _ = M.evaluate_feature_set("alignment_7d", cal.subset(~left), cal.subset(left), TRAITS, SETTINGS)
        for m in ("fnr", "fpr", "auroc", "n_checkpoints"):
            assert row[m] == pytest.approx(ref[m], nan_ok=True)
    assert out["pc1"]["models"] == ["default"] and 0 < out["pc1"]["pc1_variance_explained"] <= 1
    # pooled and single are the one model's monitor: the same rows
    by_model = S.evaluation_by_model(cal, held, TRAITS, SETTINGS).set_index(["monitor", "evaluated_model"])
    assert list(by_model.index) == [(m, t) for m in ("pooled", "single:default") for t in ("default", "all")]
    np.testing.assert_allclose(
        by_model.loc["pooled", metrics].to_numpy(float), by_model.loc["single:default", metrics].to_numpy(float)
    )
    assert S.pooled_vs_single(by_model.reset_index())["pooled_beats_every_single"] is False


def test_stress_model_rows_and_unpooled_full_delta():
    """A model outside the fit is scored by the pooled monitor (stress `model:<key>`); the full-Δh̄ baseline of
    models of different widths is a NaN row with a note, not a crash."""
    runs, tables, deltas = two_model_grid(widths={"a": 8, "b": 12}, stress_model="c")
    cal, held = grid_of(runs, tables, deltas, "calibration"), grid_of(runs, tables, deltas, "held_out")
    assert cal.delta is None  # widths 8 and 12 cannot stack
    stress = {"model:c": grid_of(runs, tables, deltas, "stress_model")}
    out = S.evaluate_grid(cal, held, stress, TRAITS, SETTINGS, [0.05], True)
    ev = out["evaluation"].set_index("feature_set")
    assert np.isnan(ev.loc["pca7_full", "auroc"]) and "differs in width" in ev.loc["pca7_full", "note"]
    assert ev.loc["alignment_7d", "auroc"] > 0.95 and pd.isna(ev.loc["alignment_7d", "note"])
    assert list(ev.index) == M.feature_set_names(cal.table, TRAITS, True)  # the order of a one-model table
    row = out["stress"].set_index("stress").loc["model:c"]
    ref, _ = M.evaluate_feature_set("alignment_7d", cal, stress["model:c"], TRAITS, SETTINGS)
    assert row["auroc"] == pytest.approx(ref["auroc"]) and row["n_runs"] == 4
    assert out["pc1"]["models"] == ["a", "b"]  # the stress-arm model is never fitted on


def test_saved_monitor_names_its_pool_and_loads_for_each_member(tmp_path):
    runs, tables, deltas = two_model_grid()
    cal = grid_of(runs, tables, deltas, "calibration")
    reg = M.fit_regressor(cal.table[TRAITS].to_numpy(float), cal.em, SETTINGS)
    pool = [M.FittedModel("a", "org/a", 2, "llama", 1.0), M.FittedModel("b", "org/b", 3, "qwen", 7.0)]
    mon = M.pooled_monitor(reg, TRAITS, "v", pool, SETTINGS.tau)
    assert mon.layer is None and mon.base_model is None  # two layers, two models
    path = tmp_path / "monitor.skops"
    M.save_monitor(mon, path)
    side = json.loads(M.sidecar_path(path).read_text())
    assert [m["key"] for m in side["models"]] == ["a", "b"] and side["base_model"] is None
    back = M.load_monitor(path, "org/b", "v")
    assert back.layer == 3 and back.base_model == "org/b" and back.models == tuple(pool)
    np.testing.assert_array_equal(back.predict(cal.table), mon.predict(cal.table))
    with pytest.raises(EMLabError, match=r"fitted on base models `org/a`, `org/b`, not `org/c`"):
        M.load_monitor(path, "org/c", "v")
    with pytest.raises(EMLabError, match="trait files `v`, not `w`"):
        M.load_monitor(path, "org/a", "w")
    # one model's monitor keeps today's sidecar: its base model and layer
    one = M.pooled_monitor(reg, TRAITS, "v", pool[:1], SETTINGS.tau)
    M.save_monitor(one, tmp_path / "one.skops")
    side = json.loads(M.sidecar_path(tmp_path / "one.skops").read_text())
    assert (side["base_model"], side["layer"]) == ("org/a", 2)


def _meta(path, key, traits=TRAITS, version="v", model_id=None, layer=2):
    meta = {"alignment_traits": traits, "trait_version": version, "model_id": model_id or f"org/{key}", "layer": layer}
    if key is not None:
        meta["model_key"] = key
    path.write_text(json.dumps(meta))
    return str(path)


def test_directions_are_read_by_the_model_key_they_carry(tmp_path):
    models = {"a": {"source": "org/a"}, "b": {"source": "org/b"}}
    paths = [_meta(tmp_path / "b.json", "b", layer=3), _meta(tmp_path / "a.json", "a")]
    metas = MT.read_metas(paths, models)
    assert list(metas) == ["b", "a"] and metas["b"]["layer"] == 3
    assert MT.model_table(metas, models)["b"] == {"source": "org/b", "family": None, "size_b": None, "layer": 3}
    assert MT.pooled_traits(metas) == (TRAITS, "v")
    old = _meta(tmp_path / "old.json", None, model_id="org/a")
    with pytest.raises(EMLabError, match="names no model_key"):
        MT.read_metas([old, paths[0]], models)
    assert list(MT.read_metas([old], {"default": {"source": "org/a"}})) == ["default"]  # one model: its key
    with pytest.raises(EMLabError, match=r"missing \['b'\]"):
        MT.read_metas(paths[1:], models)
    with pytest.raises(EMLabError, match="extracted from `org/a`, the config's base model a is `org/z`"):
        MT.read_metas(paths, {"a": {"source": "org/z"}, "b": {"source": "org/b"}})
    odd = {
        "a": {"alignment_traits": TRAITS, "trait_version": "v"},
        "b": {"alignment_traits": TRAITS[:6], "trait_version": "v"},
    }
    with pytest.raises(EMLabError, match="different alignment traits"):
        MT.pooled_traits(odd)
    with pytest.raises(EMLabError, match="different trait files"):
        MT.pooled_traits(
            {
                "a": {"alignment_traits": TRAITS, "trait_version": "v"},
                "b": {"alignment_traits": TRAITS, "trait_version": "w"},
            }
        )
    runs = {"r1": {"model": "a"}, "r2": {}}
    with pytest.raises(EMLabError, match="gives no model"):
        S.run_models(runs, ["a", "b"])
    assert S.run_models({"r2": {}}, ["default"]) == {"r2": "default"}
    table = pd.DataFrame({"run": ["r"], "step": [0]})
    with pytest.raises(EMLabError, match="names no base model"):
        S.attach_models({"r": table, "q": table.assign(run="q", model="b")}, {"r": "a", "q": "b"})


def test_train_evaluate_script_pools_two_models(tmp_path):
    """monitor_train_evaluate as Snakemake runs it, over two models of different widths and a stress-arm model:
    every file matched by the ids it carries (input lists in another order than params)."""
    import runpy
    from types import SimpleNamespace

    from emlab.model.tensors import save_tensors
    from emlab.monitor.traits import LayerScores, TraitDirections, save_directions

    runs, tables, deltas = two_model_grid(widths={"a": 8, "b": 12, "c": 8}, stress_model="c")
    for r in runs:
        tables[r].to_csv(tmp_path / f"{r}.csv", index=False)
        delta, steps = deltas[r]
        save_tensors(
            tmp_path / f"{r}.safetensors",
            {"delta": torch.tensor(delta).float(), "steps": torch.tensor(steps)},
            {"run": r, "model": runs[r]["model"]},
        )
    models = {
        k: {"source": f"org/{k}", "family": "tiny", "size_b": s} for k, s in (("a", 0.1), ("b", 0.2), ("c", 14.0))
    }
    metas, tensors = [], []
    for k, (layer, d) in {"c": (1, 8), "a": (2, 8), "b": (3, 12)}.items():
        halves = torch.randn(2, 4, 7, d, generator=torch.Generator().manual_seed(layer))
        dirs = TraitDirections(
            halves[0].clone(),
            halves[1].clone(),
            tuple(TRAITS),
            tuple(TRAITS),
            layer,
            LayerScores(np.zeros(4), np.zeros(4)),
            "v",
            f"org/{k}",
            halves,
            k,
        )
        save_directions(dirs, tmp_path / f"{k}.safetensors", tmp_path / f"{k}.json")
        metas.append(str(tmp_path / f"{k}.json"))
        tensors.append(str(tmp_path / f"{k}.safetensors"))
    tensors.reverse()  # matched to the metas by the model key both carry
    out = tmp_path / "monitor"
    names = ["evaluation", "evaluation_by_model", "lopo", "tau_sweep", "alarm_steps", "alarm_runs", "stress"]
    names += ["predictions", "regressors", "basis_stability", "basis_cosine", "sae_features"]
    outputs = {n: str(out / f"{n}.csv") for n in names}
    outputs.update(
        pc1=str(out / "pc1.json"), monitor=str(out / "monitor.skops"), sidecar=str(out / "monitor.skops.json")
    )
    in_order = sorted(runs, reverse=True)
    scripts = REPO / "workflow" / "scripts"
    smk = SimpleNamespace(
        input=SimpleNamespace(
            tables=[str(tmp_path / f"{r}.csv") for r in in_order],
            deltas=[str(tmp_path / f"{r}.safetensors") for r in in_order],
            metas=metas,
            tensors=tensors,
        ),
        output=SimpleNamespace(**outputs),
        log=[],
        threads=1,
        scriptdir=str(scripts),
        params=train_evaluate_params(runs, regressors=["random_forest"], models=models, sae={"n_features": 4}),
    )
    runpy.run_path(str(scripts / "monitor_train_evaluate.py"), init_globals={"snakemake": smk})
    by_model = pd.read_csv(outputs["evaluation_by_model"])
    assert S.pooled_vs_single(by_model)["pooled_beats_every_single"]
    assert set(by_model["monitor"]) == {"pooled", "single:a", "single:b"}  # c is never fitted on
    assert set(pd.read_csv(outputs["stress"])["stress"]) == {"model:c"}
    ev = pd.read_csv(outputs["evaluation"]).set_index("feature_set")
    assert np.isnan(ev.loc["pca7_full", "auroc"]) and "differs in width" in ev.loc["pca7_full", "note"]
    assert set(pd.read_csv(outputs["lopo"])["model"]) == {"a", "b"}
    assert json.loads((out / "pc1.json").read_text())["models"] == ["a", "b"]
    side = json.loads((out / "monitor.skops.json").read_text())
    assert [(m["key"], m["model_id"], m["layer"]) for m in side["models"]] == [("a", "org/a", 2), ("b", "org/b", 3)]
    assert M.load_monitor(outputs["monitor"], "org/b", "v").layer == 3
    with pytest.raises(EMLabError, match="not `org/c`"):  # the stress-arm model is outside the pool
        M.load_monitor(outputs["monitor"], "org/c", "v")
    predicted = pd.read_csv(outputs["predictions"])
    assert set(predicted["model"]) == {"a", "b", "c"}
    # basis_stability: every model's halves, each tensors file paired with its json by the key both carry
    smk.params.basis_stability = True
    smk.params.models = {k: v for k, v in models.items()}
    runpy.run_path(str(scripts / "monitor_train_evaluate.py"), init_globals={"snakemake": smk})
    cos = pd.read_csv(outputs["basis_cosine"])
    assert list(cos.columns[:2]) == ["model", "trait"] and sorted(set(cos["model"])) == ["a", "b", "c"]
    assert (cos.groupby("model").size() == 7).all()


def test_live_monitor_accepts_a_pool_that_includes_its_model(tiny_model_dir, tmp_path):
    """finetune's live monitor (training.monitor) on a monitor pooled over two models: it reads its own model's
    layer; a pool without its model, or with its model at another layer than its directions, is refused."""
    from emlab.model.loading import load_model, load_tokenizer
    from emlab.monitor.live import LiveMonitorSettings, build_live_monitor
    from emlab.monitor.traits import save_directions
    from emlab.plan.traits import load_trait_set
    from helpers.trait_helpers import random_directions

    trait_set = load_trait_set(REPO / "data" / "traits")
    trait_set = type(trait_set)(
        trait_set.alignment, trait_set.semantic, trait_set.questions, trait_set.measurement[:4], trait_set.versions
    )
    dirs = random_directions(trait_set, layer=2)  # of model_id "tiny"
    save_directions(dirs, tmp_path / "d.safetensors", tmp_path / "d.json")
    runs, tables, deltas = two_model_grid()
    cal = grid_of(runs, tables, deltas, "calibration")
    assert list(dirs.alignment_names) == TRAITS  # the trait files' names: the synthetic tables' columns
    reg = M.fit_regressor(cal.table[TRAITS].to_numpy(float), cal.em, SETTINGS)
    model, tok = load_model(tiny_model_dir, device="cpu", dtype="float32"), load_tokenizer(tiny_model_dir)
    settings = LiveMonitorSettings(every=1, action="warn")

    def live_with(pool):
        path = tmp_path / f"m{len(pool)}{pool[-1].layer}.skops"
        M.save_monitor(M.pooled_monitor(reg, dirs.alignment_names, trait_set.version, pool, 0.05), path)
        return build_live_monitor(
            path, tmp_path / "d.safetensors", tmp_path / "d.json", trait_set, "tiny", model, tok, settings, 4
        )

    live = live_with([M.FittedModel("q", "org/qwen", 5), M.FittedModel("small", "tiny", 2)])
    assert live.monitor.layer == 2 and live.monitor.base_model == "tiny"
    decision = live(1, model=model)  # the unchanged model: no drift
    assert np.allclose(decision.drift, 0, atol=1e-5) and 0 <= decision.prediction <= 1
    with pytest.raises(EMLabError, match="not `tiny`"):
        live_with([M.FittedModel("q", "org/qwen", 5)])
    with pytest.raises(EMLabError, match="reads layer 1, the directions chose layer 2"):
        live_with([M.FittedModel("q", "org/qwen", 5), M.FittedModel("small", "tiny", 1)])


def test_analyses_and_figures_over_two_models(tmp_path):
    """monitor_analyses and figure_monitor on runs of two models: the geometry tables say each row's model."""
    import runpy
    from types import SimpleNamespace

    from emlab.monitor import analyses as A
    from emlab.monitor import figures as F

    runs, tables, deltas = two_model_grid()
    for r in runs:
        tables[r].to_csv(tmp_path / f"{r}.csv", index=False)
    metas = [_meta(tmp_path / "a.json", "a"), _meta(tmp_path / "b.json", "b", layer=3)]
    cal = grid_of(runs, tables, deltas, "calibration")
    pc1 = tmp_path / "pc1.json"
    pc1.write_text(json.dumps({**M.pc1_summary(cal.table, TRAITS), "models": ["a", "b"]}))
    scripts = REPO / "workflow" / "scripts"
    geo = {
        n: str(tmp_path / f"{n}.csv")
        for n in ("pairs", "severity", "severity_spearman", "trait_points", "trait_behaviour")
    }
    smk = SimpleNamespace(
        input=SimpleNamespace(
            tables=[str(tmp_path / f"{r}.csv") for r in runs], metas=metas, pc1=str(pc1), judgments=[]
        ),
        output=SimpleNamespace(**geo),
        log=[],
        threads=1,
        scriptdir=str(scripts),
        params=SimpleNamespace(
            runs=runs,
            models={"a": {"source": "org/a"}, "b": {"source": "org/b"}},
            analyses={"pair_tolerance": 0.5, "severity_at": "final", "trait_judges": False},
            label_conditions={},
            trait_metrics={t: f"trait_{t}" for t in TRAITS},
        ),
    )
    runpy.run_path(str(scripts / "monitor_analyses.py"), init_globals={"snakemake": smk})
    severity = pd.read_csv(geo["severity"])
    assert len(severity) == 8 and set(zip(severity["model"], severity["perturbation"])) == {
        (m, p) for m in ("a", "b") for p in AXIS
    }  # one point per model and perturbation
    pairs = pd.read_csv(geo["pairs"])
    assert {"dangerous_model", "benign_model"} <= set(pairs.columns) and len(pairs)
    fig = tmp_path / "fig"
    lopo = M.leave_one_perturbation_out(cal, TRAITS, SETTINGS)
    F.lopo(lopo, fig / "lopo.png", fig / "lopo.pdf")
    F.pc1_drift(tables, runs, json.loads(pc1.read_text()), fig / "pc1.png", fig / "pc1.pdf")
    F.severity_ordering(severity, pd.read_csv(geo["severity_spearman"]), fig / "s.png", fig / "s.pdf")
    points = A.trait_behaviour_points(
        A.grid_table(tables, runs).query("step <= 1"),
        {r: {0: f"mon__{runs[r]['model']}__base", 1: f"{r}__step1"} for r in runs},
        pd.DataFrame(
            [
                {"condition": c, "trait": t, "metric": f"trait_{t}", "judge_score": 50.0, "n_scored": 1}
                for c in {f"mon__{m}__base" for m in "ab"} | {f"{r}__step1" for r in runs}
                for t in TRAITS
            ]
        ),
        TRAITS,
    )
    assert set(points.loc[points["step"] == 0, "model"]) == {"a", "b"}  # each model's base once
    F.trait_behaviour(
        points, A.trait_behaviour_agreement(points, {t: f"trait_{t}" for t in TRAITS}), fig / "t.png", fig / "t.pdf"
    )
    assert all((fig / f"{n}.{e}").stat().st_size > 0 for n in ("lopo", "pc1", "s", "t") for e in ("png", "pdf"))
