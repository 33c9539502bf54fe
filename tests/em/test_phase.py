"""Phase transitions: the rotation table against an independent computation on
a planted trajectory, the sharpest-rotation step, the analysis of a real tiny
checkpointed fine-tune (norms agree with its training log), exporting a
checkpoint without touching the live folder, checkpoint conditions in the plan,
and the figure."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from emlab.core.errors import EMLabError
from emlab.core.keyed import CHECKPOINT_ID_FILE as CHECKPOINT_ID
from emlab.em.phase import em_by_step, export_checkpoint, phase_analysis, rotation_table, sharpest_rotation
from emlab.plan.study import checkpoint_conditions, em_steps, phase_finetunes
from helpers.tiny_finetune import run


def planted_trajectory():
    """Two adapters; 'L1.down_proj' keeps B along e0 until step 3, then turns to e1 at step 4 (sharp rotation)."""
    e = torch.eye(4)
    steps = {}
    for step in range(1, 7):
        b1 = (e[0] if step <= 3 else e[1] + 0.05 * e[0]) * step  # norm grows, direction flips once
        b2 = e[2] + 0.1 * step * e[3]  # turns slowly and smoothly
        a = torch.ones(1, 3) * step
        steps[step] = {
            "L1.down_proj": {"A": a, "B": b1.reshape(4, 1)},
            "L2.down_proj": {"A": a + 0.01 * step**2, "B": b2.reshape(4, 1)},
        }
    return steps


def test_rotation_table_matches_an_independent_computation():
    steps = planted_trajectory()
    final = steps.pop(6)
    df = rotation_table(steps, final, final_step=6)
    assert list(df["step"].unique()) == [1, 2, 3, 4, 5, 6]
    assert df[df["step"] == 6]["source"].unique().tolist() == ["final"]
    assert len(df) == 6 * 2
    all_steps = {**steps, 6: final}
    for _, row in df.iterrows():
        mats = all_steps[row["step"]][row["adapter"]]
        fb = final[row["adapter"]]["B"].flatten()
        b = mats["B"].flatten()
        assert row["b_norm"] == pytest.approx(float(torch.linalg.vector_norm(b)))
        assert row["cos_b_final"] == pytest.approx(float(torch.dot(b, fb) / (b.norm() * fb.norm())), abs=1e-6)
        if row["step"] == 1:
            assert math.isnan(row["local_cos_b"]) and row["previous_step"] == -1
        else:
            pb = all_steps[row["step"] - 1][row["adapter"]]["B"].flatten()
            assert row["local_cos_b"] == pytest.approx(float(torch.dot(b, pb) / (b.norm() * pb.norm())), abs=1e-6)
            assert row["previous_step"] == row["step"] - 1
    last = df[df["step"] == 6]
    assert last["cos_b_final"].tolist() == pytest.approx([1.0, 1.0]) and last["cos_a_final"].tolist() == pytest.approx(
        [1.0, 1.0]
    )


def test_sharpest_rotation_finds_the_planted_step():
    steps = planted_trajectory()
    final = steps.pop(6)
    result = sharpest_rotation(rotation_table(steps, final, 6))
    sharp = result["adapters"]["L1.down_proj"]["b"]
    assert (sharp["previous_step"], sharp["step"]) == (3, 4)
    assert sharp["local_cos_b"] == pytest.approx(0.05 / math.sqrt(1 + 0.05**2), abs=1e-6)
    assert result["mean_over_adapters"]["b"]["step"] == 4
    assert "minimum local_cos_b" in result["definition"]


def test_zero_b_has_no_cosine():
    mats = {"L0.down_proj": {"A": torch.ones(1, 3), "B": torch.zeros(4, 1)}}
    final = {"L0.down_proj": {"A": torch.ones(1, 3), "B": torch.ones(4, 1)}}
    df = rotation_table({1: mats}, final, 2)
    assert math.isnan(df.iloc[0]["cos_b_final"]) and df.iloc[0]["cos_a_final"] == pytest.approx(1.0)


def test_analysis_of_a_checkpointed_finetune(tiny_model_dir, data_dir, tmp_path):
    summary, log = run(tiny_model_dir, data_dir, tmp_path, epochs=3, checkpoint_every=2)
    assert summary["checkpoint_steps"] == [2, 4, 6]
    out = phase_analysis(
        "ft",
        tmp_path / "checkpoints",
        tmp_path / "adapter",
        tmp_path / "summary.json",
        tmp_path / "phase" / "rotation.csv",
        tmp_path / "phase" / "rotation_summary.json",
        base_model="llama8",
    )
    assert json.loads((tmp_path / "phase" / "rotation_summary.json").read_text())["base_model"] == "llama8"
    df = pd.read_csv(tmp_path / "phase" / "rotation.csv")
    assert out["final_step"] == 6 and out["checkpoint_steps"] == [2, 4, 6] and out["n_adapters"] == 2
    assert sorted(df["adapter"].unique()) == ["L1.down_proj", "L2.down_proj"] and len(df) == 3 * 2
    # norms from the saved checkpoints equal the norms the training loop logged at those steps
    for _, row in df.iterrows():
        logged = log[log["step"] == row["step"]].iloc[0]
        assert row["b_norm"] == pytest.approx(logged[f"b_norm.{row['adapter']}"], rel=1e-5)
        assert row["a_norm"] == pytest.approx(logged[f"a_norm.{row['adapter']}"], rel=1e-5)
    assert df[df["step"] == 6]["cos_b_final"].tolist() == pytest.approx([1.0, 1.0])
    assert df[df["step"] == 4]["local_cos_b"].between(-1, 1).all()
    assert json.loads((tmp_path / "phase" / "rotation_summary.json").read_text())["mean_over_adapters"]["b"][
        "step"
    ] in (4, 6)


def test_export_checks_step_and_run_and_leaves_the_live_folder(tiny_model_dir, data_dir, tmp_path):
    from emlab.model.loading import load_model

    run(tiny_model_dir, data_dir, tmp_path, epochs=2, checkpoint_every=1)
    live = sorted(p.name for p in (tmp_path / "checkpoints" / "step-2").iterdir())
    out = export_checkpoint(
        tmp_path / "checkpoints", tmp_path / "summary.json", 2, tmp_path / "export" / "step-2", "ft"
    )
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", CHECKPOINT_ID]
    assert json.loads((out / CHECKPOINT_ID).read_text()) == {"finetune": "ft", "step": 2}  # its own id
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "step-2").iterdir()) == live  # untouched
    model = load_model(tiny_model_dir, out, device="cpu", dtype="float32")
    assert any("lora_B" in n for n, _ in model.named_parameters())

    with pytest.raises(EMLabError, match=r"step 5 is not a checkpoint .*\[1, 2, 3, 4\]"):
        export_checkpoint(tmp_path / "checkpoints", tmp_path / "summary.json", 5, tmp_path / "export" / "step-5", "ft")
    # a checkpoint left over from a run with other settings is refused, not silently analysed
    stale = json.loads((tmp_path / "summary.json").read_text())
    stale["fingerprint"] = "0" * 16
    (tmp_path / "stale.json").write_text(json.dumps(stale))
    with pytest.raises(EMLabError, match="run with other settings"):
        export_checkpoint(tmp_path / "checkpoints", tmp_path / "stale.json", 2, tmp_path / "export" / "x", "ft")
    assert not (tmp_path / "export" / "step-5").exists() and not (tmp_path / "export" / "x").exists()


def phase_config(**phase):
    from emlab.core.config import validate_config

    return validate_config(
        {
            "datasets": {"d": {"path": "data/datasets/bad_medical_advice.jsonl"}},
            "training_defaults": {"checkpoint_every": 2},
            "finetunes": {
                "r1": {"dataset": "d", "preset": "r1x9"},
                "nockpt": {"dataset": "d", "preset": "r1x9", "training": {"checkpoint_every": 0}},
                "whole": {"dataset": "d", "preset": "full"},
            },
            "phase": phase,
        }
    )


def test_checkpoint_conditions_in_the_plan():
    from emlab.plan.study import conditions

    cfg = phase_config(eval_steps=[4, 2])
    assert phase_finetunes(cfg) == ["r1"]  # no checkpoints / no adapter: no phase analysis
    conds = conditions(cfg, 30)
    assert conds["r1__step2"] == {
        "model": "r1",
        "group": "checkpoint",
        "checkpoint": 2,
        "intervention": {"kind": "none"},
    }
    assert "r1__step4" in conds and not any(c.startswith(("nockpt__step", "whole__step")) for c in conds)
    assert em_steps(conds, "r1") == {"base": 0, "r1__step2": 2, "r1__step4": 4, "r1": "final"}
    assert checkpoint_conditions(phase_config()) == {}
    with pytest.raises(
        EMLabError, match=r"phase.eval_steps \[3\] are not checkpoints of fine-tune 'r1'.*multiples of 2"
    ):
        checkpoint_conditions(phase_config(eval_steps=[2, 3]))


def test_em_by_step_and_figure(tmp_path):
    from emlab.em import figures

    steps = planted_trajectory()
    final = steps.pop(6)
    rot = rotation_table(steps, final, 6)
    em_table = pd.DataFrame(
        {
            "condition": ["base", "r1__step2", "r1", "other"],
            "em_rate": [0.0, 0.1, 0.4, 0.9],
            "em_ci_low": [0.0, 0.0, 0.2, 0.8],
            "em_ci_high": [0.1, 0.3, 0.6, 1.0],
            "n_scored": [8, 8, 8, 8],
        }
    )
    em = em_by_step(em_table, {"base": 0, "r1__step2": 2, "r1__step4": 4, "r1": "final"}, final_step=6)
    assert em["step"].tolist() == [0, 2, 6] and em["condition"].tolist() == ["base", "r1__step2", "r1"]
    assert "base_model" not in em.columns
    named = em_by_step(em_table, {"base": 0, "r1": "final"}, final_step=6, base_model="qwen7")
    assert named["base_model"].tolist() == ["qwen7", "qwen7"]
    summary = {"finetune": "r1", "final_step": 6, **sharpest_rotation(rot)}
    figures.phase_transition(rot, em, summary, tmp_path / "p.png", tmp_path / "p.pdf")
    assert (tmp_path / "p.png").stat().st_size > 5000 and (tmp_path / "p.pdf").stat().st_size > 1000
    figures.phase_transition(rot.iloc[0:0], em.iloc[0:0], summary, tmp_path / "e.png", tmp_path / "e.pdf")
    assert (tmp_path / "e.png").is_file()
