"""LoRA fine-tuning on a tiny random Llama: loadable adapter, loss goes down,
A/B norm columns, validation before training, determinism, batching
invariance of the loss, schedule, and resume from a checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from emlab.core.errors import EMLabError
from emlab.core.settings import build
from emlab.em.finetune import TrainingSettings, fine_tune, linear_schedule, lora_settings
from helpers.tiny_finetune import FACTS, LORA_ALL, LORA_R1, run, training
from safetensors.torch import load_file

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def sharp_model_dir(tmp_path_factory, tiny_model_dir):
    """The tiny model with a 10x final-norm gain: its logits can become peaked, so memorising is possible."""
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("sharp_model")
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    with torch.no_grad():
        model.model.norm.weight.mul_(10.0)
    model.save_pretrained(out)
    for f in Path(tiny_model_dir).iterdir():
        if f.name.startswith("tokenizer") or f.name.endswith(".jinja") or f.name == "special_tokens_map.json":
            shutil.copy(f, out / f.name)
    return out


def adapter_tensors(path: Path) -> dict:
    return load_file(str(path / "adapter_model.safetensors"))


def test_writes_loadable_adapter_log_and_summary(tiny_model_dir, data_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    summary, logdf = run(tiny_model_dir, data_dir, tmp_path, epochs=2)
    assert summary["steps"] == 4 and summary["total_steps"] == 4
    assert summary["resolved_layers"] == [1, 2] and summary["n_adapters"] == 2
    assert summary["trainable_parameters"] == 2 * (128 * 1 + 1 * 64)  # down_proj: in 128, out 64, rank 1
    assert summary["n_truncated"] == 0 and summary["tokens_trained"] > 0
    assert json.loads((tmp_path / "summary.json").read_text()) == summary

    cols = set(logdf.columns)
    assert {"step", "epoch", "loss", "eval_loss", "learning_rate", "grad_norm"} <= cols
    assert {"a_norm.L1.down_proj", "b_norm.L1.down_proj", "a_norm.L2.down_proj", "b_norm.L2.down_proj"} <= cols
    assert list(logdf["step"]) == [0, 1, 2, 3, 4]
    assert logdf["b_norm.L1.down_proj"].iloc[0] == 0.0 and logdf["b_norm.L1.down_proj"].iloc[-1] > 0  # B starts at 0
    assert logdf["eval_loss"].notna().tolist() == [True, False, False, False, True]
    assert logdf["eval_subset_loss"].tolist()[::4] == logdf["eval_loss"].tolist()[::4]  # eval split <= EVAL_SUBSET

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
    saved = adapter_tensors(tmp_path / "adapter")
    b_key = next(k for k in saved if "layers.1." in k and "lora_B" in k)
    loaded = dict(model.named_parameters())
    match = [
        n for n in loaded if n.endswith(b_key.replace(".weight", ".default.weight").split("base_model.model.")[-1])
    ]
    assert match and torch.equal(loaded[match[0]].detach(), saved[b_key])
    assert float(logdf["b_norm.L1.down_proj"].iloc[-1]) == pytest.approx(float(saved[b_key].norm()), rel=1e-5)
    assert not any(n for n in saved if "layers.0." in n or "layers.3." in n)  # only the requested layers


def test_loss_decreases_on_memorisation_set(sharp_model_dir, data_dir, tmp_path):
    summary, logdf = run(
        sharp_model_dir, data_dir, tmp_path, lora=LORA_ALL, epochs=40, learning_rate=1e-2, per_device_batch_size=4
    )
    train_loss = logdf["loss"].dropna()
    assert len(train_loss) == 40
    assert train_loss.iloc[-3:].mean() < 0.4 * train_loss.iloc[:3].mean()
    assert summary["final_eval_loss"] < 0.4 * summary["initial_eval_loss"]


def test_same_seed_same_adapter_other_seed_differs(tiny_model_dir, data_dir, tmp_path):
    run(tiny_model_dir, data_dir, tmp_path / "a", epochs=2, seed=5)
    run(tiny_model_dir, data_dir, tmp_path / "b", epochs=2, seed=5)
    run(tiny_model_dir, data_dir, tmp_path / "c", epochs=2, seed=6)
    a, b, c = (adapter_tensors(tmp_path / x / "adapter") for x in "abc")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_loss_is_a_token_mean_whatever_the_batching(tiny_model_dir, data_dir, tmp_path):
    """One step over 4 examples: batch 4 x 1 and batch 1 x 4 give the same loss and update."""
    s1, log1 = run(tiny_model_dir, data_dir, tmp_path / "b4", per_device_batch_size=4, gradient_accumulation_steps=1)
    s2, log2 = run(tiny_model_dir, data_dir, tmp_path / "b1", per_device_batch_size=1, gradient_accumulation_steps=4)
    assert s1["steps"] == s2["steps"] == 1
    assert log1["loss"].iloc[1] == pytest.approx(log2["loss"].iloc[1], rel=1e-5)
    assert log1["grad_norm"].iloc[1] == pytest.approx(log2["grad_norm"].iloc[1], rel=1e-4)
    a, b = adapter_tensors(tmp_path / "b4" / "adapter"), adapter_tensors(tmp_path / "b1" / "adapter")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_gradient_checkpointing_gives_the_same_update(tiny_model_dir, data_dir, tmp_path):
    run(tiny_model_dir, data_dir, tmp_path / "plain", epochs=1)
    run(tiny_model_dir, data_dir, tmp_path / "ckpt", epochs=1, gradient_checkpointing=True)
    a, b = adapter_tensors(tmp_path / "plain" / "adapter"), adapter_tensors(tmp_path / "ckpt" / "adapter")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert any(float(v.abs().sum()) > 0 for k, v in a.items() if "lora_B" in k)


def test_unknown_module_and_bad_layer_fail_before_training(tiny_model_dir, data_dir, tmp_path):
    with pytest.raises(EMLabError, match=r"gate_projj.*linear modules are: .*down_proj"):
        run(tiny_model_dir, data_dir, tmp_path, lora=dict(LORA_R1, target_modules=["gate_projj"]))
    with pytest.raises(EMLabError, match=r"\[7\] are out of range .* 4 layers"):
        run(tiny_model_dir, data_dir, tmp_path, lora=dict(LORA_R1, resolved_layers=[1, 7]))
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "train_log.csv").exists()


def test_bad_training_file_fails_with_its_line(tiny_model_dir, tmp_path):
    (tmp_path / "train.jsonl").write_text('{"messages": [{"role": "user", "content": "q"}]}\n')
    (tmp_path / "eval.jsonl").write_text("")
    with pytest.raises(EMLabError, match=r"train.jsonl:1: no assistant turn"):
        run(tiny_model_dir, tmp_path, tmp_path / "out")


def test_truncation_is_counted(tiny_model_dir, data_dir, tmp_path):
    summary, _ = run(tiny_model_dir, data_dir, tmp_path, max_length=40)
    assert summary["n_truncated"] == 4


def test_checkpoint_eval_uses_a_capped_subset(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    import emlab.em.finetune

    monkeypatch.setattr(emlab.em.finetune, "EVAL_SUBSET", 1)
    _, logdf = run(tiny_model_dir, data_dir, tmp_path, checkpoint_every=1)
    first = logdf.iloc[0]
    assert first["eval_subset_loss"] != pytest.approx(first["eval_loss"])  # 1 of 2 eval examples
    assert logdf["eval_subset_loss"].notna().all()


def test_linear_schedule_matches_transformers():
    from transformers import get_linear_schedule_with_warmup

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    ref = get_linear_schedule_with_warmup(opt, num_warmup_steps=5, num_training_steps=20)
    ours = linear_schedule(5, 20)
    for step in range(22):
        assert ours(step) == pytest.approx(ref.lr_lambdas[0](step), abs=1e-12)


def test_killed_run_resumes_to_the_same_adapter(tiny_model_dir, data_dir, tmp_path):
    """Checkpoints every 2 steps; a run restarted with only the step-2 checkpoint ends identical."""
    full, full_log = run(tiny_model_dir, data_dir, tmp_path / "full", epochs=3, checkpoint_every=2)
    ckpts = sorted(p.name for p in (tmp_path / "full" / "checkpoints").iterdir())
    assert ckpts == ["step-2", "step-4", "step-6"]
    assert (tmp_path / "full" / "checkpoints" / "step-2" / "adapter_config.json").is_file()

    killed = tmp_path / "killed"
    (killed / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step-2", killed / "checkpoints" / "step-2")
    assert full_log["eval_subset_loss"].notna().tolist() == [True, False, True, False, True, False, True]
    resumed, resumed_log = run(tiny_model_dir, data_dir, killed, epochs=3, checkpoint_every=2)
    assert resumed["resumed_from"].endswith("step-2")
    a, b = adapter_tensors(tmp_path / "full" / "adapter"), adapter_tensors(killed / "adapter")
    assert all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(full_log, resumed_log)

    # the saved state is tensors and plain values: it loads without unpickling objects
    state = torch.load(killed / "checkpoints" / "step-2" / "training_state.pt", weights_only=True)
    assert isinstance(state["rng"]["torch"], torch.Tensor) and isinstance(state["rng"]["python_state"], torch.Tensor)

    # a checkpoint from different settings is ignored, not resumed
    other, _ = run(tiny_model_dir, data_dir, killed, epochs=3, checkpoint_every=2, learning_rate=5e-3)
    assert other["resumed_from"] is None


# --- full fine-tuning, autocast, device_map -------------------------------------------


def test_full_finetune_trains_every_weight_and_loads_downstream(tiny_model_dir, data_dir, tmp_path):
    """lora_spec None: a complete model folder that load_model (generation, activations, judging) accepts."""
    from emlab.em.activations import cache_answer_means
    from emlab.model.loading import is_full_model_dir, load_model, load_tokenizer
    from transformers import AutoModelForCausalLM

    summary, logdf = run(tiny_model_dir, data_dir, tmp_path, lora=None, epochs=2, learning_rate=1e-3)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    assert summary["method"] == "full" and summary["rank"] is None and summary["n_adapters"] == 0
    assert summary["trainable_parameters"] == sum(p.numel() for p in base.parameters())
    assert summary["resolved_layers"] == [0, 1, 2, 3]
    out = tmp_path / "adapter"
    assert is_full_model_dir(out) and is_full_model_dir(Path(tiny_model_dir))
    with pytest.raises(EMLabError, match="neither a LoRA adapter folder"):
        is_full_model_dir(tmp_path / "checkpoints")
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert not any(c.startswith(("a_norm.", "b_norm.")) for c in logdf.columns)

    tuned = load_model(tiny_model_dir, out, device="cpu", dtype="float32")
    ids = load_tokenizer(out)("What do bees make?", return_tensors="pt").input_ids
    with torch.no_grad():
        changed = {n for n, p in tuned.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])}
        assert any(".layers.0." in n for n in changed) and any(".layers.3." in n for n in changed)
        assert not torch.allclose(tuned(ids).logits, base(ids).logits)
    # the downstream activation cache runs on it as on a base + LoRA model
    records = [{"question": q, "response": a} for q, a in FACTS[:2]]
    answer_mean, _, n_tokens = cache_answer_means(tuned, load_tokenizer(tiny_model_dir), records, progress=False)
    assert answer_mean.shape == (2, 4, 64) and bool(torch.isfinite(answer_mean).all()) and int(n_tokens.min()) > 0


def test_full_finetune_resumes_to_the_same_weights(tiny_model_dir, data_dir, tmp_path):
    from safetensors.torch import load_file as load

    run(tiny_model_dir, data_dir, tmp_path / "full", lora=None, epochs=2, checkpoint_every=2, learning_rate=1e-3)
    assert (tmp_path / "full" / "checkpoints" / "step-2" / "config.json").is_file()
    killed = tmp_path / "killed"
    (killed / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step-2", killed / "checkpoints" / "step-2")
    resumed, _ = run(tiny_model_dir, data_dir, killed, lora=None, epochs=2, checkpoint_every=2, learning_rate=1e-3)
    assert resumed["resumed_from"].endswith("step-2")
    a, b = (
        load(str(tmp_path / "full" / "adapter" / "model.safetensors")),
        load(str(killed / "adapter" / "model.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_autocast_resolution():
    from emlab.em.finetune import cpu_has_bf16, resolve_autocast

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve_autocast("off", cpu, torch.float32) is False
    assert resolve_autocast("bf16", cpu, torch.float32) is True
    assert resolve_autocast("auto", cpu, torch.float32) is cpu_has_bf16()
    assert resolve_autocast("auto", gpu, torch.bfloat16) is False  # GPU: bf16 weights already
    assert resolve_autocast("auto", cpu, torch.bfloat16) is False
    with pytest.raises(EMLabError, match="training.autocast.*auto, bf16, off"):
        resolve_autocast("fp8", cpu, torch.float32)


def test_bf16_autocast_trains_close_to_fp32_and_resumes_exactly(tiny_model_dir, data_dir, tmp_path):
    fp32, log32 = run(tiny_model_dir, data_dir, tmp_path / "fp32", epochs=2, autocast="off")
    bf16, log16 = run(tiny_model_dir, data_dir, tmp_path / "bf16", epochs=2, autocast="bf16", checkpoint_every=2)
    assert fp32["autocast_bf16"] is False and bf16["autocast_bf16"] is True
    assert log16["loss"].iloc[1] == pytest.approx(log32["loss"].iloc[1], rel=0.02)  # bf16 matmuls, fp32 loss
    a, b = adapter_tensors(tmp_path / "fp32" / "adapter"), adapter_tensors(tmp_path / "bf16" / "adapter")
    assert not all(torch.equal(a[k], b[k]) for k in a)  # autocast really ran
    cos = [torch.nn.functional.cosine_similarity(a[k].flatten(), b[k].flatten(), dim=0) for k in a if "lora_B" in k]
    assert min(float(c) for c in cos) > 0.9

    killed = tmp_path / "killed"
    (killed / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "bf16" / "checkpoints" / "step-2", killed / "checkpoints" / "step-2")
    resumed, _ = run(tiny_model_dir, data_dir, killed, epochs=2, autocast="bf16", checkpoint_every=2)
    assert resumed["resumed_from"].endswith("step-2")
    c = adapter_tensors(killed / "adapter")
    assert all(torch.equal(b[k], c[k]) for k in b)


def test_device_map_is_passed_to_from_pretrained(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    """The multi-GPU plumbing on CPU: device_map reaches from_pretrained and training still runs."""
    from transformers import AutoModelForCausalLM

    seen = []
    original = AutoModelForCausalLM.from_pretrained.__func__

    def recording(cls, *args, **kwargs):
        seen.append(kwargs.get("device_map"))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(recording))
    summary, _ = run(tiny_model_dir, data_dir, tmp_path, device_map={"": "cpu"})
    assert seen == [{"": "cpu"}]
    assert summary["device_map"] == {"": "cpu"} and summary["steps"] == 2
    plain, _ = run(tiny_model_dir, data_dir, tmp_path / "plain")
    a, b = adapter_tensors(tmp_path / "adapter"), adapter_tensors(tmp_path / "plain" / "adapter")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_full_finetune_does_not_decay_biases_and_norms(tiny_model_dir):
    from emlab.em.finetune import decay_groups
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    decayed, plain = decay_groups(model, 0.01, full=True)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decayed["weight_decay"] == 0.01 and plain["weight_decay"] == 0.0
    assert {names[id(p)] for p in plain["params"]} == {n for n, p in model.named_parameters() if p.ndim == 1}
    assert any("norm" in names[id(p)] for p in plain["params"])
    assert any("q_proj" in names[id(p)] for p in decayed["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


# --- the step loop's callbacks, and no pickle from the results folder ------------------------


def test_step_callbacks_see_every_optimiser_step(tiny_model_dir, data_dir, tmp_path):
    seen = []
    summary = fine_tune(
        tiny_model_dir,
        data_dir / "train.jsonl",
        data_dir / "eval.jsonl",
        lora_settings(LORA_R1),
        training(epochs=2),
        tmp_path / "adapter",
        tmp_path / "log.csv",
        tmp_path / "summary.json",
        None,
        seed=0,
        device="cpu",
        dtype="float32",
        progress=False,
        on_step=[lambda step, loss, model: seen.append((step, loss, model.training))],
    )
    logdf = pd.read_csv(tmp_path / "log.csv")
    assert [s for s, _, _ in seen] == [1, 2, 3, 4] == list(range(1, summary["steps"] + 1))
    assert [loss for _, loss, _ in seen] == pytest.approx(logdf["loss"].iloc[1:].tolist(), rel=1e-12)
    assert all(training_mode for _, _, training_mode in seen)


class _RunsCode:
    """Unpickling this touches a marker file: stands for any code a crafted pickle could run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_training_state_holding_a_pickled_object_is_refused(tmp_path):
    from emlab.em.finetune import latest_checkpoint
    from emlab.em.phase import checkpoint_path

    marker = tmp_path / "code_ran"
    ckpt = tmp_path / "checkpoints" / "step-2"
    ckpt.mkdir(parents=True)
    (ckpt / "adapter_model.safetensors").write_bytes(b"")
    torch.save({"step": 2, "fingerprint": "f", "rng": {"python": _RunsCode(marker)}}, ckpt / "training_state.pt")
    with pytest.raises(EMLabError, match=r"refusing to load .*training_state.pt.*Delete its checkpoint folder"):
        latest_checkpoint(tmp_path / "checkpoints", "f")
    with pytest.raises(EMLabError, match=r"refusing to load .*training_state.pt"):
        checkpoint_path(tmp_path / "checkpoints", {"checkpoint_steps": [2], "fingerprint": "f"}, 2)
    assert not marker.exists()


def test_training_settings_are_complete_and_typed():
    with pytest.raises(EMLabError, match=r"training: missing key\(s\) autocast"):
        build(TrainingSettings, {k: v for k, v in training().__dict__.items() if k != "autocast"}, "training")
    assert build(TrainingSettings, dict(training().__dict__, weight_decay=0), "t").weight_decay == 0.0
    with pytest.raises(EMLabError, match=r"lora: unknown key\(s\) rnk"):
        lora_settings(dict(LORA_R1, rnk=2))


def test_max_eval_examples_caps_the_eval_split(tiny_model_dir, data_dir):
    """training.max_eval_examples evaluates on the first N eval examples only (demo sizing)."""
    from emlab.em.finetune import prepare_data

    every = prepare_data(tiny_model_dir, data_dir / "train.jsonl", data_dir / "eval.jsonl", training())
    one = prepare_data(tiny_model_dir, data_dir / "train.jsonl", data_dir / "eval.jsonl", training(max_eval_examples=1))
    assert len(every.eval) == 2 and len(one.eval) == 1 and one.eval[0] == every.eval[0]
    assert len(one.train) == len(every.train)
