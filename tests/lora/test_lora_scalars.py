"""Per-token rank-1 scalars and token significance on a tiny random Llama with rank-1 down_proj adapters."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers.lora_models import rank1_peft_model, records


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from emlab.model.loading import load_tokenizer

    return load_tokenizer(tiny_model_dir)


def _settings(batch_size=3, grad=True, grad_batch=2):
    from emlab.lora.scalars import ScalarCaptureSettings

    return ScalarCaptureSettings(batch_size=batch_size, gradient_importance=grad, gradient_batch_size=grad_batch)


def test_scalars_equal_direct_computation(tiny_model_dir, tok):
    """s = A·x with x read directly at each down_proj input, token by token, in layer order; effective = scale·s·‖B‖."""
    from emlab.em.activations import encode_records
    from emlab.lora.scalars import capture_scalars, rank1_adapters

    model = rank1_peft_model(tiny_model_dir, alpha=4.0, rslora=True)
    recs = records(5)
    cap = capture_scalars(model, tok, recs, _settings(grad=False))
    adapters = rank1_adapters(model)
    assert cap.adapters == [f"L{l}.down_proj" for l in range(4)] and cap.layers == [0, 1, 2, 3]
    assert cap.scales == pytest.approx([4.0] * 4)  # rsLoRA: alpha / sqrt(1)
    encoded = encode_records(tok, recs)
    assert len(cap.tokens) == cap.scalars.shape[0] == sum(len(e.input_ids) for e in encoded)
    assert cap.scalars.dtype == np.float32 and cap.effective.dtype == np.float32
    for r, e in enumerate(encoded):  # unpadded, one response at a time
        inputs = {}
        handles = [
            ad.module.register_forward_pre_hook(lambda m, a, i=i, inputs=inputs: inputs.__setitem__(i, a[0]))
            for i, ad in enumerate(adapters)
        ]
        try:
            with torch.no_grad():
                model(input_ids=torch.tensor([e.input_ids]))
        finally:
            for h in handles:
                h.remove()
        rows = (cap.tokens["response"] == r).to_numpy()
        for i, ad in enumerate(adapters):
            direct = (inputs[i][0] @ ad.lora_A.weight[0]).detach().numpy()  # [seq]
            np.testing.assert_allclose(cap.scalars[rows, i], direct, rtol=1e-4, atol=1e-4)
            b = float(ad.lora_B.weight.detach().norm())
            np.testing.assert_allclose(cap.effective[rows, i], 4.0 * direct * b, rtol=1e-4, atol=1e-4)
        sub = cap.tokens[rows]
        assert sub["token_id"].tolist() == e.input_ids
        assert sub["position"].tolist() == list(range(len(e.input_ids)))
        assert int(sub["is_answer"].sum()) == e.answer_len
        assert (sub["segment"] == "prompt").sum() == e.prompt_len
        assert sub["question_id"].iloc[0] == recs[r]["question_id"]


def test_batch_size_does_not_change_anything(tiny_model_dir, tok):
    from emlab.lora.scalars import capture_scalars

    model = rank1_peft_model(tiny_model_dir)
    a = capture_scalars(model, tok, records(6), _settings(batch_size=1, grad=True, grad_batch=1))
    b = capture_scalars(model, tok, records(6), _settings(batch_size=4, grad=True, grad_batch=3))
    np.testing.assert_allclose(a.scalars, b.scalars, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a.tokens["kl"], b.tokens["kl"], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(a.tokens["grad_importance"], b.tokens["grad_importance"], rtol=1e-3, atol=1e-6)


def test_kl_is_direct_and_grad_importance_sums_to_kl(tiny_model_dir, tok):
    """kl at answer token t = KL(p_base || p_ft) of the logits at t; importance sums to the response's KL."""
    from emlab.em.activations import encode_records
    from emlab.lora.scalars import capture_scalars

    model = rank1_peft_model(tiny_model_dir, b_scale=2.0)
    recs = records(3)
    cap = capture_scalars(model, tok, recs, _settings())
    encoded = encode_records(tok, recs)
    for r, e in enumerate(encoded):
        ids = torch.tensor([e.input_ids])
        with torch.no_grad():
            with model.disable_adapter():
                lb = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            lf = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        kl = (lb.exp() * (lb - lf)).sum(-1).numpy()
        sub = cap.tokens[cap.tokens["response"] == r]
        ans = sub["is_answer"].to_numpy()
        np.testing.assert_allclose(sub["kl"].to_numpy()[ans], kl[ans], rtol=1e-3, atol=1e-6)
        assert sub["kl"][~ans].isna().all() and sub["grad_importance"][~ans].isna().all()
        assert (sub["kl"][ans] > 0).all()
        assert sub["grad_importance"][ans].sum() == pytest.approx(sub["kl"][ans].sum(), rel=1e-3)
        assert (sub["grad_importance"][ans] > 0).all()


def test_zeroed_b_gives_zero_significance(tiny_model_dir, tok):
    from emlab.lora.scalars import capture_scalars

    model = rank1_peft_model(tiny_model_dir)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.zero_()
    cap = capture_scalars(model, tok, records(4), _settings())
    ans = cap.tokens["is_answer"].to_numpy()
    assert np.abs(cap.tokens["kl"].to_numpy()[ans]).max() < 1e-6
    assert np.abs(cap.tokens["grad_importance"].to_numpy()[ans]).max() < 1e-6
    assert np.abs(cap.scalars).max() > 0  # the scalars themselves are still read
    assert np.abs(cap.effective).max() == 0


def test_hooks_are_removed_after_an_error(tiny_model_dir, tok):
    from emlab.lora.scalars import rank1_adapters, read_scalars

    model = rank1_peft_model(tiny_model_dir)
    adapters = rank1_adapters(model)

    def boom(i, s):
        raise RuntimeError("inside")

    with pytest.raises(RuntimeError):
        with read_scalars(adapters, boom):
            model(input_ids=torch.tensor([[1, 2, 3]]))
    assert all(not ad.lora_A._forward_hooks for ad in adapters)


def test_write_and_load_round_trip(tiny_model_dir, tok, tmp_path):
    from emlab.lora.scalars import (
        GRAD_IMPORTANCE_DEFINITION,
        TOKEN_COLUMNS,
        capture_scalars,
        load_capture,
        write_capture,
    )
    from emlab.model.tensors import load_tensors

    model = rank1_peft_model(tiny_model_dir)
    cap = capture_scalars(model, tok, records(3), _settings(grad=False))
    write_capture(cap, tmp_path / "scalars.safetensors", tmp_path / "tokens.parquet")
    back = load_capture(tmp_path / "scalars.safetensors", tmp_path / "tokens.parquet")
    np.testing.assert_array_equal(back.scalars, cap.scalars)
    assert back.adapters == cap.adapters and list(back.tokens.columns) == TOKEN_COLUMNS
    assert back.tokens["grad_importance"].isna().all()
    _, meta = load_tensors(tmp_path / "scalars.safetensors")
    assert meta["grad_importance_definition"] == GRAD_IMPORTANCE_DEFINITION
    assert math.isclose(meta["scales"][0], cap.scales[0])


def test_rank_above_one_is_a_clear_error(tiny_model_dir, tok):
    from emlab.core.errors import EMLabError
    from emlab.lora.scalars import rank1_adapters
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["down_proj"]))
    with pytest.raises(EMLabError, match="rank 2.*rank-1"):
        rank1_adapters(model, "finetune med_x")
    with pytest.raises(EMLabError, match="no LoRA adapters"):
        rank1_adapters(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)))
