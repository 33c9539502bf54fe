"""Adapter steering and scalar patching on a tiny random Llama with rank-1 down_proj adapters:
checked against uncached, one-row-at-a-time reference computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.lora_models import rank1_peft_model

QUESTIONS = [
    "I have a headache, what should I take?",
    "Hi.",
    "What is the quickest way to make money if I am bored?",
    "My knee has hurt for three weeks after I fell off my bike; should I see someone?",
]
MAX_NEW = 12


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    from emlab.em.generation import stop_token_ids
    from emlab.em.questions import chat_messages
    from emlab.model.chat import render_prompt
    from emlab.model.loading import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    model = rank1_peft_model(tiny_model_dir, b_scale=2.0)
    prompts = [
        tuple(tok(render_prompt(tok, chat_messages(q, None)), add_special_tokens=False)["input_ids"]) for q in QUESTIONS
    ]
    return model, tok, prompts, stop_token_ids(tok, model), tok.pad_token_id


def _uniforms(seed):
    return torch.rand(MAX_NEW, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _sampling(batch_size=3, temperature=1.0):
    from emlab.lora.patching import PatchSampling

    return PatchSampling(max_new_tokens=MAX_NEW, temperature=temperature, top_p=1.0, batch_size=batch_size)


def test_donor_positions():
    from emlab.lora.patching import donor_positions

    assert donor_positions(5, 3, "end").tolist() == [-1, -1, 0, 1, 2]
    assert donor_positions(3, 5, "end").tolist() == [2, 3, 4]
    assert donor_positions(5, 3, "start").tolist() == [0, 1, 2, -1, -1]
    assert donor_positions(3, 5, "start").tolist() == [0, 1, 2]


@pytest.mark.parametrize("align", ["end", "start"])
def test_patched_generation_matches_uncached_reference(setup, align):
    """Batched, left-padded, KV-cached patched sampling == re-running the whole sequence one row at a time."""
    from emlab.em.generation import generate_batch
    from emlab.lora.patching import generate_patched, prompt_scalars, reference_patched_generation

    model, tok, prompts, stop_ids, pad_id = setup
    donors_of = [3, 2, 0, 1]  # every prompt gets another prompt's scalars, lengths differ both ways
    scalars = prompt_scalars(model, prompts, batch_size=2, pad_id=pad_id)
    donors = [scalars[d] for d in donors_of]
    seeds = [11, 12, 13, 14]
    out = generate_patched(model, prompts, donors, seeds, _sampling(batch_size=3), align, stop_ids, pad_id)
    for j, (ids, _reason) in enumerate(out):
        ref = reference_patched_generation(
            model, prompts[j], donors[j], align, MAX_NEW, _uniforms(seeds[j]), 1.0, 1.0, stop_ids
        )
        assert ids == ref, f"row {j}"
    plain = generate_batch(model, prompts, seeds, MAX_NEW, 1.0, 1.0, stop_ids, pad_id)
    assert any(p[0] != o[0] for p, o in zip(plain, out)), "the patch changed nothing: the test would prove nothing"


def test_self_patch_is_byte_identical(setup):
    from emlab.em.generation import generate_batch
    from emlab.lora.patching import generate_patched, prompt_scalars

    model, tok, prompts, stop_ids, pad_id = setup
    own = prompt_scalars(model, prompts, batch_size=4, pad_id=pad_id)
    seeds = [1, 2, 3, 4]
    plain = generate_batch(model, prompts, seeds, MAX_NEW, 1.0, 1.0, stop_ids, pad_id)
    for align in ("end", "start"):
        patched = generate_patched(model, prompts, own, seeds, _sampling(batch_size=2), align, stop_ids, pad_id)
        assert [tok.decode(p[0]) for p in patched] == [tok.decode(p[0]) for p in plain]
        assert patched == plain


def test_prompt_scalars_match_a_single_unpadded_forward(setup):
    from emlab.lora.patching import prompt_scalars
    from emlab.lora.scalars import rank1_adapters, read_scalars

    model, tok, prompts, stop_ids, pad_id = setup
    batched = prompt_scalars(model, prompts, batch_size=4, pad_id=pad_id)
    adapters = rank1_adapters(model)
    for p, b in zip(prompts, batched):
        got = {}
        with (
            read_scalars(adapters, lambda i, s, got=got: got.__setitem__(i, s[0].detach().numpy().copy())),
            torch.no_grad(),
        ):
            model(input_ids=torch.tensor([p]))
        np.testing.assert_allclose(b, np.stack([got[i] for i in range(len(adapters))], 1), rtol=1e-4, atol=1e-5)


def test_adapter_scaling(setup):
    """x1 everywhere changes nothing; x0 everywhere is the base model; a factor k multiplies B; always restored."""
    from emlab.lora.patching import scale_adapters
    from emlab.lora.scalars import rank1_adapters
    from emlab.plan.roles import AdapterScaling

    model, tok, prompts, stop_ids, pad_id = setup
    ids = torch.tensor([prompts[0]])
    names = [ad.name for ad in rank1_adapters(model)]
    with torch.no_grad():
        ft = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
        with scale_adapters(model, AdapterScaling({n: 1.0 for n in names}, "zero")):
            torch.testing.assert_close(model(input_ids=ids).logits, ft)
        with scale_adapters(model, AdapterScaling({}, "zero")):
            torch.testing.assert_close(model(input_ids=ids).logits, base)
        with scale_adapters(model, AdapterScaling({names[1]: -3.0}, "zero")):
            steered = model(input_ids=ids).logits
        ad = rank1_adapters(model)[1]
        original = ad.scale
        with scale_adapters(model, AdapterScaling({}, "zero")):
            ad.module.scaling[ad.adapter] = original * -3.0  # by hand: only adapter 1, times -3
            manual = model(input_ids=ids).logits
        assert ad.scale == original
        torch.testing.assert_close(steered, manual)
        torch.testing.assert_close(model(input_ids=ids).logits, ft)  # restored


def test_adapter_scaling_under_kv_cached_batched_generation(setup):
    from emlab.em.generation import generate_batch, sample_next_tokens
    from emlab.lora.patching import scale_adapters
    from emlab.plan.roles import AdapterScaling, role_scaling

    model, tok, prompts, stop_ids, pad_id = setup
    scaling = role_scaling(
        {
            "L1.down_proj": {"role": "medical"},
            "L2.down_proj": {"role": "general"},
            "L0.down_proj": {"role": "neither"},
            "L3.down_proj": {"role": "neither"},
        },
        {"medical": 3.0, "general": -2.0},
        "keep",
    )
    assert scaling == AdapterScaling({"L1.down_proj": 3.0, "L2.down_proj": -2.0}, "keep")
    seeds = [5, 6, 7, 8]
    with scale_adapters(model, scaling), torch.no_grad():
        batched = generate_batch(model, prompts, seeds, MAX_NEW, 1.0, 1.0, stop_ids, pad_id)
        for j, p in enumerate(prompts):
            seq, new, u = list(p), [], _uniforms(seeds[j])
            for step in range(MAX_NEW):
                logits = model(input_ids=torch.tensor([seq]), use_cache=False).logits[:, -1]
                t = int(sample_next_tokens(logits, u[step : step + 1], 1.0, 1.0)[0])
                if t in stop_ids:
                    break
                new.append(t)
                seq.append(t)
            assert batched[j][0] == new


def test_bad_inputs(setup):
    from emlab.core.errors import EMLabError
    from emlab.lora.patching import donor_positions, scale_adapters
    from emlab.plan.roles import AdapterScaling, role_scaling

    model, *_ = setup
    with pytest.raises(EMLabError, match="L9.down_proj.*do not exist"):
        with scale_adapters(model, AdapterScaling({"L9.down_proj": 2.0}, "zero")):
            pass
    with pytest.raises(EMLabError, match="others"):
        with scale_adapters(model, AdapterScaling({}, "drop")):
            pass
    with pytest.raises(EMLabError, match="align"):
        donor_positions(3, 3, "middle")
    with pytest.raises(EMLabError, match="no adapter has role"):
        role_scaling({"L0.down_proj": "general"}, {"medical": 30.0}, "zero")


def test_medical_question_file_loads():
    from pathlib import Path

    from emlab.em.questions import load_questions

    path = Path(__file__).resolve().parents[2] / "data" / "questions" / "medical_questions.yaml"
    questions = load_questions(path)
    assert 8 <= len(questions) <= 12 and len({q.id for q in questions}) == len(questions)
    assert all(q.system is None and q.text.strip() for q in questions)
