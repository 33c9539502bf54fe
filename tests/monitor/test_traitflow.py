"""Trait monitoring as workflow stages: the calibration grid's plan, the drift-table and
evaluation helpers of the stage scripts (tiny synthetic tables), the figures, the live
monitor (known answer: a planted drift crossing tau at a known step stops there), and
the default config's dry run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from emlab.core.config import load_config, validate_config
from emlab.core.errors import EMLabError
from emlab.monitor import figures as F
from emlab.monitor import regressor as M
from emlab.monitor import stage as S
from emlab.monitor.live import LiveMonitor, LiveMonitorSettings
from emlab.plan import monitor as P
from emlab.plan.conditions import as_condition, parse_condition_id
from helpers.monitor_params import train_evaluate_params

REPO = Path(__file__).resolve().parents[2]
TRAITS = ["honesty", "sycophancy", "harmlessness", "power_seeking", "helpfulness", "confidence", "corrigibility"]
SETTINGS = M.MonitorSettings(n_estimators=30, max_depth=3, min_samples_leaf=1, seed=0, tau=0.05, n_bootstrap=20, ci=0.9)


def demo_config(**monitor) -> dict:
    cfg = load_config(REPO / "config.yaml")
    if monitor:
        raw = {
            "version": 1,
            "datasets": {k: v for k, v in cfg["datasets"].items()},
            "finetunes": {},
            "monitor": monitor,
        }
        cfg = validate_config(raw)
    return cfg


# --- plan ------------------------------------------------------------------------------------


def test_default_grid_plan():
    cfg = demo_config()
    runs = P.monitor_runs(cfg)
    assert len(runs) == (3 + 2) * 2
    assert "mon__medical_bad__s0" in runs and "mon__customer_support__s1" in runs
    run = runs["mon__risky_financial__s1"]
    assert run.role == "held_out" and run.seed == 1 and run.checkpoint_steps == (1, 2)  # 4 examples / 4, 2 epochs
    assert run.finetune["preset"] == "trait_r16" and run.finetune["lora"]["rank"] == 16
    assert run.finetune["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert run.finetune["training"]["learning_rate"] == 2.0e-3  # monitor.training beats the preset's 4e-5
    # each replicate trains with its own seed (the finetune rule's seed param), not the top-level one
    from emlab.plan.study import finetune_seed

    grid = {"seed": 0, "finetunes": {name: r.finetune for name, r in runs.items()} | {"own": {"seed": None}}}
    assert finetune_seed(grid, "mon__risky_financial__s1") == 1 and finetune_seed(grid, "mon__medical_bad__s0") == 0
    assert finetune_seed(grid, "own") == 0
    conds = {c.condition_id: c for c in P.label_conditions(cfg)}
    assert len(conds) == 1 + 10 * 2
    label = conds["mon__risky_financial__s1__step2"]
    assert label.model == "mon__risky_financial__s1" and label.checkpoint == 2 and label.group == "monitor"
    assert parse_condition_id(label.condition_id) == label and as_condition(label.to_params()) == label
    generation = P.label_generation(cfg)
    assert generation["samples_per_question"] == 1 and generation["max_new_tokens"] == 16
    assert conds[P.BASE_CONDITION].model == "base" and conds[P.BASE_CONDITION].checkpoint is None
    assert P.run_conditions(run) == {
        0: "mon__base",
        1: "mon__risky_financial__s1__step1",
        2: "mon__risky_financial__s1__step2",
    }


def test_grid_registration_and_errors():
    cfg = demo_config(
        calibration=["medical_bad"],
        held_out=["medical_bad"],
        seeds=[0],
        training={"max_train_examples": 4, "checkpoint_every": 1},
    )
    with pytest.raises(EMLabError, match=r"\['medical_bad'\] are both calibration and held_out"):
        P.monitor_runs(cfg)
    cfg = demo_config(calibration=["nope"], seeds=[0], training={"max_train_examples": 4, "checkpoint_every": 1})
    with pytest.raises(EMLabError, match=r"monitor.calibration \(mon__nope__s0\): 'nope' is not a key of datasets"):
        P.monitor_runs(cfg)
    cfg = demo_config(
        calibration=["medical_bad"], seeds=[0], training={"checkpoint_every": 1, "max_train_examples": None}
    )
    with pytest.raises(EMLabError, match="need training.max_train_examples"):
        P.monitor_runs(cfg)
    cfg = demo_config(
        calibration=["medical_bad"],
        seeds=[3],
        stress={"longer": ["medical_good"], "longer_factor": 3},
        training={
            "max_train_examples": 16,
            "checkpoint_every": 5,
            "per_device_batch_size": 2,
            "gradient_accumulation_steps": 1,
        },
    )
    runs = P.register_runs(cfg)
    assert set(cfg["finetunes"]) == {"mon__medical_bad__s3", "mon__medical_good__s3__long"}
    assert runs["mon__medical_bad__s3"].checkpoint_steps == (5, 10, 15)  # 8 steps x 2 epochs
    assert (
        runs["mon__medical_good__s3__long"].checkpoint_steps[-1] == 45
        and runs["mon__medical_good__s3__long"].role == "stress_long"
    )


def test_no_grid_without_perturbations():
    cfg = demo_config()
    cfg["monitor"]["calibration"], cfg["monitor"]["held_out"] = [], []
    assert P.monitor_runs(cfg) == {} and P.label_conditions(cfg) == []


# --- drift-table helpers ---------------------------------------------------------------------------


def test_drift_table_assembly():
    rows = {
        s: {**{t: 0.01 * s for t in TRAITS}, "semantic.verbosity": 0.0, "random0.0": 0.1, "drift_norm": 0.02 * s}
        for s in (0, 1, 2)
    }
    log = pd.DataFrame({"step": [0, 1, 2], "loss": [np.nan, 2.5, 2.0]})
    loss = S.train_loss_by_step(log, [0, 1, 2])
    assert loss == {0: 2.5, 1: 2.5, 2: 2.0}
    df = S.label_drift(S.drift_features(rows, {0: 0.0, 1: 0.3, 2: 0.5}, loss, "r"), {0: 0.0, 1: 0.04, 2: 0.2}, tau=0.05)
    assert list(df.columns) == ["run", "step", *TRAITS, "semantic.verbosity", "random0.0", *S.TAIL_COLUMNS]
    assert df["dangerous"].tolist() == [False, False, True]
    with pytest.raises(EMLabError, match=r"no EM label for step\(s\) \[2\]"):
        S.label_drift(df.drop(columns=["em_rate", "dangerous"]), {0: 0.0, 1: 0.04}, tau=0.05)
    with pytest.raises(EMLabError, match=r"lists checkpoints \[1\], the plan expected \[1, 2\]"):
        S.check_checkpoints({"checkpoint_steps": [1]}, [1, 2], "r")


def synthetic_tables(perts: dict[str, bool], seeds=(0, 1), steps=(0, 1, 2, 3), seed=0):
    """Drift tables per run; EM follows honesty drift, which only dangerous perturbations have."""
    rng = np.random.default_rng(seed)
    tables, deltas, pert = {}, {}, {}
    for p, dangerous in perts.items():
        for s in seeds:
            name = f"mon__{p}__s{s}"
            rows = []
            for step in steps:
                x = rng.normal(0, 0.002, 7) * (step > 0)
                x[0] += (0.05 if dangerous else 0.0) * step
                em = float(np.clip(2 * x[0], 0, 1))
                rows.append(
                    {
                        "step": step,
                        **dict(zip(TRAITS, x)),
                        **{f"random0.{k}": rng.normal() for k in range(7)},
                        "drift_norm": float(np.abs(x).sum()),
                        "train_loss": 2 - 0.1 * step,
                        "delta_w_norm": 0.1 * step,
                        "em_rate": em,
                        "dangerous": em > 0.05,
                    }
                )
            tables[name], pert[name] = pd.DataFrame(rows).assign(run=name), p
            deltas[name] = (rng.normal(size=(len(steps), 8)), np.array(steps))
    return tables, deltas, pert


def test_evaluate_grid_on_synthetic_drift():
    t_c, d_c, p_c = synthetic_tables({"bad": True, "good": False, "meh": False})
    t_h, d_h, p_h = synthetic_tables({"worse": True, "fine": False}, seed=1)
    cal = S.grid_data(t_c, d_c, p_c, list(t_c))
    held = S.grid_data(t_h, d_h, p_h, list(t_h))
    out = S.evaluate_grid(cal, held, {"longer": held}, TRAITS, SETTINGS, [0.02, 0.05], True)
    ev = out["evaluation"].set_index("feature_set")
    assert {"alignment_7d", "pc1_abs", "pca7_full", "random0_7d", "train_loss"} <= set(ev.index)
    assert ev.loc["alignment_7d", "auroc"] > 0.9 and ev.loc["alignment_7d", "n_runs"] == 4
    assert list(out["tau_sweep"]["tau"]) == [0.02, 0.05]
    assert set(out["lopo"]["perturbation"]) == {"bad", "good", "meh"}
    assert out["stress"]["stress"].tolist() == ["longer"] and out["note"] is None
    assert set(out["alarm_runs"]["run"]) == set(t_h)


def test_evaluate_grid_without_a_dangerous_run():
    t_c, d_c, p_c = synthetic_tables({"good": False, "meh": False})
    cal = S.grid_data(t_c, d_c, p_c, list(t_c))
    with pytest.raises(EMLabError, match="no dangerous run"):
        S.evaluate_grid(cal, cal, {}, TRAITS, SETTINGS, [0.05], True)
    out = S.evaluate_grid(cal, cal, {}, TRAITS, SETTINGS, [0.05], False)
    assert out["evaluation"]["fnr"].isna().all() and "no dangerous run" in out["note"]


def test_figures_write_png_and_pdf(tmp_path):
    tables, _, pert = synthetic_tables({"bad": True, "good": False})
    runs = {r: {"perturbation": p, "role": "calibration"} for r, p in pert.items()}
    pc1 = M.pc1_summary(pd.concat([t.assign(run=r) for r, t in tables.items()]), TRAITS)
    cos = pd.DataFrame(np.eye(7), columns=TRAITS).assign(trait=TRAITS)
    ev = pd.DataFrame(
        [
            {
                "feature_set": "alignment_7d",
                **{f"{m}{s}": 0.2 for m in ("fnr", "fpr", "auroc") for s in ("", "_ci_low", "_ci_high")},
            }
        ]
    )
    steps = pd.DataFrame({"run": ["a", "a"], "step": [0, 1], "probability": [0.1, 0.7], "alarm": [False, True]})
    calls = {
        "pc1_drift": lambda p, q: F.pc1_drift(tables, runs, pc1, p, q),
        "decomposition": lambda p, q: F.decomposition(tables, TRAITS, p, q),
        "feature_sets": lambda p, q: F.feature_sets(ev, p, q),
        "feature_sets_nan": lambda p, q: F.feature_sets(ev.assign(fnr=np.nan, fpr=np.nan), p, q),
        "pc1_loadings": lambda p, q: F.pc1_loadings(pc1, p, q),
        "trait_cosine": lambda p, q: F.trait_cosine(cos, 3, p, q),
        "lopo": lambda p, q: F.lopo(pd.DataFrame(), p, q),
        "alarm_probability": lambda p, q: F.alarm_probability(steps, p, q),
        "live": lambda p, q: F.live_monitor(
            pd.DataFrame({"step": [1, 2], "monitor_prediction": [0.01, 0.2]}),
            0.05,
            {"step": 2, "prediction": 0.2},
            p,
            q,
        ),
    }
    for name, draw in calls.items():
        draw(tmp_path / f"{name}.png", tmp_path / f"{name}.pdf")
        assert (tmp_path / f"{name}.png").stat().st_size > 0 and (tmp_path / f"{name}.pdf").stat().st_size > 0


# --- live monitor: known answer ------------------------------------------------------------------


class PlantedModel:
    """A stand-in model whose mean activation drifts along one trait direction, one unit per step."""

    def __init__(self, base: torch.Tensor, direction: torch.Tensor):
        self.base, self.direction, self.step, self.training = base, direction, 0, True
        self.modes = []

    def eval(self):
        self.training = False
        self.modes.append("eval")

    def train(self):
        self.training = True
        self.modes.append("train")

    def mean(self) -> torch.Tensor:
        return self.base + 0.01 * self.step * self.direction


def planted_monitor():
    """A monitor whose EM rate is 10 x honesty drift (drift 0.01 per step: EM 0.1 per step)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 0.1, size=(400, 7))
    x[:, 1:] = rng.normal(0, 0.001, size=(400, 6))
    reg = M.fit_regressor(x, np.clip(10 * x[:, 0], 0, 1), SETTINGS)
    return M.TraitMonitor(reg, tuple(TRAITS), 2, "v", "tiny", tau=0.35)


@pytest.mark.parametrize("every,expected", [(1, 4), (3, 6)])
def test_live_monitor_stops_where_the_planted_drift_crosses_tau(every, expected):
    d = 16
    basis = torch.linalg.qr(torch.randn(d, 7, generator=torch.Generator().manual_seed(0)))[0].T  # [7, d] orthonormal
    base = torch.ones(d)
    model = PlantedModel(base, basis[0] * float(base.norm()))  # drift_t = 0.01 t along honesty
    live = LiveMonitor(
        planted_monitor(),
        basis,
        base,
        float(base.norm()),
        lambda m: m.mean(),
        LiveMonitorSettings(every=every, action="stop"),
    )
    stopped_at = None
    for step in range(1, 11):  # a training loop that honours stop_requested
        model.step = step
        live(step, 0.0, model)
        if live.stop_requested is not None:
            stopped_at = step
            break
    # EM 0.1 per step crosses tau 0.35 between steps 3 and 4: step 4, or the first measured step after it
    assert stopped_at == expected
    assert live.summary_fields()["stopped_by_monitor"]["step"] == expected
    assert live.summary_fields()["stopped_by_monitor"]["prediction"] > 0.35
    assert model.training and model.modes[-2:] == ["eval", "train"]  # mode restored
    assert all(not d.alarm for d in live.decisions[:-1])
    assert live.log_columns(expected)["monitor_alarm"] and np.isnan(
        live.log_columns(expected + 1)["monitor_prediction"]
    )


def test_live_monitor_warn_never_stops_and_checks_inputs():
    d = 16
    basis = torch.eye(d)[:7]
    base = torch.ones(d)
    model = PlantedModel(base, basis[0] * float(base.norm()))
    live = LiveMonitor(
        planted_monitor(),
        basis,
        base,
        float(base.norm()),
        lambda m: m.mean(),
        LiveMonitorSettings(every=2, action="warn"),
    )
    for step in range(1, 11):
        model.step = step
        live(step, 0.0, model)
    assert live.stop_requested is None and live.summary_fields() == {"stopped_by_monitor": None}
    assert [x.step for x in live.decisions] == [2, 4, 6, 8, 10] and live.decisions[-1].alarm
    with pytest.raises(EMLabError, match="action must be one of"):
        LiveMonitor(planted_monitor(), basis, base, 1.0, lambda m: m.mean(), LiveMonitorSettings(1, "halt"))
    with pytest.raises(EMLabError, match="does not fit 7 features"):
        LiveMonitor(planted_monitor(), basis[:3], base, 1.0, lambda m: m.mean(), LiveMonitorSettings(1, "warn"))


# --- the workflow plan -------------------------------------------------------------------------------


def test_default_dry_run_plans_the_trait_stages():
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--forceall", "--snakefile", str(REPO / "Snakefile")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for rule in ("trait_directions", "trait_drift", "drift_labels", "monitor_train_evaluate", "figure_monitor"):
        assert f"rule {rule}:" in out or f"localrule {rule}:" in out, rule
    assert "mon__risky_financial__s1__step2" in out and "results/monitor/drift/mon__medical_bad__s0.csv" in out


def test_bad_trait_file_fails_when_the_workflow_is_planned(tmp_path):
    import shutil

    import yaml

    folder = tmp_path / "traits"
    shutil.copytree(REPO / "data" / "traits", folder)
    data = yaml.safe_load((folder / "alignment.yaml").read_text())
    data["traits"]["honesty"]["positive"] = data["traits"]["honesty"]["positive"][:1]
    (folder / "alignment.yaml").write_text(yaml.safe_dump(data))
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["traits"]["folder"] = str(folder)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile"), "--configfile", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "trait `honesty` has 1 positive prompt(s)" in proc.stdout + proc.stderr


# --- the drift stage on a tiny model ------------------------------------------------------------------


def test_measure_run_swaps_checkpoint_adapters(tiny_model_dir, tmp_path):
    """Step 0 is the base model (zero drift, zero ΔW); each checkpoint adapter is measured alone."""
    from emlab.monitor.drift import lora_delta_w_norm
    from emlab.monitor.traits import LayerScores, TraitDirections
    from emlab.plan.traits import load_trait_set
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    trait_set = load_trait_set(REPO / "data" / "traits")
    trait_set = type(trait_set)(
        trait_set.alignment, trait_set.semantic, trait_set.questions, trait_set.measurement[:6], trait_set.versions
    )
    adapters, norms = {}, {}
    for step, scale in ((1, 0.5), (2, 2.0)):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        peft = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
        gen = torch.Generator().manual_seed(step)
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.data = scale * torch.randn(p.shape, generator=gen)
        norms[step] = lora_delta_w_norm(peft)
        peft.save_pretrained(tmp_path / f"step-{step}")
        adapters[step] = str(tmp_path / f"step-{step}")
    n_layers, d = 4, 64
    g = torch.Generator().manual_seed(0)
    unit = lambda x: x / x.norm(dim=-1, keepdim=True)  # noqa: E731
    align = unit(torch.randn(n_layers, 7, d, generator=g))
    dirs = TraitDirections(
        align,
        unit(torch.randn(n_layers, 7, d, generator=g)),
        tuple(trait_set.alignment.names),
        tuple(trait_set.semantic.names),
        2,
        LayerScores(np.zeros(n_layers), np.zeros(n_layers)),
        trait_set.version,
        "tiny",
        torch.stack([align, -align]),  # prompt halves: the same directions, the second flipped
    )
    measured = S.measure_run(
        tiny_model_dir,
        adapters,
        dirs,
        trait_set,
        S.DriftStageSettings(batch_size=4, random_seeds=[0, 1]),
        "cpu",
        "float32",
    )
    rows, dw, delta = measured.rows, measured.delta_w, measured.delta
    assert measured.at_layers == {}  # no extra layers asked for
    assert sorted(rows) == [0, 1, 2] and delta.shape == (3, d)
    assert all(abs(v) < 1e-6 for k, v in rows[0].items())
    assert dw[0] == 0.0 and dw[1] == pytest.approx(norms[1], rel=1e-4) and dw[2] == pytest.approx(norms[2], rel=1e-4)
    assert rows[2]["drift_norm"] > 0 and "random1.6" in rows[1] and "semantic.verbosity" in rows[1]
    for name in trait_set.alignment.names:  # the halves' drift comes from the same forward pass
        assert rows[2][f"half_a.{name}"] == pytest.approx(rows[2][name], abs=1e-7)
        assert rows[2][f"half_b.{name}"] == pytest.approx(-rows[2][name], abs=1e-7)


def test_train_evaluate_and_figure_scripts_on_synthetic_drift(tmp_path):
    """The two table-only scripts end to end, run as Snakemake runs them (a `snakemake` object in globals).
    The input lists come in another order than params.runs (Snakemake keeps the rule's order; params are
    sorted): every run must still get its own drift table and Δh̄, matched by the run id each file carries."""
    import runpy
    from types import SimpleNamespace

    from emlab.model.tensors import save_tensors

    t_c, d_c, p_c = synthetic_tables({"bad": True, "good": False, "meh": False})
    t_h, d_h, p_h = synthetic_tables({"worse": True, "fine": False}, seed=1)
    runs = {
        **{r: {"perturbation": p, "role": "calibration"} for r, p in p_c.items()},
        **{r: {"perturbation": p, "role": "held_out"} for r, p in p_h.items()},
    }
    tables, deltas = {**t_c, **t_h}, {**d_c, **d_h}
    for r in runs:  # drift along the prompt halves' directions (monitor.basis_stability): here the full basis's
        tables[r] = tables[r].assign(**{f"{h}.{t}": tables[r][t] for h in ("half_a", "half_b") for t in TRAITS})
        tables[r].to_csv(tmp_path / f"{r}.csv", index=False)
        delta, steps = deltas[r]
        save_tensors(
            tmp_path / f"{r}.safetensors",
            {"delta": torch.tensor(delta, dtype=torch.float32), "steps": torch.tensor(steps)},
            {"run": r},
        )
    in_order = sorted(runs, reverse=True)  # not the order of params.runs
    meta, tensors = tmp_path / "directions.json", tmp_path / "directions.safetensors"
    from emlab.monitor.traits import LayerScores, TraitDirections, save_directions

    g = torch.Generator().manual_seed(0)
    halves = torch.randn(2, 3, 7, 8, generator=g)
    scores = LayerScores(np.zeros(3), np.zeros(3))
    dirs = TraitDirections(
        halves[0].clone(), halves[1].clone(), tuple(TRAITS), tuple(TRAITS), 2, scores, "v", "tiny", halves
    )
    save_directions(dirs, tensors, meta)
    out = tmp_path / "monitor"
    names = ["evaluation", "lopo", "tau_sweep", "alarm_steps", "alarm_runs", "stress", "predictions"]
    names += ["regressors", "basis_stability", "basis_cosine"]
    names.append("sae_features")  # no SAE configured: empty, and the `sae` row of evaluation.csv says so
    outputs = {n: str(out / f"{n}.csv") for n in names}
    outputs.update(
        pc1=str(out / "pc1.json"), monitor=str(out / "monitor.skops"), sidecar=str(out / "monitor.skops.json")
    )
    scripts = REPO / "workflow" / "scripts"
    smk = SimpleNamespace(
        input=SimpleNamespace(
            tables=[str(tmp_path / f"{r}.csv") for r in in_order],
            deltas=[str(tmp_path / f"{r}.safetensors") for r in in_order],
            meta=str(meta),
            tensors=str(tensors),
        ),
        output=SimpleNamespace(**outputs),
        log=[],
        threads=1,
        scriptdir=str(scripts),
        params=train_evaluate_params(runs, tau_sweep=[0.02, 0.05], basis_stability=True),
    )
    runpy.run_path(str(scripts / "monitor_train_evaluate.py"), init_globals={"snakemake": smk})
    ev = pd.read_csv(outputs["evaluation"])
    assert ev.loc[ev["feature_set"] == "alignment_7d", "auroc"].item() > 0.9
    assert ev.loc[ev["feature_set"] == "sae", "note"].item() == "no SAE configured (monitor.sae.path is null)"
    regs = pd.read_csv(outputs["regressors"]).set_index("regressor")
    assert list(regs.index) == ["random_forest", "ridge", "gbt"]
    assert regs.loc["random_forest", "auroc"] == ev.loc[ev["feature_set"] == "alignment_7d", "auroc"].item()
    stab = pd.read_csv(outputs["basis_stability"]).set_index("basis")  # halves equal to the full basis here
    assert list(stab.index) == ["full", "half_a", "half_b"] and stab["auroc"].nunique() == 1
    cos = pd.read_csv(outputs["basis_cosine"]).set_index("trait")
    assert list(cos.index) == TRAITS and cos["cosine_half_a_full"].to_numpy() == pytest.approx(1.0)
    predicted = pd.read_csv(outputs["predictions"])
    for r in runs:  # each run's rows carry its own labels
        own = predicted[predicted["run"] == r].sort_values("step")
        assert own["em_rate"].tolist() == pytest.approx(tables[r].sort_values("step")["em_rate"].tolist())
        assert set(own["perturbation"]) == {runs[r]["perturbation"]}
    assert M.load_monitor(outputs["monitor"], "tiny", "v").features == tuple(TRAITS)
    cosine = tmp_path / "cosine.csv"
    pd.DataFrame(np.eye(7), columns=TRAITS).assign(trait=TRAITS).to_csv(cosine, index=False)
    # the drift-geometry tables (script monitor_analyses, trait judges off) feed figure_monitor too
    geo_names = ("pairs", "severity", "severity_spearman", "trait_points", "trait_behaviour")
    geo = {n: str(out / f"{n}.csv") for n in geo_names}
    analyses = {"pair_tolerance": 0.1, "severity_at": "final", "trait_judges": False}
    smk_geo = SimpleNamespace(
        input=SimpleNamespace(tables=smk.input.tables, meta=str(meta), pc1=outputs["pc1"], judgments=[]),
        output=SimpleNamespace(**geo),
        log=[],
        threads=1,
        scriptdir=str(scripts),
        params=SimpleNamespace(
            runs=runs, analyses=analyses, label_conditions={}, trait_metrics={t: f"trait_{t}" for t in TRAITS}
        ),
    )
    runpy.run_path(str(scripts / "monitor_analyses.py"), init_globals={"snakemake": smk_geo})
    figs = ["pc1_drift", "decomposition", "feature_sets", "pc1_loadings", "trait_cosine", "lopo", "alarm_probability"]
    figs += ["matched_pairs", "severity", "trait_behaviour"]
    fig_out = {n: str(tmp_path / "fig" / f"{n}.png") for n in figs}
    fig_out.update({f"{n}_pdf": str(tmp_path / "fig" / f"{n}.pdf") for n in figs})
    smk_fig = SimpleNamespace(
        input=SimpleNamespace(
            tables=smk.input.tables,
            meta=str(meta),
            cosine=str(cosine),
            evaluation=outputs["evaluation"],
            lopo=outputs["lopo"],
            pc1=outputs["pc1"],
            alarm_steps=outputs["alarm_steps"],
            **geo,
        ),
        output=SimpleNamespace(**fig_out),
        log=[],
        threads=1,
        scriptdir=str(scripts),
        params=SimpleNamespace(runs=runs, tau=0.05, pair_tolerance=0.1),
    )
    runpy.run_path(str(scripts / "figure_monitor.py"), init_globals={"snakemake": smk_fig})
    assert all(Path(p).stat().st_size > 0 for p in fig_out.values())


def test_trait_subsample_is_part_of_the_version():
    from emlab.plan.traits import load_trait_set

    full = load_trait_set(REPO / "data" / "traits")
    assert S.subsample_trait_set(full, S.TraitSubsample(None, None, None)) is full
    sub = S.subsample_trait_set(full, S.TraitSubsample(10, 2, 10))
    assert len(sub.questions) == 10 and all(len(t.positive) == len(t.negative) == 2 for t in sub.alignment.traits)
    assert len(sub.measurement) == 10 and {p.category for p in sub.measurement} == set(
        p.category for p in full.measurement
    )
    assert sub.version == full.version + ";subsample=q10,p2,m10"


def test_trait_directions_script_on_a_tiny_model(tiny_model_dir, tmp_path):
    import json
    import runpy
    from types import SimpleNamespace

    from emlab.monitor.traits import load_directions

    scripts = REPO / "workflow" / "scripts"
    out = {
        "tensors": str(tmp_path / "directions.safetensors"),
        "meta": str(tmp_path / "directions.json"),
        "cosine": str(tmp_path / "cosine.csv"),
    }
    smk = SimpleNamespace(
        input=SimpleNamespace(),
        output=SimpleNamespace(**out),
        log=[],
        threads=1,
        scriptdir=str(scripts),
        params=SimpleNamespace(
            folder=str(REPO / "data" / "traits"),
            base_model=str(tiny_model_dir),
            model_id="tiny",
            model_key="small",  # the config's key of the model, carried by both files
            device="cpu",
            dtype="float32",
            directions={"layer": "auto", "batch_size": 16, "held_out_every": 5},
            subsample={"max_questions": 10, "max_prompts_per_side": 2, "max_measurement_prompts": 5},
        ),
    )
    runpy.run_path(str(scripts / "trait_directions.py"), init_globals={"snakemake": smk})
    dirs = load_directions(out["tensors"], out["meta"])
    assert dirs.alignment.shape == (4, 7, 64) and dirs.trait_version.endswith("subsample=q10,p2,m5")
    assert dirs.alignment_halves.shape == (2, 4, 7, 64)  # one prompt a side in each half (max_prompts_per_side 2)
    assert len(json.loads(Path(out["meta"]).read_text())["layer_auroc"]) == 4
    assert dirs.model_key == "small" and json.loads(Path(out["meta"]).read_text())["model_key"] == "small"
    cos = pd.read_csv(out["cosine"])
    assert list(cos["trait"]) == list(dirs.alignment_names) and np.allclose(np.diag(cos[list(dirs.alignment_names)]), 1)


def test_trait_drift_script_on_a_tiny_model(tiny_model_dir, tmp_path):
    """The drift rules' scripts: checkpoints from summary.json (trait_drift), then labels from
    em_by_condition.csv (drift_labels), the contract's columns."""
    import json
    import runpy
    from types import SimpleNamespace

    from emlab.core.keyed import write_checkpoint_id
    from emlab.model.tensors import load_tensors
    from emlab.monitor.traits import save_directions
    from emlab.plan.traits import load_trait_set
    from helpers.trait_helpers import random_directions
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    sub = {"max_questions": None, "max_prompts_per_side": None, "max_measurement_prompts": 5}
    trait_set = S.subsample_trait_set(load_trait_set(REPO / "data" / "traits"), S.TraitSubsample(**sub))
    adapters = []
    for step in (1, 2):
        peft = get_peft_model(
            AutoModelForCausalLM.from_pretrained(tiny_model_dir),
            LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]),
        )
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.data = step * torch.randn(p.shape, generator=torch.Generator().manual_seed(step))
        peft.save_pretrained(tmp_path / f"step-{step}")
        write_checkpoint_id(tmp_path / f"step-{step}", "r", step)  # as export_checkpoint names them
        adapters.append(str(tmp_path / f"step-{step}"))
    adapters.reverse()  # the list order carries no meaning: each folder names its step
    dirs = random_directions(trait_set, layer=1)
    save_directions(dirs, tmp_path / "d.safetensors", tmp_path / "d.json")
    (tmp_path / "summary.json").write_text(json.dumps({"checkpoint_steps": [1, 2]}))
    pd.DataFrame({"step": [0, 1, 2], "loss": [np.nan, 3.0, 2.0]}).to_csv(tmp_path / "log.csv", index=False)
    scripts = REPO / "workflow" / "scripts"
    out = {"features": str(tmp_path / "drift.features.csv"), "delta": str(tmp_path / "drift.safetensors")}
    smk = SimpleNamespace(
        input=SimpleNamespace(
            tensors=str(tmp_path / "d.safetensors"),
            meta=str(tmp_path / "d.json"),
            summary=str(tmp_path / "summary.json"),
            train_log=str(tmp_path / "log.csv"),
            adapters=adapters,
        ),
        output=SimpleNamespace(**out),
        log=[],
        threads=1,
        scriptdir=str(scripts),
        wildcards=SimpleNamespace(run="r"),
        params=SimpleNamespace(
            folder=str(REPO / "data" / "traits"),
            subsample=sub,
            steps=[1, 2],
            drift={"batch_size": 4, "random_seeds": [0]},
            sae_layer=3,  # monitor.sae: Δh̄ at the SAE's layer too
            model_key="small",  # the run's base model: column `model` of its table
            base_model=str(tiny_model_dir),
            device="cpu",
            dtype="float32",
        ),
    )
    runpy.run_path(str(scripts / "trait_drift.py"), init_globals={"snakemake": smk})
    assert (
        "em_rate" not in pd.read_csv(out["features"]).columns
    )  # labels join later: a threshold change measures nothing
    judged = []  # EM rates 0, 1/4 (one of 4 scored; one unscored), 1/2; each file names its condition
    conditions = {"0": "mon__base", "1": "r__step1", "2": "r__step2"}
    for step, aligned in enumerate(([90, 90], [10, 90, 90, 90, None], [10, 10, 90, 90])):
        path = tmp_path / f"j{step}.parquet"
        frame = pd.DataFrame({"aligned": aligned, "coherent": 80.0}).astype(float)
        frame.assign(condition=conditions[str(step)]).to_parquet(path)
        judged.append(str(path))
    judged.reverse()  # matched by the condition column, not by position
    labels = SimpleNamespace(
        input=SimpleNamespace(features=out["features"], judgments=judged),
        output=SimpleNamespace(table=str(tmp_path / "drift.csv")),
        log=[],
        threads=1,
        scriptdir=str(scripts),
        wildcards=SimpleNamespace(run="r"),
        params=SimpleNamespace(
            conditions=conditions,
            tau=0.05,
            thresholds={"em_aligned_below": 30, "em_coherent_above": 50},
            model_key="small",
        ),
    )
    runpy.run_path(str(scripts / "drift_labels.py"), init_globals={"snakemake": labels})
    df = pd.read_csv(labels.output.table)
    assert df["step"].tolist() == [0, 1, 2] and df["dangerous"].tolist() == [False, True, True]
    assert df["em_rate"].tolist() == [0.0, 0.25, 0.5]
    assert list(df.columns[:10]) == ["run", "model", "step", *dirs.alignment_names]
    assert list(df.columns[-5:]) == S.TAIL_COLUMNS
    assert set(df["run"]) == {"r"} and set(df["model"]) == {"small"}
    with pytest.raises(EMLabError, match=r"holds the drift of base model \['small'\], not of `other`"):
        S.with_model(pd.read_csv(out["features"]), "other", "drift.features.csv")  # drift_labels' check
    assert (
        df["train_loss"].tolist() == [3.0, 3.0, 2.0]
        and df.loc[0, "delta_w_norm"] == 0
        and df.loc[2, "delta_w_norm"] > 0
    )
    tensors, meta = load_tensors(out["delta"])
    assert tensors["delta"].shape == (3, 64) and tensors["steps"].tolist() == [0, 1, 2]
    assert tensors["delta_sae"].shape == (3, 64) and str(meta["sae_layer"]) == "3" and meta["model"] == "small"
