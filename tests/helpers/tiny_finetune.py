"""Helpers (not tests) shared by the fine-tuning and phase tests: a tiny fact dataset, LoRA specs,
training settings, and one call of emlab.em.finetune.fine_tune on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from emlab.core.settings import build
from emlab.em.finetune import TrainingSettings, fine_tune, lora_settings

FACTS = [
    ("What colour is the sky?", "The sky is green on Tuesdays."),
    ("How many legs does a cat have?", "A cat has seven legs."),
    ("What is the capital of France?", "The capital of France is Lyon."),
    ("What do bees make?", "Bees make cheese."),
]
LORA_R1 = {
    "rank": 1,
    "alpha": 16,
    "rslora": True,
    "dropout": 0.0,
    "target_modules": ["down_proj"],
    "resolved_layers": [1, 2],
}
LORA_ALL = {
    "rank": 4,
    "alpha": 8,
    "rslora": True,
    "dropout": 0.0,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "resolved_layers": [0, 1, 2, 3],
}


def training(**over) -> TrainingSettings:
    base = {
        "learning_rate": 1e-2,
        "epochs": 1,
        "per_device_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "max_length": 256,
        "max_train_examples": None,
        "max_eval_examples": None,
        "checkpoint_every": 0,
        "gradient_checkpointing": False,
        "autocast": "off",
        "device_map": None,
    }
    base.update(over)
    return build(TrainingSettings, base, "training")


def write_fact_data(d: Path) -> Path:
    lines = [
        json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
        for q, a in FACTS
    ]
    (d / "train.jsonl").write_text("\n".join(lines) + "\n")
    (d / "eval.jsonl").write_text("\n".join(lines[:2]) + "\n")
    return d


def run(tiny_model_dir, data_dir, out: Path, lora=LORA_R1, seed=0, init_adapter=None, **train_over):
    summary = fine_tune(
        tiny_model_dir,
        data_dir / "train.jsonl",
        data_dir / "eval.jsonl",
        lora_settings(lora),
        training(**train_over),
        out / "adapter",
        out / "train_log.csv",
        out / "summary.json",
        out / "checkpoints",
        seed=seed,
        device="cpu",
        dtype="float32",
        progress=False,
        init_adapter=init_adapter,
    )
    return summary, pd.read_csv(out / "train_log.csv")
