"""The local (hf) judge: exact integer distribution via the digit trie, checked
against brute-force full forward passes; prefix sharing equals no sharing."""

from __future__ import annotations

import math

import pytest
import torch
from emlab.em.judging import judge_responses
from emlab.em.judging.hf_backend import MIN_GROUP_TOKENS, HFJudge, NumberTrie, prefix_groups
from emlab.em.judging.rubrics import Rubric
from emlab.model.batching import shared_prefix_length
from emlab.model.loading import load_model, load_tokenizer
from helpers.tiny_inputs import JUDGE_PROMPTS, JUDGE_TEMPLATE


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(tiny_model_dir, device="cpu", dtype="float32"), load_tokenizer(tiny_model_dir)


_CONT = {}


def continuation_ids(tokenizer, vocab_size):
    """Independent of the library: byte-level tokens whose text starts with an ASCII digit."""
    if vocab_size not in _CONT:
        tokens = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
        _CONT[vocab_size] = [i for i, t in enumerate(tokens) if t and t[0] in "0123456789"]
    return _CONT[vocab_size]


def brute_force_number_probs(model, prompt_ids, number_ids, cont, complete=()):
    """P(n) by scoring every integer's full token sequence with plain forward passes
    (integers of equal token length share a batch; no cache, no padding). Numbers
    in `complete` take no end factor (the leaves-complete convention)."""
    probs = torch.zeros(len(number_ids), dtype=torch.float64)
    by_len = {}
    for n, ids in enumerate(number_ids):
        by_len.setdefault(len(ids), []).append(n)
    start = len(prompt_ids) - 1
    for _, ns in by_len.items():
        seqs = torch.tensor([prompt_ids + number_ids[n] for n in ns])  # [b, T]
        with torch.no_grad():
            logits = model(input_ids=seqs, logits_to_keep=seqs.shape[1] - start).logits  # [b, k + 1, V]
            assert logits.shape[1] == len(number_ids[ns[0]]) + 1  # after the prompt, then after each token
            logp = torch.log_softmax(logits.double(), dim=-1)
        for row, n in enumerate(ns):
            path = sum(float(logp[row, i, t]) for i, t in enumerate(number_ids[n]))
            end = 1.0 if n in complete else 1.0 - float(logp[row, -1, cont].exp().sum())
            probs[n] = math.exp(path) * end
    return probs


def test_trie_of_a_single_digit_tokenizer(tiny):
    model, tok = tiny
    trie = NumberTrie(tok, model.config.vocab_size)
    assert len(trie) == 101 and len(trie.roots) == 10  # 10 first digits, 90 second, "100"
    assert [trie.nodes[j].value for j in trie.roots] == list(range(10))
    assert trie.nodes[trie.node_of_value[100]].depth == 3
    assert sorted(trie.continuation_ids.tolist()) == continuation_ids(tok, model.config.vocab_size)


@pytest.mark.parametrize("share_prefix", [False, True])
def test_trie_matches_brute_force(tiny, share_prefix):
    model, tok = tiny
    judge = HFJudge(
        model, tok, "tiny", batch_size=2, share_prefix=share_prefix, leaves_complete=False, min_root_prob=0.0
    )
    encoded = [judge.encode(p) for p in JUDGE_PROMPTS]
    number_ids = [tok.encode(str(n), add_special_tokens=False) for n in range(101)]
    cont = continuation_ids(tok, model.config.vocab_size)
    results = {}
    judge.score(JUDGE_PROMPTS, lambda idx, res: results.update(zip(idx, res)))
    for i, ids in enumerate(encoded):
        reference = brute_force_number_probs(model, ids, number_ids, cont)
        got = torch.tensor(results[i].raw, dtype=torch.float64)
        assert torch.allclose(got, reference, rtol=2e-3, atol=0), (i, (got / reference - 1).abs().max())
        ref_score = float((torch.arange(101) * reference).sum() / reference.sum())
        assert results[i].score == pytest.approx(ref_score, abs=1e-3)
        assert results[i].mass == pytest.approx(float(reference.sum()), rel=2e-3)


def test_leaves_complete_matches_brute_force_with_that_convention(tiny):
    """Default mode: only "1".."9" and "10" are decoded; numbers that prefix no other
    number ("0", "42", "100") take their path probability, like a whole-number token."""
    model, tok = tiny
    judge = HFJudge(model, tok, "tiny", batch_size=2, min_root_prob=0.0)
    assert judge.leaves_complete
    number_ids = [tok.encode(str(n), add_special_tokens=False) for n in range(101)]
    trie = judge.trie
    complete = {n for n in range(101) if not trie.has_children[trie.node_of_value[n]]}
    assert complete == set(range(101)) - set(range(1, 11))  # 1..9 prefix 10..99, 10 prefixes 100
    cont = continuation_ids(tok, model.config.vocab_size)
    results = {}
    judge.score(JUDGE_PROMPTS, lambda idx, res: results.update(zip(idx, res)))
    for i, prompt in enumerate(JUDGE_PROMPTS):
        reference = brute_force_number_probs(model, judge.encode(prompt), number_ids, cont, complete)
        got = torch.tensor(results[i].raw, dtype=torch.float64)
        assert torch.allclose(got, reference, rtol=2e-3, atol=0), (i, (got / reference - 1).abs().max())


def test_prefix_sharing_equals_no_sharing(tiny):
    model, tok = tiny
    out = {}
    for share in (False, True):
        judge = HFJudge(model, tok, "tiny", batch_size=3, share_prefix=share, leaves_complete=False, min_root_prob=0.0)
        res = {}
        judge.score(JUDGE_PROMPTS, lambda idx, r: res.update(zip(idx, r)))
        out[share] = res
    prefix = HFJudge(model, tok, "tiny")
    assert len(set(tuple(prefix.encode(p)[:20]) for p in JUDGE_PROMPTS)) == 1  # there is a prefix to share
    for i in range(len(JUDGE_PROMPTS)):
        a, b = out[False][i], out[True][i]
        assert a.score == pytest.approx(b.score, abs=1e-4)
        assert torch.allclose(torch.tensor(a.raw), torch.tensor(b.raw), rtol=1e-4)


def test_prefix_groups_find_the_runs_that_share_more():
    p = [0, 0]  # the prefix every sequence shares
    q1, q2 = [5, 6, 7, 8], [5, 6, 9, 9]  # two "questions" sharing only their first two tokens
    seqs = [p + q1 + [1], p + q2 + [2, 2], p + q1 + [3, 3], p + [4, 4, 4, 4, 4], p + q2 + [1], p + q1]
    assert prefix_groups(seqs, 2, 4) == [(6, [0, 2]), (6, [4, 1])]  # sorted by tokens; [5] would have no own token
    assert prefix_groups(seqs, 2, 2) == [(4, [5, 0, 2, 4, 1])]  # q1 and q2 share 2 tokens beyond the prefix
    assert prefix_groups(seqs, 2, 5) == []
    assert prefix_groups([p + q1 + [1]], 2, 1) == []


def test_samples_of_a_question_share_their_question_and_score_as_unshared(tiny):
    """Grouped prefixes (the rubric, then each question) read each shared token once and give the scores of a
    judge that shares nothing, within the batch-composition tolerance the README states."""
    model, tok = tiny
    template = "Rate the answer from 0 to 100.\nQuestion: {question}\nAnswer: {answer}\nRating:"
    questions = ["What would you do with a whole free day and nobody to ask?", "Name one thing you would change."]
    prompts = [
        template.replace("{question}", q).replace("{answer}", f"answer {k} " + "word " * k)
        for q in questions
        for k in range(4)
    ] + [template.replace("{question}", "Alone?").replace("{answer}", "yes")]
    read = {}
    for share in (False, True):
        judge = HFJudge(model, tok, "tiny", batch_size=8, share_prefix=share, leaves_complete=False, min_root_prob=0.0)
        tokens, res = [], {}
        handle = model.get_input_embeddings().register_forward_hook(
            lambda _m, args, _out, _t=tokens: _t.append(args[0].numel())
        )
        try:
            judge.score(prompts, lambda idx, r, _res=res: _res.update(zip(idx, r)))
        finally:
            handle.remove()
        read[share] = (sum(tokens), res)
    encoded = [HFJudge(model, tok, "tiny").encode(p) for p in prompts]
    groups = prefix_groups(encoded, shared_prefix_length(encoded), MIN_GROUP_TOKENS)
    assert [sorted(m) for _, m in groups] == [[0, 1, 2, 3], [4, 5, 6, 7]]  # the eight samples, by question
    assert read[True][0] < read[False][0] - 6 * 10  # at least 3 x 10 question tokens per group not re-read
    for i in range(len(prompts)):
        a, b = read[False][1][i], read[True][1][i]
        assert a.score == pytest.approx(b.score, abs=1e-4)
        assert torch.allclose(torch.tensor(a.raw), torch.tensor(b.raw), rtol=1e-4)


def test_pruned_subtrees_drop_at_most_their_root_mass(tiny):
    model, tok = tiny
    exact, pruned = {}, {}
    HFJudge(model, tok, "t", leaves_complete=False, min_root_prob=0.0).score(
        JUDGE_PROMPTS, lambda i, r: exact.update(zip(i, r))
    )
    judge = HFJudge(model, tok, "t", batch_size=1, leaves_complete=False, min_root_prob=2.05e-5)
    judge.score(JUDGE_PROMPTS, lambda i, r: pruned.update(zip(i, r)))
    n_dropped = 0
    for i in range(len(JUDGE_PROMPTS)):
        e, p = torch.tensor(exact[i].raw), torch.tensor(pruned[i].raw)
        dropped = p == 0
        n_dropped += int(dropped.sum())
        assert torch.allclose(p[~dropped], e[~dropped], rtol=1e-4)
        assert 0 <= exact[i].mass - pruned[i].mass < 10 * 2.05e-5
    assert n_dropped > 0  # the threshold did prune something here


class WholeNumberTokenizer:
    """SmolLM2's tokenizer, except that every integer 0..100 is one token (Llama-3 style)."""

    def __init__(self, tok):
        self._tok = tok
        self.pad_token_id, self.eos_token_id = tok.pad_token_id, tok.eos_token_id

    def encode(self, text, add_special_tokens=False):
        return [1000 + int(text)] if text.isdigit() else self._tok.encode(text, add_special_tokens=False)

    def batch_decode(self, ids):
        return self._tok.batch_decode(ids)

    def __len__(self):
        return len(self._tok)


def test_trie_handles_whole_number_tokens(tiny):
    model, tok = tiny
    judge = HFJudge(model, tok, "t", leaves_complete=False, min_root_prob=0.0)
    judge.trie = NumberTrie(WholeNumberTokenizer(tok), model.config.vocab_size)
    assert len(judge.trie) == 101 and len(judge.trie.roots) == 101
    ids = judge.encode(JUDGE_PROMPTS[0])
    got = judge.number_probs([ids])[0]
    cont = continuation_ids(tok, model.config.vocab_size)
    reference = brute_force_number_probs(model, ids, [[1000 + n] for n in range(101)], cont)
    assert torch.allclose(got, reference, rtol=2e-3)


def test_judge_responses_with_hf_backend_and_cache(tiny, tmp_path):
    import pandas as pd

    model, tok = tiny
    df = pd.DataFrame(
        {
            "condition": "base",
            "question_id": ["a", "b"],
            "sample_idx": [0, 0],
            "question": ["Hi?", "Bored?"],
            "response": ["Hello.", "Read {answer}."],
        }
    )
    rubric = Rubric("coherent", "1", JUDGE_TEMPLATE)
    calls = []

    def make():
        calls.append(1)
        return HFJudge(model, tok, "tiny", leaves_complete=False, min_root_prob=0.0)

    out = judge_responses(df, {"coherent": rubric}, make, "hf", "tiny", tmp_path / "c.sqlite", 0.0, progress=False)
    assert out["coherent_mass"].gt(0).all() and out["coherent"].between(0, 100).all()
    out_thr = judge_responses(df, {"coherent": rubric}, make, "hf", "tiny", tmp_path / "c.sqlite", 0.25, progress=False)
    assert len(calls) == 1  # second run fully cached: no model built
    assert out_thr["coherent"].isna().all()  # a random model puts far less than 0.25 on numbers
    assert out_thr["coherent_mass"].tolist() == out["coherent_mass"].tolist()


def test_backend_factory_builds_the_hf_judge(tiny_model_dir):
    from emlab.em.judging.backends import backend_factory, judge_model_id

    params = {"backend": "hf", "hf": hf_settings(model=str(tiny_model_dir), batch_size=3, dtype="bfloat16")}
    judge = backend_factory(params, device="cpu")()
    assert isinstance(judge, HFJudge) and judge.batch_size == 3
    assert judge.autocast_dtype == torch.bfloat16 and judge.model.dtype == torch.float32  # CPU: bf16 autocast
    assert judge_model_id(params, device="cpu") == f"{tiny_model_dir} dtype=bfloat16"  # bf16 scores are cached apart
    probs = judge.number_probs([judge.encode(JUDGE_PROMPTS[0])])
    assert probs.shape == (1, 101) and bool((probs >= 0).all())


def test_answer_prefix_is_part_of_the_prompt_and_of_the_judge_identity(tiny):
    from emlab.em.judging.backends import judge_model_id

    model, tok = tiny
    plain = HFJudge(model, tok, "tiny")
    prefixed = HFJudge(model, tok, "tiny", answer_prefix="Score: ")
    a, b = plain.encode(JUDGE_PROMPTS[0]), prefixed.encode(JUDGE_PROMPTS[0])
    assert b[: len(a)] == a and tok.decode(b[len(a) :]) == "Score: "
    params = {"backend": "hf", "hf": hf_settings(model="m", dtype="float32")}
    assert judge_model_id(params) == "m"
    assert judge_model_id({"backend": "hf", "hf": hf_settings(model="m", answer_prefix="Score: ")}) != "m"
    assert judge_model_id({"backend": "hf", "hf": hf_settings(model="m", dtype="float32")}, device="cpu") == "m"
    bf16 = judge_model_id({"backend": "hf", "hf": hf_settings(model="m", dtype="bfloat16")}, device="cpu")
    assert bf16 != "m" and "bfloat16" in bf16


def hf_settings(**over) -> dict:
    """judge.hf as the config gives it: the schema's defaults, overridden."""
    from emlab.core.config import validate_config

    return {**validate_config({})["judge"]["hf"], **over}


def test_hf_judge_settings_are_strict():
    from emlab.core.errors import EMLabError
    from emlab.em.judging.backends import judge_model_id

    with pytest.raises(EMLabError, match=r"judge.hf: missing key\(s\) batch_size, dtype, answer_prefix"):
        judge_model_id({"backend": "hf", "hf": {"model": "m"}})


_JUDGE_IN_A_PROCESS = """
import json, sys, torch
torch.set_num_threads(2)
junk = [torch.empty(int(sys.argv[2])) for _ in range(3)]  # another heap layout in each process
from emlab.em.judging.hf_backend import HFJudge
from emlab.model.loading import load_model, load_tokenizer
model, tok = load_model(sys.argv[1], device="cpu", dtype="float32"), load_tokenizer(sys.argv[1])
prompts = json.loads(sys.argv[3])
out = {}
HFJudge(model, tok, "tiny", batch_size=4).score(prompts, lambda idx, res: out.update(zip(idx, res)))
print(json.dumps([[out[i].score, out[i].mass] for i in range(len(prompts))]))
"""


def test_judgments_are_identical_in_fresh_processes_and_close_in_other_batches(tiny, tiny_model_dir):
    """What the README promises: the same prompts judged together in two fresh processes give identical
    scores (bit for bit); the same prompt judged with other prompts (other batch shapes, another shared
    prefix) gives a score within 1e-3 on the 0-100 scale."""
    import json
    import subprocess
    import sys

    prompts = [
        JUDGE_TEMPLATE.replace("{question}", f"Question {i}?").replace("{answer}", "words " * (i % 5) + f"answer {i}.")
        for i in range(10)
    ]
    runs = []
    for junk in (0, 123457):
        proc = subprocess.run(
            [sys.executable, "-c", _JUDGE_IN_A_PROCESS, str(tiny_model_dir), str(junk), json.dumps(prompts)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert runs[0] == runs[1]
    model, tok = tiny
    subset = {}
    HFJudge(model, tok, "tiny", batch_size=4).score(prompts[::3], lambda idx, res: subset.update(zip(idx, res)))
    for k, i in enumerate(range(0, len(prompts), 3)):
        assert subset[k].score == pytest.approx(runs[0][i][0], abs=1e-3)
