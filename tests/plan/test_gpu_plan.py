"""GPU-memory plan: parameter counts and KV-cache sizes checked against real models built from configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
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


PAPER = Path(__file__).resolve().parents[2] / "data" / "configs" / "paper.yaml"


def test_plan_config_paper_and_errors(tmp_path):
    from emlab.core.config import load_config
    from emlab.plan.models import model_view

    paper = load_config(PAPER)
    with pytest.raises(EMLabError, match="plan_models"):  # the paper names its models under base_models
        plan_config(paper)
    shape, stages, nbytes = plan_config(model_view(paper, "qwen14"))  # its 14B as a one-model config
    assert nbytes == 2 and {s.stage for s in stages} >= {"generate", "cache_activations", "finetune", "lora_scalars"}
    with pytest.raises(EMLabError, match="cannot read the shape"):
        model_shape(str(tmp_path / "no-such-model"))


def test_plan_models_one_row_per_base_model(tmp_path, capsys):
    """The long form: each model planned on its own view, weights from memory_gb when set, a clear row
    for a model whose shape is unknown."""
    from emlab.core.config import load_config, validate_config
    from emlab.plan.gpu import GIB, format_models, main, plan_models
    from emlab.plan.models import model_view

    paper = load_config(PAPER)
    plans = {p.key: p for p in plan_models(paper)}
    assert list(plans) == list(paper["base_models"])
    assert all(p.stages and p.weights_gib for p in plans.values())  # every paper model's shape is known offline
    _, one, _ = plan_config(model_view(paper, "qwen14"))
    assert {s.stage: s.total_gib for s in one} == {k: s.total_gib for k, s in plans["qwen14"].stages.items()}
    assert "lora_scalars" not in plans["qwen0_5"].stages  # only qwen14 runs the LoRA-interp study
    assert plans["qwen32"].load.finetune == "med_full" and plans["qwen32"].load.trainable > 32e9
    # a monitored model's finetune stage is its trait-monitor grid's largest run (the full stress run)
    assert plans["llama8"].load.finetune == "mon__llama8__medical_bad__s0__full"

    raw = yaml.safe_load(PAPER.read_text())
    raw["base_models"].update(
        given={"source": "Qwen/Qwen2.5-14B-Instruct", "num_layers": 48, "memory_gb": 40},
        sized={"source": str(tmp_path / "no-such-model"), "num_layers": 8, "memory_gb": 10},
        unknown={"source": str(tmp_path / "no-such-model"), "num_layers": 8},
    )
    extra = {p.key: p for p in plan_models(validate_config(raw))}
    given, sized, unknown = extra["given"], extra["sized"], extra["unknown"]
    assert given.weights_gib == pytest.approx(40e9 / GIB) and "memory_gb" in given.note
    assert set(given.stages) == {"generate", "cache_activations"} and given.load is None  # no fine-tune
    base = {s.stage: s for s in one}
    for stage, est in given.stages.items():  # memory_gb replaces the weights, the rest is the shape's
        assert est.total_gib == pytest.approx(base[stage].total_gib - base[stage].weights_gib + 40e9 / GIB)
    assert sized.weights_gib == pytest.approx(10e9 / GIB) and not sized.stages and "memory_gb only" in sized.note
    assert unknown.weights_gib is None and "no shape" in unknown.note and "base_models.unknown" in unknown.note
    table = format_models(list(extra.values()), 2).splitlines()
    assert len([line for line in table if line.split(" ")[0] in extra]) == len(extra)
    row = next(line for line in table if line.startswith("unknown "))
    assert "?" in row and "no shape" in row

    assert main(["--configfile", str(PAPER)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(" ")[0] for line in out[2 : 2 + len(plans)]] == list(plans)
