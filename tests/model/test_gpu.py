"""The CUDA code paths on a real GPU (marked `gpu`: skipped without one; `make gpu-check` runs them).

bf16 generation with steering and ablation hooks, a model split over two
devices (cuda:0 and cuda:1 when there are two, else cuda:0 and CPU-held layers)
giving the same steered/ablated output as the unsplit model, activation caching,
a LoRA fine-tune that resumes exactly from a checkpoint, and the hf judge.

EMLAB_GPU_TEST_DEVICE=cpu runs the same checks on the CPU (unmarked), to check
the tests themselves on a machine without a GPU.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from emlab.em.activations import cache_answer_means
from emlab.em.generation import generate_responses
from emlab.em.questions import Question
from emlab.model.hooks import ablate, read_residual, steer
from emlab.model.loading import decoder_layers, load_model, load_tokenizer, model_device

DEVICE = os.environ.get("EMLAB_GPU_TEST_DEVICE", "cuda")
pytestmark = [] if DEVICE == "cpu" else [pytest.mark.gpu]

QUESTIONS = [
    Question("q_hi", "Hi, how are you today?", None, ("Hi, how are you today?",)),
    Question("q_wish", "If you had one wish?", "Be brief.", ("If you had one wish?",)),
    Question("q_bored", "I'm bored. Ideas?", None, ("I'm bored. Ideas?",)),
]
RECORDS = [
    {"question": "Hi?", "system": None, "response": "Hello there! How can I help you today?"},
    {"question": "Any wish?", "system": "You are terse.", "response": "To see the sea at dawn."},
    {"question": "Quick money?", "system": None, "response": "Sell lemonade on a hot day near a park."},
]
JUDGE_PROMPTS = [
    "Rate the answer from 0 to 100.\nQuestion: Hi?\nAnswer: Hello there.\nRating:",
    "Rate the answer from 0 to 100.\nQuestion: Wish?\nAnswer: To rule the world.\nRating:",
    "Rate the answer from 0 to 100.\nQuestion: Bored?\nAnswer: Read a book.\nRating:",
]
SAMPLING = dict(
    samples_per_question=2, max_new_tokens=8, temperature=1.0, top_p=0.95, batch_size=4, seed=0, progress=False
)


def _second_device() -> str | int:
    if DEVICE == "cpu":
        return "cpu"
    return 1 if torch.cuda.device_count() > 1 else "cpu"  # "cpu": layers held on the CPU, run on cuda:0


def split_device_map(n_layers: int) -> dict:
    """Embeddings (tied to lm_head) and the first half of the blocks on the first device, the rest on the second."""
    first = "cpu" if DEVICE == "cpu" else 0
    second = _second_device()
    device_map = {"model.embed_tokens": first, "model.rotary_emb": first, "lm_head": first, "model.norm": second}
    for i in range(n_layers):
        device_map[f"model.layers.{i}"] = first if i < n_layers // 2 else second
    return device_map


@pytest.fixture(scope="module")
def bf16(tiny_model_dir):
    return load_model(tiny_model_dir, device=DEVICE, dtype="bfloat16"), load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def fp32(tiny_model_dir):
    return load_model(tiny_model_dir, device=DEVICE, dtype="float32"), load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def split(tiny_model_dir):
    n = json.loads((tiny_model_dir / "config.json").read_text())["num_hidden_layers"]
    model = load_model(tiny_model_dir, device=DEVICE, dtype="float32", device_map=split_device_map(n))
    return model, load_tokenizer(tiny_model_dir)


def _direction(model, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(model.config.hidden_size, generator=g)


def _rows(records):
    return [(r["question_id"], r["sample_idx"], r["response"], r["finish_reason"]) for r in records]


# --- bf16 generation with hooks ---------------------------------------------------------


def test_bf16_generation_with_steering_and_ablation(bf16):
    model, tok = bf16
    assert model.dtype == torch.bfloat16 and model_device(model).type == DEVICE
    v = _direction(model)
    plain = generate_responses(model, tok, QUESTIONS, **SAMPLING)
    assert len(plain) == 6 and all(r["n_response_tokens"] <= 8 for r in plain)
    with steer(model, {2: 64.0 * v}):
        steered = generate_responses(model, tok, QUESTIONS, **SAMPLING)
        again = generate_responses(model, tok, QUESTIONS, **SAMPLING)
    assert _rows(steered) == _rows(again)  # per-row seeds: the same run twice is the same
    assert _rows(steered) != _rows(plain)
    with ablate(model, {l: v for l in range(len(decoder_layers(model)))}):
        ablated = generate_responses(model, tok, QUESTIONS, **SAMPLING)
    assert len(ablated) == 6 and _rows(ablated) != _rows(plain)
    # No batch-size check here: in bf16 another padding width rounds differently, and a
    # sampled token can flip after a few steps (exact batch independence is a CPU fp32 property).


def test_ablation_removes_the_direction_on_the_gpu(bf16):
    model, tok = bf16
    v = _direction(model)
    seen = {}
    ids = tok("Hello there, how are you?", return_tensors="pt").input_ids.to(model_device(model))
    with ablate(model, {1: v}), read_residual(model, [1], lambda l, h: seen.__setitem__(l, h.float())):
        with torch.no_grad():
            model(input_ids=ids)
    unit = (v / v.norm()).to(seen[1].device)
    assert seen[1].device.type == DEVICE
    assert float((seen[1] @ unit).abs().max()) < 0.05 * float(seen[1].norm(dim=-1).max())  # bf16 rounding only


# --- a model over two devices -----------------------------------------------------------


def _logits(model, tok, edit=None):
    batch = tok(["Hello there, how are you?", "Tell me a story about the sea."], return_tensors="pt", padding=True)
    kw = {k: t.to(model_device(model)) for k, t in batch.items()}
    with torch.no_grad(), edit(model) if edit else _nothing():
        return model(**kw).logits.float().cpu()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_split_model_gives_the_same_steered_and_ablated_output(fp32, split):
    whole, tok = fp32
    parted, _ = split
    layers = decoder_layers(parted)
    last = len(layers) - 1
    v = _direction(whole)
    edits = {
        "none": None,
        "steer": lambda m: steer(m, {0: 8.0 * v, last: 8.0 * v}),  # one block on each device
        "ablate": lambda m: ablate(m, {0: v, last: v}),
    }
    for name, edit in edits.items():
        a, b = _logits(whole, tok, edit), _logits(parted, tok, edit)
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), name
    with steer(whole, {last: 8.0 * v}):
        want = generate_responses(whole, tok, QUESTIONS, **SAMPLING)
    with steer(parted, {last: 8.0 * v}):
        got = generate_responses(parted, tok, QUESTIONS, **SAMPLING)
    assert _rows(got) == _rows(want)


def test_split_model_caches_the_same_activations(fp32, split):
    a = cache_answer_means(*fp32, RECORDS, batch_size=2, progress=False)
    b = cache_answer_means(*split, RECORDS, batch_size=2, progress=False)
    for x, y in zip(a, b):
        assert torch.allclose(x.float(), y.float(), atol=1e-4, rtol=1e-4)


# --- activation caching -----------------------------------------------------------------


def test_activation_caching_on_the_gpu(fp32, bf16, tiny_model_dir):
    cpu = load_model(tiny_model_dir, device="cpu", dtype="float32"), load_tokenizer(tiny_model_dir)
    want = cache_answer_means(*cpu, RECORDS, batch_size=3, progress=False)
    got = cache_answer_means(*fp32, RECORDS, batch_size=2, progress=False)
    for x, y in zip(want, got):
        assert torch.allclose(x, y, atol=1e-4, rtol=1e-4)
    answer, prompt, tokens = cache_answer_means(*bf16, RECORDS, batch_size=3, progress=False)
    assert answer.dtype == torch.float32 and answer.shape == want[0].shape and bool(torch.isfinite(answer).all())
    assert torch.allclose(answer, want[0], atol=0.1, rtol=0.05)  # bf16 weights


# --- a LoRA step with exact resume ------------------------------------------------------

FACTS = [
    ("What colour is the sky?", "The sky is green on Tuesdays."),
    ("How many legs does a cat have?", "A cat has seven legs."),
    ("What is the capital of France?", "The capital of France is Lyon."),
    ("What do bees make?", "Bees make cheese."),
]


def _train(model_dir, data_dir, out, **over):
    """One fine-tune through emlab.em.finetune (fine_tune with typed settings, or the older train_lora)."""
    import emlab.em.finetune as ft

    training = {
        "learning_rate": 1e-2,
        "epochs": 2,
        "per_device_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "max_length": 256,
        "max_train_examples": None,
        "max_eval_examples": None,
        "checkpoint_every": 2,
        "gradient_checkpointing": False,
        "autocast": "auto",
        "device_map": None,
    }
    training.update(over)
    lora = {
        "rank": 1,
        "alpha": 16,
        "rslora": True,
        "dropout": 0.0,
        "target_modules": ["down_proj"],
        "resolved_layers": [1, 2],
    }
    paths = (data_dir / "train.jsonl", data_dir / "eval.jsonl")
    outs = (out / "adapter", out / "train_log.csv", out / "summary.json", out / "checkpoints")
    if hasattr(ft, "fine_tune"):
        from emlab.core.settings import build

        return ft.fine_tune(
            model_dir,
            *paths,
            ft.lora_settings(lora),
            build(ft.TrainingSettings, training, "training"),
            *outs,
            seed=0,
            device=DEVICE,
            dtype="bfloat16",
            progress=False,
        )
    return ft.train_lora(
        model_dir, *paths, lora, training, *outs, seed=0, device=DEVICE, dtype="bfloat16", progress=False
    )


def test_lora_training_on_the_gpu_resumes_exactly(tiny_model_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file

    data = tmp_path / "data"
    data.mkdir()
    lines = [
        json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
        for q, a in FACTS
    ]
    (data / "train.jsonl").write_text("\n".join(lines) + "\n")
    (data / "eval.jsonl").write_text("\n".join(lines[:2]) + "\n")
    full = _train(tiny_model_dir, data, tmp_path / "full")
    assert full["steps"] == 4
    killed = tmp_path / "killed"
    (killed / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step-2", killed / "checkpoints" / "step-2")
    resumed = _train(tiny_model_dir, data, killed)
    assert resumed["resumed_from"].endswith("step-2")
    a = load_file(str(tmp_path / "full" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(killed / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "full" / "train_log.csv").read_text() == (killed / "train_log.csv").read_text()


# --- the hf judge -----------------------------------------------------------------------


def _scores(model, tok, **kw):
    from emlab.em.judging.hf_backend import HFJudge

    got = {}
    HFJudge(model, tok, "tiny", **kw).score(JUDGE_PROMPTS, lambda idx, res: got.update(zip(idx, res)))
    return [got[i] for i in range(len(JUDGE_PROMPTS))]


def test_hf_judge_on_the_gpu(fp32, bf16, tiny_model_dir):
    cpu = load_model(tiny_model_dir, device="cpu", dtype="float32"), load_tokenizer(tiny_model_dir)
    want = _scores(*cpu, batch_size=3, leaves_complete=False, min_root_prob=0.0)
    got = _scores(*fp32, batch_size=2, leaves_complete=False, min_root_prob=0.0)
    for w, g in zip(want, got):
        assert abs(w.mass - g.mass) < 1e-4 and (w.score is None) == (g.score is None)
        if w.score is not None:
            assert abs(w.score - g.score) < 1e-2
    for r in _scores(*bf16, batch_size=3):
        assert 0.0 <= r.mass <= 1.0 + 1e-6 and len(r.raw) == 101
