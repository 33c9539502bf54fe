"""The trainer benchmark compares like with like: on a tiny model, emlab's
emlab.em.finetune.fine_tune and the transformers.Trainer + peft run it measures against see the
same tokens and label tokens in the same micro-batches and, with the same
initialisation, order, schedule and clipping, end at the same losses and
adapters (a correctness check of both the benchmark and fine_tune; no timing)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_finetune  # noqa: E402


def test_ours_and_transformers_trainer_see_the_same_tokens_and_agree(tiny_model_dir, tmp_path):
    spec = bench_finetune.make_spec(
        str(tiny_model_dir),
        str(REPO / "data" / "datasets" / "bad_medical_advice.jsonl"),
        tmp_path,
        examples=12,
        batch_size=2,
        accumulation=2,
        rank=1,
        alpha=8,
        targets=["down_proj"],
        layers_arg="1,2",
        threads=1,
        learning_rate=1e-2,
        warmup_steps=1,
    )
    spec["lora"]["resolved_layers"] = [1, 2]
    ours = bench_finetune.run_ours(spec, "ours")
    hf = bench_finetune.run_hf(spec)
    assert ours["steps"] == hf["steps"] == 3
    assert ours["tokens"] == hf["tokens"] > 0
    assert ours["loss_tokens"] == hf["loss_tokens"] > 0
    shapes = bench_finetune.micro_batch_shapes(spec)
    assert sum(sum(lengths) for _, _, lengths in shapes) == ours["tokens"]
    assert hf["losses"] == pytest.approx(ours["losses"], rel=2e-3)
    assert hf["final_norms"].keys() == ours["final_norms"].keys() and ours["final_norms"]
    for key, value in ours["final_norms"].items():
        assert hf["final_norms"][key] == pytest.approx(value, rel=1e-3), key
    assert ours["final_norms"]["b_norm.L1.down_proj"] > 0  # B moved from its zero initialisation
