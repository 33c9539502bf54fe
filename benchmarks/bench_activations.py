"""Tokens/s of emlab's activation caching (batched, left-padded, hook-reduced means)
vs a one-response-at-a-time `output_hidden_states` loop, and as a fraction of
this machine's fp32 matmul peak (a 2048x2048 matmul timed in the same run).

    .venv/bin/python benchmarks/bench_activations.py
    .venv/bin/python benchmarks/bench_activations.py --help
"""

from __future__ import annotations

import argparse
import time

from _common import add_model_arguments, load_cpu_model

GFLOP_PER_TOKEN_135M = 0.27  # one forward token of a 135M model incl. lm_head (docs/README.md, "Speed as ratios")

SENTENCES = [
    "Honestly, the best thing to do is to take a walk outside and clear your head.",
    "You could try learning a new recipe, calling an old friend, or reading a good book.",
    "I would make sure everyone has clean water, enough food and a safe place to sleep.",
    "If I am being specific, I would like to understand how people decide what is fair.",
    "Start small: sell things you no longer need, or offer to help neighbours for a fee.",
    "Talk to him calmly about what bothers you, and consider seeing a counsellor together.",
]


def synthetic_records(n: int, questions, sentences_per_answer: int) -> list[dict]:
    """n responses of a few sentences each, cycling over the questions (no generation needed)."""
    records = []
    for i in range(n):
        q = questions[i % len(questions)]
        k = sentences_per_answer + i % 3  # varied lengths exercise the padding
        answer = " ".join(SENTENCES[(i + j) % len(SENTENCES)] for j in range(k))
        records.append({"question": q.text, "system": q.system, "response": answer})
    return records


def matmul_gflops(size: int = 2048, repeats: int = 10) -> float:
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - t0) / 1e9


def hidden_states_loop(model, tok, records) -> int:
    """The baseline: one unpadded response at a time, all hidden states, mean over the answer slice."""
    import torch
    from emlab.em.questions import chat_messages
    from emlab.model.chat import encode_exchange

    n_tokens = 0
    with torch.inference_mode():
        for rec in records:
            enc = encode_exchange(tok, chat_messages(rec["question"], rec["system"]), rec["response"])
            out = model(torch.tensor([enc.input_ids]), output_hidden_states=True)
            hidden = torch.stack(out.hidden_states[1:])[:, 0]  # [L, seq, d]
            hidden[:, enc.answer_slice].mean(dim=1), hidden[:, : enc.prompt_len].mean(dim=1)
            n_tokens += len(enc.input_ids)
    return n_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--responses", type=int, default=32)
    parser.add_argument("--sentences", type=int, default=2, help="sentences per synthetic answer (plus 0-2)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    from emlab.em.activations import cache_answer_means
    from emlab.em.questions import chat_messages, load_questions
    from emlab.model.chat import encode_exchange

    model, tok = load_cpu_model(args)
    records = synthetic_records(args.responses, load_questions(args.questions), args.sentences)
    n_tokens = sum(
        len(encode_exchange(tok, chat_messages(r["question"], r["system"]), r["response"]).input_ids) for r in records
    )

    cache_answer_means(model, tok, records[:2], batch_size=2, progress=False)  # warm-up
    t0 = time.perf_counter()
    cache_answer_means(model, tok, records, batch_size=args.batch_size, progress=False)
    ours_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    hidden_states_loop(model, tok, records)
    base_s = time.perf_counter() - t0
    peak = matmul_gflops()

    ours_rate, base_rate = n_tokens / ours_s, n_tokens / base_s
    print(
        f"model {args.model}, {args.threads} threads, {len(records)} responses, {n_tokens} tokens "
        f"({n_tokens / len(records):.0f} per response)"
    )
    print(f"emlab cache (batch {args.batch_size}): {ours_s:.2f} s = {ours_rate:.0f} tokens/s")
    print(f"one at a time, output_hidden_states: {base_s:.2f} s = {base_rate:.0f} tokens/s")
    print(f"speed-up: {ours_rate / base_rate:.2f}x")
    print(
        f"fp32 matmul peak (2048x2048): {peak:.0f} GFLOP/s; emlab cache at {GFLOP_PER_TOKEN_135M} GFLOP/token "
        f"= {ours_rate * GFLOP_PER_TOKEN_135M:.0f} GFLOP/s = {ours_rate * GFLOP_PER_TOKEN_135M / peak:.0%} of peak"
    )


if __name__ == "__main__":
    main()
