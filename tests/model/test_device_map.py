"""Models spread over devices (config device_map) and batches that back off on
out-of-memory errors, checked on a CPU: hooks place their edit on the hidden
state's own device (a `meta` tensor stands in for another device), device_map
reaches from_pretrained, and a simulated OOM in activation caching or the hf
judge gives the same results as a run at the smaller batch size."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from emlab.core.errors import EMLabError
from emlab.em.activations import cache_answer_means
from emlab.em.judging.hf_backend import HFJudge
from emlab.model.hooks import add_vector, project_out
from emlab.model.loading import load_model, load_tokenizer, model_device
from helpers.tiny_inputs import JUDGE_PROMPTS, RECORDS

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    torch.set_num_threads(1)
    return load_model(tiny_model_dir, device="cpu", dtype="float32"), load_tokenizer(tiny_model_dir)


# --- hooks on another device ------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_edits_stay_on_the_hidden_states_device(dtype):
    """A block on another device (meta here) gets its edit there, in its dtype; no copy back."""
    vector = torch.randn(8)
    hidden = torch.empty((2, 5, 8), device="meta", dtype=dtype)
    for fn in (add_vector(vector), project_out(vector)):
        out = fn(hidden)
        assert out.device.type == "meta" and out.shape == hidden.shape and out.dtype == dtype
        cpu = torch.randn(2, 5, 8).to(dtype)
        assert fn(cpu).device.type == "cpu"  # the same function serves blocks on several devices


def test_model_device_is_the_input_embeddings_device(tiny):
    model, _ = tiny
    assert model_device(model) == model.get_input_embeddings().weight.device == torch.device("cpu")


def test_device_map_reaches_from_pretrained(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    seen = []
    original = AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.append(kwargs.get("device_map"))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    model = load_model(tiny_model_dir, device="cpu", dtype="float32", device_map={"": "cpu"})
    assert seen == [{"": "cpu"}] and model_device(model).type == "cpu"
    load_model(tiny_model_dir, device="cpu", dtype="float32")
    assert seen[-1] is None  # no device_map: the whole model on `device`, as before


def test_schema_has_a_null_device_map_default():
    from emlab.core.config import load_schema

    prop = load_schema()["properties"]["device_map"]
    assert prop["default"] is None


# --- out-of-memory back-off -------------------------------------------------------------


class OOMOnce:
    """A forward pre-hook that raises torch.OutOfMemoryError on the first forward with more than `max_rows` rows."""

    def __init__(self, max_rows):
        self.max_rows, self.raised = max_rows, 0

    def __call__(self, module, args, kwargs):
        if not self.raised and kwargs["input_ids"].shape[0] > self.max_rows:
            self.raised += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")


def _with_oom(model, fail, fn):
    handle = model.register_forward_pre_hook(fail, with_kwargs=True)
    try:
        return fn()
    finally:
        handle.remove()


def test_activation_caching_backs_off_and_matches(tiny, caplog):
    model, tok = tiny
    fail = OOMOnce(max_rows=2)
    with caplog.at_level(logging.WARNING, logger="emlab.model.backoff"):
        got = _with_oom(model, fail, lambda: cache_answer_means(model, tok, RECORDS, batch_size=4, progress=False))
    assert fail.raised == 1
    assert any("batch size 2" in r.getMessage() and "activations.batch_size" in r.getMessage() for r in caplog.records)
    want = cache_answer_means(model, tok, RECORDS, batch_size=2, progress=False)
    for a, b in zip(got, want):
        assert torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))


def _judge(model, tok, batch_size):
    scores = {}
    HFJudge(model, tok, "tiny", batch_size=batch_size, leaves_complete=False, min_root_prob=0.0).score(
        JUDGE_PROMPTS, lambda idx, res: scores.update(zip(idx, res))
    )
    return [scores[i] for i in range(len(JUDGE_PROMPTS))]


def test_hf_judge_backs_off_and_matches(tiny):
    model, tok = tiny
    fail = OOMOnce(max_rows=1)
    got = _with_oom(model, fail, lambda: _judge(model, tok, batch_size=2))
    assert fail.raised == 1
    assert got == _judge(model, tok, batch_size=1)


def test_oom_at_batch_size_one_is_a_clear_error(tiny):
    model, tok = tiny

    def always(module, args, kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(EMLabError, match="batch size 1"):
        _with_oom(model, always, lambda: cache_answer_means(model, tok, RECORDS, batch_size=2, progress=False))


def test_scripts_read_device_map_from_the_config_not_the_params():
    """Where the layers sit changes no result, so it is not a rule param (changing it re-runs nothing)."""
    from types import SimpleNamespace

    from emlab.model.runner import device_map_of

    assert device_map_of(SimpleNamespace(config={"device_map": "auto"})) == "auto"
    assert device_map_of(SimpleNamespace(config={"device_map": None})) is None
    assert device_map_of(SimpleNamespace()) is None  # a faked rule without a config
    rules = "".join(p.read_text() for p in (REPO / "rules").glob("*.smk"))
    assert 'config["device_map"]' not in rules
