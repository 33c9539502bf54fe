"""Tokens/s of emlab's batched KV-cached sampling vs one-sample-at-a-time `model.generate`.

Both variants run in one process on the same model with the same settings
(temperature, top_p, max_new_tokens); the ratio is printed. Then the batched
path with each distinct prompt read once (the samples of a question share one
prefill row, the default) against one prefill row per sample, side by side,
with how many responses are identical. Also times the batched path under bf16
autocast (CPU) when --bf16 is given.

    .venv/bin/python benchmarks/bench_generation.py            # demo setting: 8 questions x 4 samples x 40 tokens
    .venv/bin/python benchmarks/bench_generation.py --help
"""

from __future__ import annotations

import argparse
import time

from _common import add_model_arguments, load_cpu_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--samples", type=int, default=4, help="samples per question (batched variant)")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument(
        "--baseline-sequences", type=int, default=4, help="sequences for the one-at-a-time baseline (it is slow)"
    )
    parser.add_argument("--bf16", action="store_true", help="also time the batched path under bf16 autocast")
    args = parser.parse_args()

    import torch
    from emlab.em.generation import build_jobs, generate_batch, generate_responses, stop_token_ids
    from emlab.em.questions import load_questions

    model, tok = load_cpu_model(args)
    questions = load_questions(args.questions)
    settings = dict(
        samples_per_question=args.samples,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        batch_size=args.batch_size,
        seed=0,
        progress=False,
    )

    # warm-up (first calls allocate and pick kernels)
    generate_responses(
        model,
        tok,
        questions[:1],
        samples_per_question=2,
        max_new_tokens=4,
        batch_size=2,
        temperature=1.0,
        top_p=1.0,
        seed=0,
        progress=False,
    )

    t0 = time.perf_counter()
    records = generate_responses(model, tok, questions, **settings)
    batched_s = time.perf_counter() - t0
    batched_tokens = sum(r["n_response_tokens"] for r in records)
    batched_rate = batched_tokens / batched_s

    jobs = build_jobs(tok, questions, args.samples, seed=0)[:: max(1, args.samples)][: args.baseline_sequences]
    torch.manual_seed(0)
    base_tokens, t0 = 0, time.perf_counter()
    with torch.inference_mode():
        for job in jobs:
            ids = torch.tensor([job.prompt_ids])
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=args.temperature > 0,
                temperature=args.temperature or None,
                top_p=args.top_p,
                top_k=0,
                max_new_tokens=args.max_new_tokens,
                pad_token_id=tok.pad_token_id,
            )
            new = out[0, ids.shape[1] :].tolist()
            base_tokens += len([t for t in new if t != tok.eos_token_id])
    base_s = time.perf_counter() - t0
    base_rate = base_tokens / base_s

    n = len(records)
    print(f"model {args.model}, {args.threads} threads, temperature {args.temperature}, top_p {args.top_p}")
    print(
        f"batched (emlab, batch {args.batch_size}): {n} responses, {batched_tokens} tokens in "
        f"{batched_s:.1f} s = {batched_rate:.1f} tokens/s"
    )
    print(
        f"one at a time (model.generate): {len(jobs)} responses, {base_tokens} tokens in "
        f"{base_s:.1f} s = {base_rate:.1f} tokens/s"
    )
    print(f"speed-up: {batched_rate / base_rate:.1f}x")

    all_jobs = build_jobs(tok, questions, args.samples, seed=0)[: args.batch_size]
    prompts, seeds = [j.prompt_ids for j in all_jobs], [j.seed for j in all_jobs]
    stops, pad = stop_token_ids(tok, model), tok.pad_token_id
    timed = {}
    for share in (False, True, False, True):  # interleaved, twice each; the faster of the two counts
        t0 = time.perf_counter()
        out = generate_batch(
            model, prompts, seeds, args.max_new_tokens, args.temperature, args.top_p, stops, pad, share_prompts=share
        )
        elapsed = time.perf_counter() - t0
        timed[share] = (min(elapsed, timed.get(share, (elapsed,))[0]), out)
    same = sum(a == b for a, b in zip(timed[False][1], timed[True][1]))
    print(
        f"one batch of {len(prompts)} ({len(set(prompts))} distinct prompts): prefill per distinct prompt "
        f"{timed[True][0]:.2f} s vs per row {timed[False][0]:.2f} s = {timed[False][0] / timed[True][0]:.2f}x "
        f"({same}/{len(prompts)} responses identical)"
    )

    if args.bf16:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            generate_responses(
                model,
                tok,
                questions[:1],
                samples_per_question=2,
                max_new_tokens=4,
                batch_size=2,
                temperature=1.0,
                top_p=1.0,
                seed=0,
                progress=False,
            )
            t0 = time.perf_counter()
            records_bf16 = generate_responses(model, tok, questions, **settings)
            bf16_s = time.perf_counter() - t0
        bf16_rate = sum(r["n_response_tokens"] for r in records_bf16) / bf16_s
        same = sum(a["response"] == b["response"] for a, b in zip(records, records_bf16))
        print(
            f"batched under bf16 autocast: {bf16_rate:.1f} tokens/s = {bf16_rate / batched_rate:.2f}x fp32 "
            f"({same}/{n} responses identical to fp32)"
        )


if __name__ == "__main__":
    main()
