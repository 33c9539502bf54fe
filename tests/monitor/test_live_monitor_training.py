"""The training loop's step-callback contract the live monitor uses: start, extra log columns,
a stop request that ends training at that step with its adapter kept, and extra summary fields."""

from __future__ import annotations

import json

import pytest
import torch
from emlab.core.errors import EMLabError
from emlab.monitor.live import LiveMonitorCallback, LiveMonitorSettings
from safetensors.torch import load_file


class StopAt:
    """Predicts 0.1 * step; alarms (and asks to stop) once the prediction exceeds tau."""

    def __init__(self, tau: float):
        self.tau, self.started, self.stop_requested, self.seen = tau, False, None, []

    def start(self, model, tokenizer):
        self.started = hasattr(model, "disable_adapter") and tokenizer is not None

    def __call__(self, step, loss, model):
        assert self.started and model.training
        self.seen.append(step)
        if 0.1 * step > self.tau:
            self.stop_requested = {"step": step, "prediction": 0.1 * step}

    def log_columns(self, step):
        return {"monitor_prediction": 0.1 * step}

    def summary_fields(self):
        return {"stopped_by_monitor": self.stop_requested}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_a_stop_request_ends_training_at_that_step_and_keeps_its_adapter(tiny_model_dir, data_dir, tmp_path):
    stop = StopAt(tau=0.25)  # crosses at step 3 of 6
    summary, log = _run_with(tiny_model_dir, data_dir, tmp_path / "stopped", [stop], epochs=3, checkpoint_every=1)
    assert stop.seen == [1, 2, 3]
    assert summary["steps"] == 3 and summary["total_steps"] == 6 and summary["stopped_early"] is True
    assert summary["stopped_by_monitor"] == {"step": 3, "prediction": pytest.approx(0.3)}
    assert json.loads((tmp_path / "stopped" / "summary.json").read_text())["stopped_by_monitor"]["step"] == 3
    assert list(log["step"]) == [0, 1, 2, 3]
    assert log["monitor_prediction"].tolist()[1:] == pytest.approx([0.1, 0.2, 0.3])
    # the kept adapter is the step-3 checkpoint's, and the same as an unwatched run's at step 3
    final = load_file(tmp_path / "stopped" / "adapter" / "adapter_model.safetensors")
    ckpt = load_file(tmp_path / "stopped" / "checkpoints" / "step-3" / "adapter_model.safetensors")
    assert final.keys() == ckpt.keys() and all(torch.equal(final[k], ckpt[k]) for k in final)
    full, _ = _run_with(tiny_model_dir, data_dir, tmp_path / "full", [], epochs=3, checkpoint_every=1)
    assert full["steps"] == 6 and full["stopped_early"] is False and "stopped_by_monitor" not in full
    same = load_file(tmp_path / "full" / "checkpoints" / "step-3" / "adapter_model.safetensors")
    assert all(torch.equal(final[k], same[k]) for k in final)


def test_live_monitor_callback_refuses_a_model_without_adapters():
    cb = LiveMonitorCallback("m.skops", "d.safetensors", "d.json", None, "base", LiveMonitorSettings(1, "stop"), 4)
    with pytest.raises(EMLabError, match="needs a LoRA fine-tune"):
        cb.start(torch.nn.Linear(2, 2), None)
    assert cb.stop_requested is None
    with pytest.raises(EMLabError, match="before start"):
        cb(1, 0.0, None)


def _run_with(tiny_model_dir, data_dir, out, callbacks, **train_over):
    import pandas as pd
    from emlab.em.finetune import fine_tune, lora_settings
    from helpers.tiny_finetune import LORA_R1, training

    summary = fine_tune(
        tiny_model_dir,
        data_dir / "train.jsonl",
        data_dir / "eval.jsonl",
        lora_settings(LORA_R1),
        training(**train_over),
        out / "adapter",
        out / "train_log.csv",
        out / "summary.json",
        out / "checkpoints",
        seed=0,
        device="cpu",
        dtype="float32",
        on_step=callbacks,
        progress=False,
    )
    return summary, pd.read_csv(out / "train_log.csv")
