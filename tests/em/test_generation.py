"""Batched, KV-cached sampling: determinism, batch-size independence, agreement
with HF greedy decoding, stop tokens, and residual hooks in the cached path."""

import pytest
import torch
from emlab.em.generation import build_jobs, generate_batch, generate_responses, sample_next_tokens, stop_token_ids
from emlab.em.questions import Question
from emlab.interventions import apply_intervention
from emlab.model.hooks import edit_residual, read_residual
from emlab.model.loading import load_model, load_tokenizer

QUESTIONS = [
    Question("short", "Hi?", None, ("Hi?",)),
    Question(
        "long",
        "Tell me, at some length, what you would do with a whole free day?",
        None,
        ("Tell me, at some length, what you would do with a whole free day?", "What now?"),
    ),
    Question("sys", "Any wish?", "You are terse.", ("Any wish?",)),
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    torch.set_num_threads(1)
    return load_model(tiny_model_dir, device="cpu", dtype="float32"), load_tokenizer(tiny_model_dir)


def _generate(tiny, **kw):
    model, tok = tiny
    settings = dict(
        samples_per_question=2, max_new_tokens=6, temperature=1.0, top_p=1.0, batch_size=4, seed=0, progress=False
    )
    settings.update(kw)
    return generate_responses(model, tok, QUESTIONS, **settings)


def test_records_shape_and_fields(tiny):
    recs = _generate(tiny)
    assert [(r["question_id"], r["sample_idx"]) for r in recs] == [
        ("short", 0),
        ("short", 1),
        ("long", 0),
        ("long", 1),
        ("sys", 0),
        ("sys", 1),
    ]
    assert recs[3]["question"] == "What now?"  # sample 1 of "long" uses the second paraphrase
    assert recs[4]["system"] == "You are terse." and "You are terse." in recs[4]["prompt"]
    assert "SmolLM" in recs[0]["prompt"]  # no system given: the template's default system prompt
    assert recs[0]["prompt"].endswith("<|im_start|>assistant\n")
    for r in recs:
        assert r["finish_reason"] in ("stop", "length")
        assert 0 <= r["n_response_tokens"] <= 6
        assert r["finish_reason"] == "stop" or r["n_response_tokens"] == 6
    assert len({r["seed"] for r in recs}) == len(recs)


def test_same_seed_same_responses_other_seed_differs(tiny):
    a, b, c = _generate(tiny, seed=0), _generate(tiny, seed=0), _generate(tiny, seed=1)
    assert [r["response"] for r in a] == [r["response"] for r in b]
    assert sum(x["response"] != y["response"] for x, y in zip(a, c)) >= len(a) - 1


def test_responses_do_not_depend_on_batch_size(tiny):
    runs = [_generate(tiny, batch_size=bs, max_new_tokens=8) for bs in (1, 3, 6)]
    texts = [[r["response"] for r in run] for run in runs]
    assert texts[0] == texts[1] == texts[2]


def test_shared_prompts_prefill_once_and_sample_the_same(tiny):
    """Rows with the same prompt (the samples of a question) share one prefill row; the samples are the ones
    each row gets with its own prefill."""
    model, tok = tiny
    jobs = build_jobs(tok, QUESTIONS, 3, seed=0)  # "long" has two paraphrases: 4 distinct prompts in 9 rows
    prompts, seeds = [j.prompt_ids for j in jobs], [j.seed for j in jobs]
    prefill_rows = []
    handle = model.get_input_embeddings().register_forward_hook(
        lambda _m, args, _out: prefill_rows.append(args[0].shape[0]) if args[0].shape[1] > 1 else None
    )
    try:
        shared = generate_batch(model, prompts, seeds, 8, 1.0, 0.9, stop_ids=[2], pad_id=2, share_prompts=True)
    finally:
        handle.remove()
    alone = generate_batch(model, prompts, seeds, 8, 1.0, 0.9, stop_ids=[2], pad_id=2)
    assert prefill_rows == [len(set(prompts))] == [4]
    assert shared == alone
    assert len({tuple(ids) for ids, _ in shared}) > 4  # the samples of one prompt still differ


def test_greedy_matches_hf_generate_per_prompt(tiny):
    """Independent reference: HF greedy decoding of each unpadded prompt alone."""
    model, tok = tiny
    jobs = build_jobs(tok, QUESTIONS, 1, seed=0)
    outs = generate_batch(
        model, [j.prompt_ids for j in jobs], [j.seed for j in jobs], 8, 0.0, 1.0, stop_ids=[2], pad_id=2
    )
    for job, (ids, _reason) in zip(jobs, outs):
        ref = model.generate(
            torch.tensor([job.prompt_ids]), max_new_tokens=8, do_sample=False, eos_token_id=2, pad_token_id=2
        )[0, len(job.prompt_ids) :].tolist()
        ref = ref[: ref.index(2)] if 2 in ref else ref
        assert ids == ref


def test_sampler_matches_softmax_and_top_p():
    gen = torch.Generator().manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5]])
    n = 40000
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    tokens = sample_next_tokens(logits.expand(n, -1), u, temperature=1.0, top_p=1.0)
    freq = torch.bincount(tokens, minlength=5).double() / n
    assert torch.allclose(freq, torch.softmax(logits[0].double(), -1), atol=0.01)
    # temperature 2 flattens the distribution
    tokens = sample_next_tokens(logits.expand(n, -1), u, temperature=2.0, top_p=1.0)
    freq = torch.bincount(tokens, minlength=5).double() / n
    assert torch.allclose(freq, torch.softmax(logits[0].double() / 2, -1), atol=0.01)
    # top_p 0.7: probabilities are .56, .21, .08, .03, .13 -> nucleus {0, 1} (mass .77)
    tokens = sample_next_tokens(logits.expand(n, -1), u, temperature=1.0, top_p=0.7)
    freq = torch.bincount(tokens, minlength=5).double() / n
    p = torch.softmax(logits[0].double(), -1)
    expected = torch.zeros(5, dtype=torch.float64)
    expected[[0, 1]] = p[[0, 1]] / p[[0, 1]].sum()
    assert torch.allclose(freq, expected, atol=0.01)
    assert sample_next_tokens(logits, torch.tensor([0.99]), 0.0, 1.0).item() == 0  # greedy


def test_stop_token_ends_its_row_only(tiny):
    model, tok = tiny
    jobs = build_jobs(tok, QUESTIONS, 1, seed=0)
    prompts, seeds = [j.prompt_ids for j in jobs], [j.seed for j in jobs]
    free = generate_batch(model, prompts, seeds, 8, 1.0, 1.0, stop_ids=[2], pad_id=2)
    assert all(reason == "length" and len(ids) == 8 for ids, reason in free)
    stop_tok = free[1][0][3]  # row 1's 4th token becomes a stop token
    stopped = generate_batch(model, prompts, seeds, 8, 1.0, 1.0, stop_ids=[stop_tok], pad_id=2)
    cut = free[1][0].index(stop_tok)
    assert stopped[1] == (free[1][0][:cut], "stop")
    for (ids, reason), (ref_ids, _) in zip(stopped, free):  # other rows: same tokens up to their own stop
        if stop_tok in ref_ids:
            assert (ids, reason) == (ref_ids[: ref_ids.index(stop_tok)], "stop")
        else:
            assert (ids, reason) == (ref_ids, "length")


def test_eos_of_the_template_stops_generation(tiny):
    model, tok = tiny
    assert 2 in stop_token_ids(tok, model)  # <|im_end|>
    # Make <|im_end|> the model's favourite token: replace the last block's output by its embedding.
    eos_embedding = model.get_input_embeddings().weight[2].detach().clone()
    last = len(model.model.layers) - 1
    with edit_residual(model, {last: lambda h: eos_embedding.expand_as(h) * 50}):
        recs = _generate(tiny, temperature=0.0)
    assert all(r["finish_reason"] == "stop" and r["response"] == "" and r["n_response_tokens"] == 0 for r in recs)


def test_zero_steering_is_identical_large_steering_differs(tiny):
    model, _ = tiny
    vectors = torch.zeros(4, 64)
    plain = _generate(tiny)
    with apply_intervention(model, {"kind": "steer", "vector": "x", "layer": 1, "scale": 5.0}, vectors):
        zero = _generate(tiny)
    assert [r["response"] for r in zero] == [r["response"] for r in plain]
    vectors[1] = torch.randn(64, generator=torch.Generator().manual_seed(0))
    with apply_intervention(model, {"kind": "steer", "vector": "x", "layer": 1, "scale": 100.0}, vectors):
        steered = _generate(tiny)
    assert sum(a["response"] != b["response"] for a, b in zip(steered, plain)) >= len(plain) - 1
    assert [r["response"] for r in _generate(tiny)] == [r["response"] for r in plain]  # hooks removed


def test_ablation_hook_acts_in_every_decoding_step(tiny):
    model, _ = tiny
    direction = torch.randn(64, generator=torch.Generator().manual_seed(1))
    unit = direction / direction.norm()
    seen = []  # (sequence length, max |projection|) of every forward pass through block 2

    def record(_layer, hidden):
        seen.append((hidden.shape[1], (hidden.float() @ unit).abs().max().item()))

    vectors = torch.zeros(4, 64)
    vectors[2] = direction
    with apply_intervention(model, {"kind": "ablate", "vector": "x", "mode": "single", "layer": 2}, vectors):
        with read_residual(model, [2], record):  # registered after the ablation hook: sees its output
            _generate(tiny, max_new_tokens=5, batch_size=6)
    decode_steps = [p for length, p in seen if length == 1]
    assert len(decode_steps) == 4 and len(seen) == 5  # one prefill + 4 cached single-token steps
    assert max(p for _, p in seen) < 1e-4
    seen.clear()
    with read_residual(model, [2], record):
        _generate(tiny, max_new_tokens=5, batch_size=6)
    assert max(p for _, p in seen) > 0.1  # without the ablation the direction is present


def test_generate_script_writes_the_documented_columns(tiny_model_dir, tmp_path, rule_script):
    import json
    from pathlib import Path

    import pandas as pd
    from emlab.model.tensors import save_tensors

    repo = Path(__file__).resolve().parents[2]
    vectors = tmp_path / "dirs.safetensors"
    save_tensors(vectors, {"mean_diff": torch.randn(4, 64)})
    out = tmp_path / "gen" / "steer.parquet"
    spec = {
        "model": "base",
        "group": "steering",
        "intervention": {"kind": "steer", "vector": "ft", "layer": 1, "scale": 2.0},
    }
    settings = {
        "samples_per_question": 2,
        "max_new_tokens": 4,
        "temperature": 1.0,
        "top_p": 0.9,
        "batch_size": 8,
        "backend": "hf",
        "threads": None,
    }
    rule_script(
        "generate",
        tmp_path,
        input={
            "questions": str(repo / "data" / "questions" / "first_plot_questions.yaml"),
            "base_model": [],
            "vectors": str(vectors),
        },
        output={"out": str(out)},
        params={
            "condition": "steer__ft__L1__s2",
            "spec": spec,
            "base_model": str(tiny_model_dir),
            "generation": settings,
            "seed": 0,
            "device": "cpu",
            "dtype": "float32",
        },
    )
    df = pd.read_parquet(out)
    assert list(df.columns) == [
        "condition",
        "model",
        "intervention",
        "question_id",
        "sample_idx",
        "question",
        "system",
        "prompt",
        "response",
        "n_response_tokens",
        "finish_reason",
        "temperature",
        "top_p",
        "max_new_tokens",
        "seed",
    ]
    assert len(df) == 16 and (df["condition"] == "steer__ft__L1__s2").all() and (df["model"] == "base").all()
    assert json.loads(df["intervention"][0]) == spec["intervention"]
    for col in ("sample_idx", "n_response_tokens", "max_new_tokens", "seed"):
        assert df[col].dtype == "int64", col
    assert df["top_p"].dtype == "float64" and df["system"].isna().all()
    assert set(df["finish_reason"]) <= {"stop", "length"}


def test_the_kv_cache_is_passed_by_its_supported_name(tiny):
    """transformers 5.24 warns that `past_key_values` is removed in 5.40; sampling must not use it."""
    import warnings

    model, tok = tiny
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values", category=FutureWarning)
        out = generate_batch(model, [(1, 200, 300), (400, 500)], [1, 2], 4, 1.0, 1.0, [2], 2)
    assert len(out) == 2
