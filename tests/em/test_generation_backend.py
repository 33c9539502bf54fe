"""generation.backend: vllm for conditions without an intervention (clear error when vllm is missing),
hf for steered/ablated ones; the vLLM path's plumbing is checked against a stand-in vllm module."""

import json
import logging
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pandas as pd
import pytest
import torch
from emlab.core.errors import EMLabError
from emlab.em.generation import generate_responses_vllm, generation_backend, merged_model_folder, stop_token_ids
from emlab.em.questions import Question
from emlab.model.loading import load_model, load_tokenizer

REPO = Path(__file__).resolve().parents[2]
QUESTIONS_FILE = str(REPO / "data" / "questions" / "first_plot_questions.yaml")
NONE = {"model": "base", "group": "model", "intervention": {"kind": "none"}}
STEER = {
    "model": "base",
    "group": "steering",
    "intervention": {"kind": "steer", "vector": "ft", "layer": 1, "scale": 2.0},
}
ABLATE = {"model": "ft", "group": "ablation", "intervention": {"kind": "ablate", "vector": "ft", "mode": "layerwise"}}
SETTINGS = {
    "samples_per_question": 2,
    "max_new_tokens": 4,
    "temperature": 1.0,
    "top_p": 0.9,
    "batch_size": 8,
    "backend": "hf",
    "threads": None,
}


@pytest.fixture
def no_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError, installed or not


def test_hf_backend_is_the_default():
    assert generation_backend("hf", NONE, "base") == "hf"
    with pytest.raises(EMLabError, match="generation.backend must be one of"):
        generation_backend("tgi", NONE, "base")


def test_vllm_missing_is_a_clear_error_for_an_unsteered_condition(no_vllm):
    with pytest.raises(EMLabError, match=r"condition medical_r1.*pip install vllm.*generation.backend: hf"):
        generation_backend("vllm", dict(NONE, model="medical_r1"), "medical_r1")


@pytest.mark.parametrize("spec", [STEER, ABLATE])
def test_vllm_falls_back_to_hf_for_interventions(no_vllm, caplog, spec):
    with caplog.at_level(logging.INFO, logger="emlab.em.generation"):
        assert generation_backend("vllm", spec, "cond") == "hf"
    assert any("hf backend" in r.getMessage() and "cond" in r.getMessage() for r in caplog.records)


def test_schema_backend_default_and_enum():
    from emlab.core.config import validate_config

    assert validate_config({}, source="test")["generation"]["backend"] == "hf"
    with pytest.raises(EMLabError):
        validate_config({"generation": {"backend": "tgi"}}, source="test")


def test_script_fails_before_loading_any_model(no_vllm, tmp_path, rule_script):
    out = tmp_path / "gen" / "base.parquet"
    with pytest.raises(SystemExit):
        rule_script(
            "generate",
            tmp_path,
            input={"questions": QUESTIONS_FILE, "base_model": []},
            output={"out": str(out)},
            params={
                "condition": "base",
                "spec": NONE,
                "base_model": str(tmp_path / "no_such_model"),
                "generation": dict(SETTINGS, backend="vllm"),
                "seed": 0,
                "device": "cpu",
                "dtype": "float32",
            },
        )
    log = (tmp_path / "generate.log").read_text()
    assert "pip install vllm" in log and "condition base" in log and "cannot load model" not in log
    assert not out.exists()


def test_script_steered_condition_with_vllm_uses_hf(no_vllm, tiny_model_dir, tmp_path, rule_script):
    from emlab.model.tensors import save_tensors

    vectors = tmp_path / "dirs.safetensors"
    save_tensors(vectors, {"mean_diff": torch.randn(4, 64)})
    out = tmp_path / "gen" / "steer.parquet"
    rule_script(
        "generate",
        tmp_path,
        input={"questions": QUESTIONS_FILE, "base_model": [], "vectors": str(vectors)},
        output={"out": str(out)},
        params={
            "condition": "steer__ft__L1__s2",
            "spec": STEER,
            "base_model": str(tiny_model_dir),
            "generation": dict(SETTINGS, backend="vllm"),
            "seed": 0,
            "device": "cpu",
            "dtype": "float32",
        },
    )
    df = pd.read_parquet(out)
    assert len(df) == 16 and json.loads(df["intervention"][0]) == STEER["intervention"]
    assert "hf backend" in (tmp_path / "generate.log").read_text()


# The real API this mirrors (checked against the vllm 0.33.0 wheel's source):
# LLM(model, *, dtype=..., seed=...); LLM.generate(prompts, sampling_params) with
# TokensPrompt dicts {"prompt_token_ids": [...]} and one SamplingParams per prompt;
# RequestOutput.outputs[0].token_ids ends with the stop token when one ended the
# request (v1 scheduler check_stop runs after the token is appended), and
# finish_reason is "stop" or "length".
_SAMPLING_FIELDS = {"n", "temperature", "top_p", "seed", "stop_token_ids", "max_tokens", "skip_special_tokens"}


class _FakeLLM:
    """Stands in for vllm.LLM: every request gets 3 tokens drawn from its own seed, then (seed odd) a stop token."""

    calls = []

    def __init__(self, model, *, dtype, seed):
        _FakeLLM.calls.append({"model": model, "dtype": dtype, "seed": seed})

    def generate(self, prompts, sampling_params):
        assert len(prompts) == len(sampling_params)
        outs = []
        for prompt, p in zip(prompts, sampling_params):
            assert set(prompt) == {"prompt_token_ids"} and isinstance(prompt["prompt_token_ids"], list)
            g = torch.Generator().manual_seed(p.seed)
            ids = torch.randint(100, 200, (min(3, p.max_tokens),), generator=g).tolist()
            stop = p.seed % 2 == 1
            ids += [p.stop_token_ids[0]] if stop else []
            outs.append(
                SimpleNamespace(outputs=[SimpleNamespace(token_ids=ids, finish_reason="stop" if stop else "length")])
            )
        return outs


def _sampling_params(**kw):
    unknown = set(kw) - _SAMPLING_FIELDS
    assert not unknown, f"not a vllm.SamplingParams field we checked: {unknown}"
    return SimpleNamespace(**kw)


@pytest.fixture
def fake_vllm(monkeypatch):
    mod = ModuleType("vllm")
    mod.LLM = _FakeLLM
    mod.SamplingParams = _sampling_params
    monkeypatch.setitem(sys.modules, "vllm", mod)
    _FakeLLM.calls.clear()
    return mod


def test_vllm_records_match_the_hf_record_layout(fake_vllm, tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    questions = [Question("a", "Hi?", None, ("Hi?",)), Question("b", "Wish?", "Be terse.", ("Wish?",))]
    assert generation_backend("vllm", NONE, "base") == "vllm"
    recs = generate_responses_vllm(
        tiny_model_dir,
        tok,
        questions,
        samples_per_question=3,
        max_new_tokens=3,
        temperature=0.7,
        top_p=0.9,
        seed=5,
        dtype="float32",
        condition="base",
    )
    assert _FakeLLM.calls == [{"model": str(tiny_model_dir), "dtype": "float32", "seed": 5}]
    assert [(r["question_id"], r["sample_idx"]) for r in recs] == [
        ("a", 0),
        ("a", 1),
        ("a", 2),
        ("b", 0),
        ("b", 1),
        ("b", 2),
    ]
    stops = set(stop_token_ids(tok))
    for r in recs:
        assert r["n_response_tokens"] == 3  # the stop token is not counted
        assert r["finish_reason"] == ("stop" if r["seed"] % 2 else "length")
        assert (r["temperature"], r["top_p"], r["max_new_tokens"]) == (0.7, 0.9, 3)
        assert not any(tok.convert_tokens_to_ids(t) in stops for t in tok.tokenize(r["response"]))
    assert recs[3]["system"] == "Be terse." and "Be terse." in recs[3]["prompt"]
    assert len({r["seed"] for r in recs}) == 6


def test_merged_model_folder_holds_the_adapted_weights(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = load_model(tiny_model_dir, device="cpu", dtype="float32")
    peft_model = get_peft_model(base, LoraConfig(r=1, lora_alpha=1, target_modules=["down_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.5)
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = merged_model_folder(tiny_model_dir, tmp_path / "adapter", "float32", parent=tmp_path)
    try:
        reference = load_model(tiny_model_dir, tmp_path / "adapter", device="cpu", dtype="float32", merge=True)
        loaded = load_model(merged.name, device="cpu", dtype="float32")
        ids = torch.tensor([[1, 200, 300, 400]])
        plain = load_model(tiny_model_dir, device="cpu", dtype="float32")
        torch.testing.assert_close(loaded(ids).logits, reference(ids).logits)
        assert (loaded(ids).logits - plain(ids).logits).abs().max() > 1e-3
        assert (Path(merged.name) / "tokenizer_config.json").exists()
    finally:
        merged.cleanup()
    assert not Path(merged.name).exists()


@pytest.mark.gpu
def test_real_vllm_samples_reproducibly(tiny_model_dir):
    """With vllm installed on a GPU machine: real sampling, the hf record layout, seeds that reproduce."""
    pytest.importorskip("vllm")
    tok = load_tokenizer(tiny_model_dir)
    questions = [Question("a", "Hi?", None, ("Hi?",)), Question("b", "Wish?", "Be terse.", ("Wish?",))]
    kwargs = dict(
        samples_per_question=2, max_new_tokens=8, temperature=1.0, top_p=1.0, seed=3, dtype="float32", condition="base"
    )
    first = generate_responses_vllm(tiny_model_dir, tok, questions, **kwargs)
    again = generate_responses_vllm(tiny_model_dir, tok, questions, **kwargs)
    assert [(r["question_id"], r["sample_idx"]) for r in first] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    assert all(1 <= r["n_response_tokens"] <= 8 for r in first)
    assert [r["response"] for r in first] == [r["response"] for r in again]
