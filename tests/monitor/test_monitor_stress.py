"""The monitor's stress runs beside the grid (Nghiem et al.'s "where it breaks"): a full fine-tune next to its
LoRA run, and a run that continues an already misaligned run's adapter with drift measured from its own step 0.
Plan (names, labels, inputs), continued training, full-checkpoint export, and the drift measurement of both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from emlab.core.config import load_config, validate_config
from emlab.core.errors import EMLabError
from emlab.monitor import stage as S
from emlab.plan import monitor as P
from emlab.plan.conditions import parse_condition_id

REPO = Path(__file__).resolve().parents[2]


def _config(**stress) -> dict:
    cfg = load_config(REPO / "config.yaml")
    raw = {
        "version": 1,
        "datasets": dict(cfg["datasets"]),
        "finetunes": {},
        "monitor": {
            "calibration": ["medical_bad", "medical_good"],
            "held_out": ["customer_support"],
            "seeds": [0, 1],
            "training": {"max_train_examples": 8, "per_device_batch_size": 4, "checkpoint_every": 1},
            "stress": stress,
        },
    }
    return validate_config(raw)


def test_stress_runs_are_planned_with_their_labels():
    cfg = _config(full=["medical_bad"], start_from_misaligned=[{"dataset": "customer_support", "start": "medical_bad"}])
    runs = P.monitor_runs(cfg)
    full, start = runs["mon__medical_bad__s0__full"], runs["mon__customer_support__s0__from_medical_bad"]
    assert full.role == "stress_full" and full.full and full.finetune["lora"] is None
    assert full.finetune["training"]["learning_rate"] == 1.0e-5  # preset full's rate, not the LoRA recipe's
    assert full.checkpoint_steps == runs["mon__medical_bad__s0"].checkpoint_steps  # beside its LoRA run
    assert start.role == "stress_start" and start.start == "mon__medical_bad__s0" and not start.full
    assert start.finetune["start_from"] == "mon__medical_bad__s0"
    assert P.start_adapter(start) == "results/finetunes/mon__medical_bad__s0/adapter"
    assert P.start_adapter(full) is None
    # step 0 of the start-from run is the model it starts from: the start run's last checkpoint
    assert P.run_conditions(start, runs) == {
        0: "mon__medical_bad__s0__step2",
        1: "mon__customer_support__s0__from_medical_bad__step1",
        2: "mon__customer_support__s0__from_medical_bad__step2",
    }
    assert P.run_conditions(full, runs)[0] == P.BASE_CONDITION
    ids = {c.condition_id for c in P.label_conditions(cfg)}
    for cid in ("mon__medical_bad__s0__full__step2", "mon__customer_support__s0__from_medical_bad__step1"):
        assert cid in ids and parse_condition_id(cid).condition_id == cid
    assert _config(full=[], start_from_misaligned=[]) and len(P.monitor_runs(_config())) == 6

    with pytest.raises(EMLabError, match="start 'math_word_problems' is not a calibration or held_out"):
        P.monitor_runs(_config(start_from_misaligned=[{"dataset": "medical_bad", "start": "math_word_problems"}]))
    odd = _config(start_from_misaligned=[{"dataset": "medical_good", "start": "medical_bad"}])
    odd["monitor"]["training"].update(
        max_train_examples=12, gradient_accumulation_steps=1, checkpoint_every=4
    )  # 6 steps
    with pytest.raises(EMLabError, match="ends at step 6, which is not a checkpoint"):
        P.monitor_runs(odd)
    with pytest.raises(EMLabError, match=r"monitor.stress.full \(mon__nope__s0__full\): 'nope' is not a key"):
        P.monitor_runs(_config(full=["nope"]))


def test_default_plan_has_the_stress_runs_inputs(tmp_path):
    """The dry run wires the start adapter into the continued run's fine-tune and drift jobs."""
    import subprocess
    import sys

    import yaml

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["monitor"]["stress"] = {
        "full": ["medical_bad"],
        "start_from_misaligned": [{"dataset": "customer_support", "start": "medical_bad"}],
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    target = "results/monitor/drift/mon__customer_support__s0__from_medical_bad.features.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile")]
        + [target, "results/monitor/drift/mon__medical_bad__s0__full.features.csv", "--configfile", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "results/finetunes/mon__medical_bad__s0/adapter" in out
    assert "results/finetunes/mon__medical_bad__s0__full/checkpoint_adapters/step-1" in out


LORA_QV = {
    "rank": 2,
    "alpha": 4,
    "rslora": False,
    "dropout": 0.0,
    "target_modules": ["q_proj", "v_proj"],
    "resolved_layers": [0, 1, 2, 3],
}


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """A LoRA run, a run continuing its adapter, a fresh run, and a full fine-tune: 2 steps, checkpointed."""
    from helpers.tiny_finetune import run, write_fact_data

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("stress")
    data = write_fact_data(d)
    kw = dict(checkpoint_every=1, learning_rate=1e-2)
    run(tiny_model_dir, data, d / "first", lora=LORA_QV, **kw)
    run(tiny_model_dir, data, d / "second", lora=LORA_QV, seed=1, init_adapter=d / "first" / "adapter", **kw)
    run(tiny_model_dir, data, d / "fresh", lora=LORA_QV, seed=1, **kw)
    run(tiny_model_dir, data, d / "full", lora=None, checkpoint_every=1, learning_rate=1e-3)
    return d, data, d / "first", d / "second", d / "fresh", d / "full"


def test_continued_training_starts_from_the_adapter(trained):
    """Step 0 of the continued run is the start adapter: its eval loss equals the start run's final one."""
    import pandas as pd

    _, _, first, second, fresh, _ = trained
    end_first = pd.read_csv(first / "train_log.csv")["eval_loss"].dropna().iloc[-1]
    start_second = pd.read_csv(second / "train_log.csv")["eval_loss"].iloc[0]
    start_fresh = pd.read_csv(fresh / "train_log.csv")["eval_loss"].iloc[0]
    assert start_second == pytest.approx(end_first, rel=1e-5)
    assert abs(start_fresh - end_first) > 1e-4  # a fresh adapter starts from the base model's loss


def test_start_adapter_must_match_the_recipe(trained, tiny_model_dir):
    from helpers.tiny_finetune import run

    d, data, first, *_ = trained
    other = dict(LORA_QV, rank=4)
    with pytest.raises(EMLabError, match="both must use the same LoRA recipe"):
        run(tiny_model_dir, data, d / "bad", lora=other, init_adapter=first / "adapter")


def test_full_checkpoint_export_and_drift_of_both_stress_runs(trained, tiny_model_dir, tmp_path):
    from emlab.em.phase import export_checkpoint
    from emlab.plan.traits import load_trait_set
    from helpers.trait_helpers import random_directions

    _, _, first, second, _, full = trained
    exported = export_checkpoint(full / "checkpoints", full / "summary.json", 1, tmp_path / "full-step-1", "full")
    names = sorted(p.name for p in exported.iterdir())
    assert "config.json" in names and "model.safetensors" in names and "training_state.pt" not in names
    cont = {
        s: export_checkpoint(second / "checkpoints", second / "summary.json", s, tmp_path / f"c{s}", "second")
        for s in (1, 2)
    }

    sub = S.TraitSubsample(max_questions=None, max_prompts_per_side=None, max_measurement_prompts=5)
    trait_set = S.subsample_trait_set(load_trait_set(REPO / "data" / "traits"), sub)
    dirs = random_directions(trait_set, layer=2)
    settings = S.DriftStageSettings(batch_size=8, random_seeds=[0])
    args = (dirs, trait_set, settings, "cpu", "float32")

    # the continued run, from its own step 0 (the start adapter), and measured from the base model instead
    m = S.measure_run(tiny_model_dir, cont, *args, reference_adapter=first / "adapter")
    rows, dw, delta = m.rows, m.delta_w, m.delta
    m_b = S.measure_run(tiny_model_dir, cont, *args)
    rows_b, dw_b = m_b.rows, m_b.delta_w
    assert dw[0] == 0 and 0 < dw[1] < dw_b[1] and float(delta[0].abs().max()) == 0
    assert rows[1]["drift_norm"] < rows_b[1]["drift_norm"]  # most of the drift happened before its step 0
    # the start adapter as a checkpoint of its own reference: no drift, no update
    m_same = S.measure_run(tiny_model_dir, {1: first / "adapter"}, *args, reference_adapter=first / "adapter")
    same, dw_same = m_same.rows, m_same.delta_w
    assert dw_same[1] == pytest.approx(0, abs=1e-6) and same[1]["drift_norm"] == pytest.approx(0, abs=1e-6)

    # the full fine-tune: whole model folders, ΔW over every weight
    full_ckpts = {
        1: exported,
        2: export_checkpoint(full / "checkpoints", full / "summary.json", 2, tmp_path / "f2", "full"),
    }
    m_f = S.measure_run(tiny_model_dir, full_ckpts, *args)
    rows_f, dw_f, delta_f = m_f.rows, m_f.delta_w, m_f.delta
    assert dw_f[0] == 0 and 0 < dw_f[1] < dw_f[2] and delta_f.shape == (3, 64)
    assert rows_f[2]["drift_norm"] > 0
    assert json.loads((full / "summary.json").read_text())["checkpoint_steps"] == [1, 2]
