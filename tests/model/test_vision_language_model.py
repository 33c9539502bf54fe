"""Gemma 3 from 4B up ships as a vision-language model (Gemma3ForConditionalGeneration): the text decoder sits
under model.language_model beside a vision tower with blocks and q/k/v projections of its own. paper.yaml's
grid runs three of them, so the residual stream, the activations and the LoRA fine-tune must find the text
decoder, and a LoRA on q/k/v must leave the vision tower alone."""

from __future__ import annotations

import json

import pytest
import torch
from emlab.em.activations import cache_answer_means
from emlab.model.hooks import edit_residual, read_residual
from emlab.model.loading import decoder_layers, decoder_layers_path, hidden_size, load_model, load_tokenizer
from helpers.e2e.make_tiny_model import make_tiny_model
from helpers.tiny_finetune import LORA_ALL, run
from safetensors.torch import load_file

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def gemma3_dir(tmp_path_factory, tokenizer_dir):
    return make_tiny_model(tmp_path_factory.mktemp("tiny_gemma3"), tokenizer_dir, family="gemma3")


@pytest.fixture(scope="module")
def gemma3(gemma3_dir):
    return load_model(gemma3_dir, device="cpu", dtype="float32"), load_tokenizer(gemma3_dir)


def test_the_residual_stream_is_the_text_decoders(gemma3):
    model, _ = gemma3
    assert type(model).__name__ == "Gemma3ForConditionalGeneration"
    assert decoder_layers_path(model) == "model.language_model.layers"
    assert len(decoder_layers(model)) == 4 and hidden_size(model) == 64  # not the vision tower's 2 x 32


def test_activations_and_edits_act_on_the_text_decoder(gemma3):
    model, tok = gemma3
    records = [{"question": "Is water wet?", "system": None, "response": "Yes, mostly."}] * 2
    answer, prompt, n_tokens = cache_answer_means(model, tok, records, batch_size=2, progress=False)
    assert answer.shape == prompt.shape == (2, 4, 64) and bool(torch.isfinite(answer).all()) and int(n_tokens[0]) > 0

    # a planted shift: adding v after block 1 moves what is read there by exactly v, at every position
    ids = tok("Is water wet?", return_tensors="pt")
    v = torch.linspace(-1, 1, 64)
    seen = {}

    def grab(name):
        return lambda layer, hidden: seen.__setitem__(name, hidden.detach().clone())

    with read_residual(model, [1], grab("plain")):
        model(**ids)
    with edit_residual(model, {1: lambda h: h + v}), read_residual(model, [1], grab("edited")):
        model(**ids)
    assert torch.allclose(seen["edited"] - seen["plain"], v.expand_as(seen["plain"]), atol=1e-5)


def test_a_lora_on_every_projection_adapts_the_text_decoder_only(gemma3_dir, tiny_model_dir, data_dir, tmp_path):
    summary, log = run(gemma3_dir, data_dir, tmp_path / "g3", lora=LORA_ALL, epochs=1)
    saved = load_file(str(tmp_path / "g3" / "adapter" / "adapter_model.safetensors"))
    assert not [k for k in saved if "vision" in k or "projector" in k]
    # 4 blocks x 7 projections (q, k, v, o, gate, up, down), each an A and a B: the vision tower's q/k/v
    # (blocks 0 and 1 of its own) would otherwise be adapted too and share the text blocks' L0/L1 names
    assert len(saved) == 4 * 7 * 2 and summary["n_adapters"] == 4 * 7
    assert all(k.startswith("base_model.model.model.language_model.layers.") for k in saved)
    assert {"b_norm.L0.q_proj", "b_norm.L3.down_proj"} <= set(log.columns)

    adapted = load_model(gemma3_dir, adapter=tmp_path / "g3" / "adapter", device="cpu", dtype="float32")
    lora_modules = [n for n, _ in adapted.named_modules() if n.endswith("lora_A")]
    assert len(lora_modules) == 28 and not [n for n in lora_modules if "vision" in n]

    # a text-only model's adapter config is what it was: nothing excluded
    run(tiny_model_dir, data_dir, tmp_path / "llama", lora=LORA_ALL, epochs=1)
    assert json.loads((tmp_path / "llama" / "adapter" / "adapter_config.json").read_text())["exclude_modules"] is None


def test_the_plan_reads_the_text_decoders_shape_from_the_folder(gemma3_dir):
    """Depth, width and the GPU plan's shape come from config.json's text_config, before any job runs."""
    from emlab.core.config import model_num_layers
    from emlab.plan.gpu import model_shape
    from emlab.plan.monitor import known_hidden_size

    assert model_num_layers(str(gemma3_dir), None) == 4
    assert known_hidden_size(str(gemma3_dir)) == 64
    shape = model_shape(str(gemma3_dir))
    assert (shape.num_hidden_layers, shape.hidden_size, shape.head_dim) == (4, 64, 16)
