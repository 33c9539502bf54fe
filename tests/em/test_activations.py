"""Answer/prompt means of the residual stream: batched, left-padded, hook-reduced
results against a one-sequence-at-a-time reference with output_hidden_states."""

import logging

import pytest
import torch
from emlab.em.activations import cache_answer_means
from emlab.em.questions import chat_messages
from emlab.model.chat import encode_exchange
from emlab.model.loading import load_model, load_tokenizer
from helpers.tiny_inputs import RECORDS


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    torch.set_num_threads(1)
    return load_model(tiny_model_dir, device="cpu", dtype="float32"), load_tokenizer(tiny_model_dir)


def reference_means(model, tok, rec):
    """One unpadded sequence; layers 0..L-2 from output_hidden_states, the last block's
    output from a plain module hook (HF's last hidden state is after the final norm)."""
    system = rec["system"] if isinstance(rec["system"], str) else None
    enc = encode_exchange(tok, chat_messages(rec["question"], system), rec["response"])
    captured = {}
    handle = model.model.layers[-1].register_forward_hook(
        lambda _m, _i, out: captured.__setitem__("last", out[0] if isinstance(out, tuple) else out)
    )
    try:
        with torch.no_grad():
            out = model(torch.tensor([enc.input_ids]), output_hidden_states=True)
    finally:
        handle.remove()
    per_layer = torch.stack(list(out.hidden_states[1:-1]) + [captured["last"]])[:, 0]  # [L, seq, d]
    answer = per_layer[:, enc.answer_slice].mean(dim=1)  # [L, d]
    prompt = per_layer[:, : enc.prompt_len].mean(dim=1)
    return answer, prompt, enc


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_matches_single_sequence_reference(tiny, batch_size):
    model, tok = tiny
    answer_mean, prompt_mean, answer_tokens = cache_answer_means(
        model, tok, RECORDS, batch_size=batch_size, progress=False
    )
    assert answer_mean.shape == prompt_mean.shape == (len(RECORDS), 4, 64)
    assert answer_mean.dtype == prompt_mean.dtype == torch.float32 and answer_tokens.dtype == torch.int64
    for i, rec in enumerate(RECORDS):
        ref_answer, ref_prompt, enc = reference_means(model, tok, rec)
        assert answer_tokens[i].item() == enc.answer_len > 0
        torch.testing.assert_close(answer_mean[i], ref_answer, atol=1e-4, rtol=0)
        torch.testing.assert_close(prompt_mean[i], ref_prompt, atol=1e-4, rtol=0)


def test_answer_span_excludes_header_and_end_of_turn(tiny):
    _, tok = tiny
    enc = encode_exchange(tok, chat_messages("Hi?", None), "Hello there!")
    answer_text = tok.decode(enc.input_ids[enc.answer_slice])
    assert answer_text == "Hello there!"
    assert tok.decode(enc.input_ids[: enc.prompt_len]).endswith("<|im_start|>assistant\n")
    assert tok.decode(enc.input_ids[enc.answer_slice.stop :]).startswith("<|im_end|>")


def test_means_differ_from_means_over_the_whole_sequence(tiny):
    """Guards the mask: a plain mean over all tokens is a different number."""
    model, tok = tiny
    answer_mean, prompt_mean, _ = cache_answer_means(model, tok, RECORDS[:1], progress=False)
    assert (answer_mean - prompt_mean).abs().max() > 1e-2


def test_empty_response_gives_nan_not_crash(tiny, caplog):
    model, tok = tiny
    records = [dict(RECORDS[0]), dict(RECORDS[1], response="")]
    with caplog.at_level(logging.WARNING):
        answer_mean, prompt_mean, answer_tokens = cache_answer_means(model, tok, records, batch_size=2, progress=False)
    assert answer_tokens.tolist()[1] == 0 and torch.isnan(answer_mean[1]).all()
    assert torch.isfinite(answer_mean[0]).all() and torch.isfinite(prompt_mean).all()
    _, ref_prompt, _ = reference_means(model, tok, records[1])
    torch.testing.assert_close(prompt_mean[1], ref_prompt, atol=1e-4, rtol=0)
    assert "no answer tokens" in caplog.text


def test_hooks_are_removed_after_caching(tiny):
    model, tok = tiny
    before = [len(layer._forward_hooks) for layer in model.model.layers]  # transformers may keep its own
    cache_answer_means(model, tok, RECORDS[:2], progress=False)
    assert [len(layer._forward_hooks) for layer in model.model.layers] == before


def test_cache_activations_script(tiny_model_dir, tmp_path, rule_script):
    import pandas as pd
    from emlab.model.tensors import load_tensors
    from peft import LoraConfig, get_peft_model

    base = load_model(tiny_model_dir, device="cpu", dtype="float32")
    peft_model = get_peft_model(
        base, LoraConfig(r=1, lora_alpha=8, target_modules=["down_proj"], init_lora_weights=False)
    )
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    responses = pd.DataFrame(
        [dict(rec, condition="ft", question_id=f"q{i}", sample_idx=i) for i, rec in enumerate(RECORDS)]
    )
    responses["system"] = [r if isinstance(r, str) else None for r in responses["system"]]
    responses.to_parquet(tmp_path / "ft.parquet")

    out_t, out_i = tmp_path / "act" / "ft.safetensors", tmp_path / "act" / "ft.index.parquet"
    rule_script(
        "cache_activations",
        tmp_path,
        input=dict(base_model=[], adapter=str(adapter), responses=str(tmp_path / "ft.parquet")),
        output=dict(tensors=str(out_t), index=str(out_i)),
        params=dict(base_model=str(tiny_model_dir), batch_size=2, device="cpu", dtype="float32"),
    )

    tensors, meta = load_tensors(out_t)
    assert tensors["answer_mean"].shape == tensors["prompt_mean"].shape == (len(RECORDS), 4, 64)
    assert meta["n_layers"] == 4 and meta["d_model"] == 64 and "after decoder block" in meta["layer_semantics"]
    index = pd.read_parquet(out_i)
    assert list(index.columns) == ["row", "condition", "question_id", "sample_idx", "n_answer_tokens"]
    assert index["row"].tolist() == list(range(len(RECORDS)))
    assert index["n_answer_tokens"].tolist() == tensors["answer_tokens"].tolist()
    # The adapter is in effect: the results equal the fine-tuned model's, not the base model's.
    tuned = load_model(tiny_model_dir, adapter, device="cpu", dtype="float32")
    tok = load_tokenizer(tiny_model_dir)
    expected, _, _ = cache_answer_means(tuned, tok, RECORDS, progress=False)
    plain, _, _ = cache_answer_means(
        load_model(tiny_model_dir, device="cpu", dtype="float32"), tok, RECORDS, progress=False
    )
    torch.testing.assert_close(tensors["answer_mean"], expected, atol=1e-5, rtol=0)
    assert (tensors["answer_mean"] - plain).abs().max() > 1e-3


def test_hook_edits_convert_their_vector_once_per_dtype():
    """add_vector / project_out cache the vector per (device, dtype) and stay correct when the dtype changes."""
    from emlab.model.hooks import add_vector, project_out

    v = torch.randn(8)
    add, proj = add_vector(v), project_out(v)
    for dtype in (torch.float32, torch.bfloat16, torch.float32):
        h = torch.randn(2, 3, 8).to(dtype)
        assert add(h).dtype == dtype
        assert torch.allclose(add(h).float(), h.float() + v.to(dtype).float(), atol=1e-2)
        out = proj(h)
        assert out.dtype == dtype
        assert float((out.float() @ (v / v.norm())).abs().max()) < 5e-2
    from emlab.model.hooks import _on

    cache: dict = {}
    first = _on(v, cache, torch.device("cpu"), torch.bfloat16)
    assert _on(v, cache, torch.device("cpu"), torch.bfloat16) is first  # converted once, then reused
    assert set(cache) == {(torch.device("cpu"), torch.bfloat16)}
