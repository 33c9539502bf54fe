"""Steered (and ablated) generation vs unsteered generation: the hook overhead.

The issue's target: steered generation costs no more than 10% over unsteered
generation. All variants run in one process on the same model, questions,
seeds and settings; the variants are interleaved over --repeats rounds (so
background load hits them alike) and the median seconds per generated token is
compared. Steering adds lambda * v at one layer (a realistic norm: lambda = 8
times a unit-variance vector scaled to the residual norm of that layer);
ablation projects a direction out after every block (the heaviest hook set).

    .venv/bin/python benchmarks/bench_steering.py            # 8 questions x 4 samples x 40 tokens, batch 32
    .venv/bin/python benchmarks/bench_steering.py --help
"""

from __future__ import annotations

import argparse
import statistics
import time

from _common import add_model_arguments, load_cpu_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--samples", type=int, default=4, help="samples per question")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--layer", type=float, default=0.5, help="steering layer (index, or fraction of depth)")
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="steering vector norm as a multiple of the "
        "layer's mean residual norm (kept small so responses keep their length)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    from emlab.core.config import resolve_layer
    from emlab.em.generation import generate_responses
    from emlab.em.questions import load_questions
    from emlab.model import hooks
    from emlab.model.loading import hidden_size, num_layers

    model, tok = load_cpu_model(args)
    questions = load_questions(args.questions)
    n_layers, d = num_layers(model), hidden_size(model)
    layer = resolve_layer(int(args.layer) if args.layer >= 1 else args.layer, n_layers, "--layer")
    settings = dict(
        samples_per_question=args.samples,
        max_new_tokens=args.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        batch_size=args.batch_size,
        seed=0,
        progress=False,
    )

    # residual norm at the steering layer, from one prompt, so the vector has a realistic size
    norms = []
    ids = tok(questions[0].text, return_tensors="pt")
    with (
        hooks.read_residual(model, [layer], lambda _l, h: norms.append(float(h.float().norm(dim=-1).mean()))),
        torch.inference_mode(),
    ):
        model(**ids)
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(d, generator=g)
    vector = direction / direction.norm() * norms[0] * args.scale  # [d]

    variants = {
        "unsteered": lambda: hooks.edit_residual(model, {}),
        f"steered (layer {layer})": lambda: hooks.steer(model, {layer: vector}),
        f"ablated (all {n_layers} layers)": lambda: hooks.ablate(model, {l: direction for l in range(n_layers)}),
    }
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
    )  # warm-up
    per_token: dict[str, list[float]] = {name: [] for name in variants}
    tokens: dict[str, int] = {}
    for r in range(args.repeats):
        names = list(variants) if r % 2 == 0 else list(variants)[::-1]
        for name in names:
            with variants[name]():
                t0 = time.perf_counter()
                records = generate_responses(model, tok, questions, **settings)
                elapsed = time.perf_counter() - t0
            n_tok = sum(rec["n_response_tokens"] for rec in records)
            tokens[name] = n_tok
            per_token[name].append(elapsed / max(1, n_tok))

    print(
        f"model {args.model}, {args.threads} threads, {len(questions)} questions x {args.samples} samples, "
        f"batch {args.batch_size}, {args.max_new_tokens} new tokens, {args.repeats} interleaved rounds"
    )
    base = statistics.median(per_token["unsteered"])
    for name, times in per_token.items():
        med = statistics.median(times)
        over = "" if name == "unsteered" else f"  overhead {100 * (med / base - 1):+.1f}% (target <= +10%)"
        print(f"{name:28s} {1 / med:7.1f} tokens/s (median of {len(times)}; {tokens[name]} tokens last round){over}")


if __name__ == "__main__":
    main()
