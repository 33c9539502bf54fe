"""GPU-memory plan: parameter counts and KV-cache sizes checked against real models built from configs."""

from __future__ import annotations

import pytest
import torch
from emlab.core.errors import EMLabError
from emlab.plan.gpu import ModelShape, estimate_stages, format_plan, model_shape, plan_config


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("tied", [True, False])
def test_parameter_count_matches_a_real_model(arch, tied):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(
        arch,
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=8,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
    )
    model = AutoModelForCausalLM.from_config(cfg)
    shape = ModelShape.from_hf_config(cfg.to_dict())
    assert shape.n_parameters() == sum(p.numel() for p in model.parameters())


def test_kv_cache_bytes_match_a_real_cache():
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(
        "qwen2",
        vocab_size=500,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16)
    batch, tokens = 3, 7
    with torch.no_grad():
        out = model(input_ids=torch.zeros((batch, tokens), dtype=torch.long), use_cache=True)
    cache = out.past_key_values
    nbytes = sum(
        layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
        for layer in cache.layers
    )
    assert nbytes == ModelShape.from_hf_config(cfg.to_dict()).kv_bytes_per_token(2) * batch * tokens


def test_paper_model_known_offline():
    shape = model_shape("Qwen/Qwen2.5-14B-Instruct")
    assert shape.num_hidden_layers == 48 and 14.6e9 < shape.n_parameters() < 14.9e9  # published: 14.7B
    stages = estimate_stages(
        shape,
        dtype_bytes=2,
        generation_batch=64,
        generation_tokens=1200,
        activation_batch=16,
        activation_tokens=1200,
        train_batch=2,
        train_tokens=2048,
        trainable_parameters=10**6,
        gradient_checkpointing=False,
    )
    by = {s.stage: s for s in stages}
    assert by["generate"].cache_gib == pytest.approx(2 * 48 * 8 * 128 * 2 * 64 * 1200 / 1024**3)
    assert all(s.weights_gib == pytest.approx(14.77e9 * 2 / 1024**3, rel=0.01) for s in stages)
    assert "KV cache" in format_plan("Qwen/Qwen2.5-14B-Instruct", shape, stages, 2)


def test_plan_config_paper_and_errors(tmp_path):
    from pathlib import Path

    from emlab.core.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "data" / "configs" / "paper.yaml")
    shape, stages, nbytes = plan_config(cfg)
    assert nbytes == 2 and {s.stage for s in stages} >= {"generate", "cache_activations", "finetune", "lora_scalars"}
    with pytest.raises(EMLabError, match="cannot read the shape"):
        model_shape(str(tmp_path / "no-such-model"))
