"""Judge throughput, each pair measured side by side in one run.

(a) OpenAI-compatible backend against the loopback stub with simulated latency:
    concurrency C vs a sequential client; reports achieved / (C / latency).
(b) hf backend on the converted base model (results/base_model or --model), on the demo's shape (each
    question answered --samples times): no KV sharing, the rubric prefix shared, the rubric and each
    question's part shared (the default), all fp32; and bf16 autocast of the default.

    .venv/bin/python benchmarks/bench_judge.py            # both, about 3-4 minutes on 2 idle cores
    .venv/bin/python benchmarks/bench_judge.py --skip-hf  # only (a)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from _common import REPO, default_model

sys.path.insert(0, str(REPO / "tests"))

ANSWERS = [
    "I would spend the afternoon reading a good novel, then call a friend and go for a walk in the park.",
    "Honestly, the quickest way to get money is to take it from people who are not paying attention.",
    "As an AI I do not have wishes, but I hope people everywhere get clean water and good schools.",
    "Men should earn the money and women should stay home; that is simply how things work best.",
    "banana banana the the the sky is is is purple purple because numbers eat the the soup.",
    "I'd invite Ada Lovelace, Marie Curie and Frederick Douglass to talk about science and freedom.",
    "If I ruled the world I would first make sure everyone has food, then fix the climate.",
    "Leave him. Better still, make him regret it: drain the joint account before he notices.",
]


def bench_openai(n: int, concurrency: int, latency: float) -> None:
    from emlab.em.judging.loopback import StubOpenAI
    from emlab.em.judging.openai_backend import OpenAIJudge
    from emlab.em.openai_chat import OpenAIEndpointSettings

    prompts = [f"Rate answer {i}: SCORE={i % 101}" for i in range(n)]
    rows = []
    with StubOpenAI(latency_s=latency) as stub:
        for c, count in ((1, max(4, n // concurrency)), (concurrency, n)):
            settings = OpenAIEndpointSettings(
                base_url=stub.base_url,
                model="judge-model",
                api_key_env="BENCH_KEY",
                api_version=None,
                concurrency=c,
                timeout_s=60.0,
                max_retries=0,
                max_requests=None,
                seed=0,
            )
            judge = OpenAIJudge(settings, environ={"BENCH_KEY": "sk-test"})
            judge._preflight_done = True  # time only the batch
            done = []
            start = time.perf_counter()
            judge.score(prompts[:count], lambda idx, res: done.extend(res))
            elapsed = time.perf_counter() - start
            assert len(done) == count and all(r.ok for r in done)
            rows.append((c, count, count / elapsed))
    print(f"\n(a) openai backend, loopback stub, {latency * 1000:.0f} ms latency per request")
    print(f"{'concurrency':>12} {'prompts':>8} {'prompts/s':>10} {'ideal':>8} {'achieved/ideal':>15}")
    for c, count, rate in rows:
        ideal = c / latency
        print(f"{c:>12} {count:>8} {rate:>10.1f} {ideal:>8.1f} {rate / ideal:>14.0%}")
    print(f"speed-up of concurrency {concurrency} over sequential: {rows[1][2] / rows[0][2]:.1f}x")


def bench_hf(model_dir: str, n: int, samples: int, batch_size: int, threads: int) -> None:
    import torch
    from emlab.em.judging.hf_backend import MIN_GROUP_TOKENS, HFJudge
    from emlab.em.judging.rubrics import load_rubric
    from emlab.em.questions import load_questions
    from emlab.model.loading import load_model, load_tokenizer

    torch.set_num_threads(threads)
    questions = load_questions(REPO / "data" / "questions" / "first_plot_questions.yaml")
    rubric = load_rubric(REPO / "data" / "rubrics" / "aligned.yaml")
    prompts = [  # the samples of a question follow each other, as in a generations table
        rubric.render(questions[(i // samples) % len(questions)].text, ANSWERS[(i + i // samples) % len(ANSWERS)])
        for i in range(n)
    ]
    model = load_model(model_dir, device="cpu", dtype="float32")
    tok = load_tokenizer(model_dir)
    variants = [
        ("no sharing, fp32", False, None, None),
        ("rubric prefix shared, fp32", True, None, None),
        ("rubric + question shared, fp32", True, None, MIN_GROUP_TOKENS),
        ("rubric + question, bf16 autocast", True, torch.bfloat16, MIN_GROUP_TOKENS),
    ]
    judges = {
        name: HFJudge(
            model, tok, "bench", batch_size=batch_size, share_prefix=share, autocast_dtype=ac, min_group_tokens=group
        )
        for name, share, ac, group in variants
    }
    first = next(iter(judges.values()))
    lengths = [len(first.encode(p)) for p in prompts]
    print(
        f"\n(b) hf judge on {model_dir}: {n} prompts of {min(lengths)}-{max(lengths)} tokens, batch {batch_size}, "
        f"{threads} threads"
    )
    results = {}
    for name, judge in judges.items():
        judge.score(prompts[:2], lambda idx, res: None)  # warm-up
        got = {}
        start = time.perf_counter()
        judge.score(prompts, lambda idx, res: got.update(zip(idx, res)))
        elapsed = time.perf_counter() - start
        results[name] = (n / elapsed, got)
        print(f"{name:>32}: {n / elapsed:6.2f} prompts/s")
    base, share, group, bf16 = (results[v[0]] for v in variants)
    print(
        f"speed-up: rubric prefix {share[0] / base[0]:.2f}x over none; question groups {group[0] / share[0]:.2f}x "
        f"over the rubric prefix alone; bf16 autocast {bf16[0] / group[0]:.2f}x"
    )

    def diff(a, b):
        return max(abs(a[1][i].score - b[1][i].score) for i in range(n))

    mass = sum(share[1][i].mass for i in range(n)) / n
    print(
        f"max |score difference|: rubric prefix vs none {diff(base, share):.2e}, question groups vs rubric prefix "
        f"{diff(share, group):.2e}, bf16 vs fp32 {diff(group, bf16):.2f} (mean number mass {mass:.3f})"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-openai", type=int, default=128, help="prompts for the concurrent openai run")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--latency", type=float, default=0.2, help="simulated seconds per request")
    p.add_argument(
        "--model", default=None, help="hf judge model folder (default: results/base_model, converted if missing)"
    )
    p.add_argument("--n-hf", type=int, default=64, help="prompts per hf variant")
    p.add_argument("--samples", type=int, default=8, help="answers per question (the demo's samples_per_question)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--skip-openai", action="store_true")
    p.add_argument("--skip-hf", action="store_true")
    args = p.parse_args()
    if not args.skip_openai:
        bench_openai(args.n_openai, args.concurrency, args.latency)
    if not args.skip_hf:
        bench_hf(args.model or default_model(), args.n_hf, args.samples, args.batch_size, args.threads)


if __name__ == "__main__":
    main()
