"""The monitor's SAE baseline (emlab.monitor.sae, docs/trait-monitoring.md "SAE baseline"): a tiny random SAE
saved in SAELens' format with one feature planted along the drift direction that carries the EM rate (known
answer: it is chosen first, on calibration rows only), the loader's errors, the row without an SAE, the plan
check, the drift read at the SAE's layer in the same forwards, and the rehearsal's planted SAE and check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from emlab.core.config import load_config
from emlab.core.errors import EMLabError
from emlab.monitor import regressor as M
from emlab.monitor import sae as SAE
from emlab.monitor import stage as S
from emlab.plan import sae as PLAN_SAE
from emlab.plan.monitor import sae_baseline

REPO = Path(__file__).resolve().parents[2]
TRAITS = ["honesty", "sycophancy"]
SETTINGS = M.MonitorSettings(n_estimators=30, max_depth=3, min_samples_leaf=1, seed=0, tau=0.05, n_bootstrap=20, ci=0.9)
D, D_SAE, PLANTED = 16, 64, 37


def planted_sae(folder, layer=3, d=D, d_sae=D_SAE, planted=PLANTED, seed=0):
    """A random SAE whose feature `planted` decodes to u; every other feature is orthogonal to u. Returns u."""
    g = torch.Generator().manual_seed(seed)
    u = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    rand = torch.randn(d_sae, d, generator=g)
    rand = rand - torch.outer(rand @ u, u)
    decoder = torch.nn.functional.normalize(rand, dim=1) * 2.0  # not unit: the baseline normalises the rows
    decoder[planted] = 3.0 * u
    SAE.write_sae(folder, decoder, f"blocks.{layer}.hook_resid_post")
    return u.numpy()


def runs(u, perts: dict[str, bool], seed: int, steps=(0, 1, 2, 3)):
    """Drift tables and Δh̄ at the SAE's layer: every run drifts along a shared direction and noise; the
    dangerous ones also along u, and their EM rate follows that drift."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=D)
    tables, sae_drift, pert = {}, {}, {}
    for p, dangerous in perts.items():
        for s in (0, 1):
            name = f"mon__{p}__s{s}"
            along = rng.uniform(0.3, 0.6) if dangerous else 0.0
            delta = np.stack([t * (0.2 * shared + along * u + rng.normal(0, 0.05, D)) for t in steps])
            em = np.clip(0.1 * np.array(steps) * along + rng.uniform(0, 0.01, len(steps)), 0, 1)
            tables[name] = pd.DataFrame(
                {
                    "run": name,
                    "step": list(steps),
                    **{t: rng.normal(0, 1e-3, len(steps)) for t in TRAITS},
                    "em_rate": em,
                }  # fmt: skip
            )
            sae_drift[name] = (delta, np.array(steps))
            pert[name] = p
    return tables, sae_drift, pert


def test_planted_feature_is_chosen_on_calibration_rows_only(tmp_path):
    u = planted_sae(tmp_path / "sae")
    sae = PLAN_SAE.read_sae(tmp_path / "sae", n_layers=4, hidden_size=D)
    assert (sae.d_in, sae.d_sae, sae.layer, sae.architecture) == (D, D_SAE, 3, "standard")
    t_c, d_c, p_c = runs(u, {"bad": True, "worse": True, "good": False, "fine": False}, seed=0)
    t_h, d_h, p_h = runs(u, {"evil": True, "calm": False}, seed=1)
    tables, chosen, note = SAE.add_sae_columns({**t_c, **t_h}, {**d_c, **d_h}, list(t_c), sae, 4, monitored_layer=2)
    assert chosen["feature"].tolist()[0] == PLANTED and chosen["rank"].tolist() == [1, 2, 3, 4]
    assert chosen["correlation"].iloc[0] > 0.8 and (chosen["layer"] == 3).all()
    assert "4 of 64 features (layer 3)" in note and "monitor reads layer 2" in note
    # the column is Δh̄ . u (the planted row had norm 3: rows are normalised)
    run = "mon__evil__s0"
    assert tables[run][f"sae.{PLANTED}"].to_numpy() == pytest.approx(d_h[run][0] @ u, abs=1e-5)
    # no leakage: the held-out runs' labels do not move the choice
    scrambled = {r: t.assign(em_rate=t["em_rate"].to_numpy()[::-1]) for r, t in t_h.items()}
    _, again, _ = SAE.add_sae_columns({**t_c, **scrambled}, {**d_c, **d_h}, list(t_c), sae, 4)
    assert again["feature"].tolist() == chosen["feature"].tolist()
    # the same regressor and held-out rows as every feature set; the planted feature separates them
    cal = S.grid_data({r: tables[r] for r in t_c}, {r: d_c[r] for r in t_c}, p_c, list(t_c))
    held = S.grid_data({r: tables[r] for r in t_h}, {r: d_h[r] for r in t_h}, p_h, list(t_h))
    assert "sae" in M.feature_set_names(cal.table, TRAITS, True)
    ev = M.evaluate_feature_sets(cal, held, TRAITS, SETTINGS, ["alignment_7d", "sae"]).set_index("feature_set")
    assert ev.loc["sae", "auroc"] > 0.9 and np.isfinite(ev.loc["sae", ["fnr", "fpr"]].astype(float)).all()
    ev = SAE.with_sae_row(ev.reset_index(), held, note).set_index("feature_set")
    assert ev.loc["sae", "note"] == note and len(ev) == 2


def test_without_an_sae_the_row_says_so(tmp_path):
    u = planted_sae(tmp_path / "sae")
    t, d, p = runs(u, {"bad": True, "good": False}, seed=0)
    data = S.grid_data(t, d, p, list(t))
    ev = M.evaluate_feature_sets(data, data, TRAITS, SETTINGS, ["alignment_7d"])
    out = SAE.with_sae_row(ev, data, SAE.NO_SAE_NOTE).set_index("feature_set")
    assert out.loc["sae", "note"] == "no SAE configured (monitor.sae.path is null)"
    assert out.loc["sae", ["fnr", "fpr", "auroc"]].isna().all() and out.loc["sae", "n_runs"] == 4
    assert "sae" not in M.feature_set_names(data.table, TRAITS, True)


def test_selection_ties_and_flat_features():
    x = np.array([[0.0, 1.0, 0.0, 2.0], [1.0, 1.0, 0.0, 4.0], [2.0, 1.0, 0.0, 6.0]])  # feature 1, 2 flat
    chosen = SAE.select_features(x, np.array([0.0, 0.1, 0.2]), 3)
    assert chosen["feature"].tolist() == [3, 0, 1]  # |corr| 1, 1 (larger drift first), then the flat ones
    flat_em = SAE.select_features(x, np.zeros(3), 2)  # no EM variance: by drift size
    assert flat_em["feature"].tolist() == [3, 0] and (flat_em["correlation"] == 0).all()
    with pytest.raises(EMLabError, match="n_features is 5, the SAE has 4"):
        SAE.select_features(x, np.zeros(3), 5)


def _cfg(folder) -> dict:
    return json.loads((Path(folder) / "cfg.json").read_text())


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: (f / "cfg.json").unlink(), "has no cfg.json"),
        (lambda f: (f / "sae_weights.safetensors").unlink(), "has no sae_weights.safetensors"),
        (lambda f: (f / "cfg.json").write_text("{not json"), "is not valid JSON"),
        (lambda f: (f / "cfg.json").write_text(json.dumps({**_cfg(f), "d_in": None})), "`d_in` must be"),
        (lambda f: (f / "cfg.json").write_text(json.dumps({**_cfg(f), "d_in": 32})), "W_dec of shape"),
        (lambda f: (f / "cfg.json").write_text(json.dumps({**_cfg(f), "metadata": {}})), "no hook named"),
        (
            lambda f: (f / "cfg.json").write_text(
                json.dumps({**_cfg(f), "metadata": {"hook_name": "blocks.9.hook_resid_post"}})
            ),
            "reads block 9, but the base model has 4 layers",
        ),
        (
            lambda f: (f / "cfg.json").write_text(
                json.dumps({**_cfg(f), "metadata": {"hook_name": "blocks.2.hook_mlp_out"}})
            ),
            "is not the residual stream after a block",
        ),
    ],
)
def test_loader_errors_name_the_key(tmp_path, change, message):
    planted_sae(tmp_path / "sae")
    change(tmp_path / "sae")
    with pytest.raises(EMLabError, match=message):
        PLAN_SAE.read_sae(tmp_path / "sae", n_layers=4)
    with pytest.raises(EMLabError, match="is not a folder"):
        PLAN_SAE.read_sae(tmp_path / "nowhere")


def test_older_cfg_and_width_check(tmp_path):
    planted_sae(tmp_path / "sae")
    cfg = {k: v for k, v in _cfg(tmp_path / "sae").items() if k != "metadata"}
    (tmp_path / "sae" / "cfg.json").write_text(
        json.dumps({**cfg, "hook_name": "blocks.3.hook_resid_pre", "hook_layer": 3})
    )
    assert PLAN_SAE.read_sae(tmp_path / "sae", n_layers=4).layer == 2  # the input of block 3 is block 2's output
    with pytest.raises(EMLabError, match="d_in is 16, the base model's hidden size is 576"):
        PLAN_SAE.read_sae(tmp_path / "sae", n_layers=4, hidden_size=576)
    with pytest.raises(EMLabError, match="reads the embeddings"):
        PLAN_SAE.hook_layer("blocks.0.hook_resid_pre", "here")
    assert PLAN_SAE.hook_layer("model.layers.7", "here") == 7


def test_plan_check_and_the_paper_setting(tmp_path):
    paper = load_config(REPO / "data" / "configs" / "paper.yaml")
    assert paper["monitor"]["sae"] == {"path": None, "n_features": 256, "model": None}  # the paper's K; no SAE ships
    assert load_config(REPO / "config.yaml")["monitor"]["sae"]["path"] is None
    assert sae_baseline(paper, 48, None) is None
    planted_sae(tmp_path / "sae")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"hidden_size": D, "num_hidden_layers": 4}))
    cfg = {"monitor": {"sae": {"path": str(tmp_path / "sae"), "n_features": 8}}}
    assert sae_baseline(cfg, 4, str(tmp_path / "sae"), str(model)).layer == 3
    (model / "config.json").write_text(json.dumps({"hidden_size": 32}))
    with pytest.raises(EMLabError, match="d_in is 16, the base model's hidden size is 32"):
        sae_baseline(cfg, 4, str(tmp_path / "sae"), str(model))
    cfg["monitor"]["sae"]["n_features"] = 65
    with pytest.raises(EMLabError, match="n_features is 65, but the SAE .* has only 64"):
        sae_baseline(cfg, 4, str(tmp_path / "sae"))


def test_drift_at_the_sae_layer_in_the_same_forwards(tiny_model_dir, tmp_path):
    """measure_run's extra layer: Δh̄ there equals an independent measurement at that layer."""
    from emlab.model.loading import load_model, load_tokenizer
    from emlab.monitor.drift import measure
    from emlab.plan.traits import load_trait_set
    from helpers.trait_helpers import random_directions
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    trait_set = S.subsample_trait_set(load_trait_set(REPO / "data" / "traits"), S.TraitSubsample(None, None, 4))
    peft = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=2, lora_alpha=4, target_modules=["v_proj"])
    )
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=torch.Generator().manual_seed(1))
    peft.save_pretrained(tmp_path / "step-1")
    dirs = random_directions(trait_set, layer=1)
    settings = S.DriftStageSettings(batch_size=4, random_seeds=[0])
    measured = S.measure_run(
        tiny_model_dir, {1: str(tmp_path / "step-1")}, dirs, trait_set, settings, "cpu", "float32", extra_layers=[3]
    )
    delta, extra = measured.delta, measured.at_layers
    assert delta.shape == extra[3].shape == (2, 64) and float(extra[3][0].abs().max()) == 0.0
    tok = load_tokenizer(tiny_model_dir)
    base = measure(load_model(tiny_model_dir, device="cpu", dtype="float32"), tok, trait_set.measurement, 3, 4)
    tuned = PeftModel.from_pretrained(load_model(tiny_model_dir, device="cpu", dtype="float32"), tmp_path / "step-1")
    after = measure(tuned.eval(), tok, trait_set.measurement, 3, 4)
    assert extra[3][1] == pytest.approx(after.mean - base.mean, abs=1e-4)
    assert float((after.mean - base.mean).norm()) > 1e-3  # the adapter moved layer 3
    assert S.measure_run(tiny_model_dir, {}, dirs, trait_set, settings, "cpu", "float32").at_layers == {}


def test_rehearsal_plants_an_sae_and_checks_it(tmp_path):
    """The planted SAE (u at a seeded index, the rest off u, w, z) reads back through the plan check, is not
    rewritten when unchanged, and the rehearsal check passes on a run that chose it and fails on one that did not."""
    from emlab.model.tensors import save_tensors
    from emlab.rehearsal import checks as C
    from emlab.rehearsal import planted as P

    model = tmp_path / "model"
    model.mkdir()
    q, _ = torch.linalg.qr(torch.randn(D, 3, generator=torch.Generator().manual_seed(0)))
    save_tensors(
        model / "planted.safetensors", {"u": q[:, 0].contiguous(), "w": q[:, 1].contiguous(), "z": q[:, 2].contiguous()}
    )
    (model / "config.json").write_text(json.dumps({"hidden_size": D}))
    folder = P.write_sae(tmp_path / "sae", model, layer=2, d_sae=128)
    sae = sae_baseline({"monitor": {"sae": {"n_features": 16}}}, 4, str(folder), str(model))
    assert (sae.layer, sae.d_sae) == (2, 128)
    mtime = (folder / "sae_weights.safetensors").stat().st_mtime_ns
    assert P.write_sae(tmp_path / "sae", model, layer=2, d_sae=128).samefile(folder)
    assert (folder / "sae_weights.safetensors").stat().st_mtime_ns == mtime  # unchanged: not rewritten
    planted = P.planted_sae_feature(128, 0)
    from safetensors.torch import load_file

    w_dec = load_file(folder / "sae_weights.safetensors")["W_dec"]
    others = torch.cat([w_dec[:planted], w_dec[planted + 1 :]])
    assert torch.allclose(w_dec[planted], q[:, 0]) and float((others @ q).abs().max()) < 1e-5

    class Run:
        res = tmp_path / "results"
        mon = res / "monitor"
        models = {"default": None}  # one model: the SAE reads the planted model given
        cfg = {"monitor": {"sae": {"path": str(folder), "n_features": 3}}}

    mon = Run.mon
    mon.mkdir(parents=True)
    pd.DataFrame(
        {
            "feature_set": ["alignment_7d", "sae"],
            "fnr": [0.0, 0.0],
            "fpr": [np.nan, np.nan],
            "auroc": [1.0, 0.9],
            "note": [None, "SAE basis"],
        }  # fmt: skip
    ).to_csv(mon / "evaluation.csv", index=False)
    pd.DataFrame({"rank": [1, 2, 3], "feature": [5, planted, 9]}).to_csv(mon / "sae_features.csv", index=False)
    (result,) = C.check_sae_baseline(Run, model)
    assert result["pass"] and result["measured"]["rank of the planted feature"] == 2
    pd.DataFrame({"rank": [1, 2, 3], "feature": [5, planted + 1, 9]}).to_csv(mon / "sae_features.csv", index=False)
    assert not C.check_sae_baseline(Run, model)[0]["pass"]
    Run.cfg = {"monitor": {"sae": {"path": None, "n_features": 3}}}
    assert C.check_sae_baseline(Run, model) == []


def test_the_rehearsal_config_points_at_the_planted_sae():
    import yaml
    from emlab.rehearsal import derive as D

    paper = yaml.safe_load((REPO / "data" / "configs" / "paper.yaml").read_text())
    from emlab.core.config import validate_config

    kept = D.rehearsal_models(validate_config(paper))
    planted = D.Planted(
        "/planted/model",
        {n: f"/planted/{n}.jsonl" for n in paper["datasets"]},
        "/p/traits",
        "/p/sae",
        {k: f"/planted/{k}" for k in kept},
    )
    # the planted SAE reads the first pooled model (an SAE belongs to one model's residual stream)
    assert D.derive(paper, planted)["monitor"]["sae"] == {"path": "/p/sae", "n_features": 256, "model": "llama8"}
    assert "monitor.sae.path" in dict(D.CHANGES)
