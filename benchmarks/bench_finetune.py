"""Training tokens/s of emlab's LoRA fine-tuning step (forward + backward + AdamW)
with the base model in fp32 vs bf16, side by side in one run, plus the loss
difference between the two (what bf16 costs in accuracy).

The step is the one train_lora runs: right-padded micro-batches of the demo
dataset, loss on assistant tokens only, rank-1 adapters on down_proj of the
nine scaled "organism" layers (or --targets/--rank for the all-adapter shape).

    .venv/bin/python benchmarks/bench_finetune.py
    .venv/bin/python benchmarks/bench_finetune.py --rank 32 --alpha 64 --layers all \
        --targets q_proj k_proj v_proj o_proj gate_proj up_proj down_proj
"""
from __future__ import annotations

import argparse
import statistics
import time

from _common import REPO, default_model  # noqa: E402  (also puts workflow/src on sys.path)


def build(model_path, dtype, lora, layers, seed=0):
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from emlab.finetune import lora_config

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    model.config.use_cache = False
    torch.manual_seed(seed)
    model = get_peft_model(model, lora_config(lora, layers))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    return model, params, torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)


def train_steps(model, params, opt, batches) -> tuple[float, int, float]:
    """Seconds, tokens and first-batch loss for one optimiser step per batch."""
    import torch

    from emlab.finetune import CLIP_GRAD_NORM, IGNORE_INDEX, summed_token_loss

    first_loss, tokens = None, 0
    t0 = time.perf_counter()
    for batch in batches:
        n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        loss = summed_token_loss(model, batch) / n
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP_GRAD_NORM)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
        first_loss = float(loss.detach()) if first_loss is None else first_loss
    return time.perf_counter() - t0, tokens, first_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: results/base_model, converted if missing)")
    parser.add_argument("--data", default=str(REPO / "data" / "datasets" / "bad_medical_advice.jsonl"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed optimiser steps per repeat")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats of each variant (median reported)")
    parser.add_argument("--rank", type=int, default=1)
    parser.add_argument("--alpha", type=float, default=256)
    parser.add_argument("--targets", nargs="+", default=["down_proj"])
    parser.add_argument("--layers", default="15,16,17,21,22,23,27,28,29",
                        help="'all' or comma-separated indices for a 48-layer model (scaled to this depth)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.model = args.model or default_model()

    import torch

    from emlab.config import scale_layer_blocks
    from emlab.datasets import load_chat_jsonl
    from emlab.finetune import collate, encode_dataset
    from emlab.models import load_tokenizer

    torch.set_num_threads(args.threads)
    tok = load_tokenizer(args.model)
    examples, _, _ = encode_dataset(tok, load_chat_jsonl(args.data), 2048, "bench")
    need = args.batch_size * (args.steps + 1)
    batches = [collate(examples[i:i + args.batch_size], tok.pad_token_id) for i in range(0, need, args.batch_size)]
    from transformers import AutoConfig

    n_layers = AutoConfig.from_pretrained(args.model).num_hidden_layers
    layers = list(range(n_layers)) if args.layers == "all" else scale_layer_blocks(
        [int(x) for x in args.layers.split(",")], 48, n_layers)
    lora = {"rank": args.rank, "alpha": args.alpha, "rslora": True, "dropout": 0.0, "target_modules": args.targets}

    variants = {"fp32": torch.float32, "bf16": torch.bfloat16}
    built = {name: build(args.model, dt, lora, layers) for name, dt in variants.items()}
    for model, params, opt in built.values():
        train_steps(model, params, opt, batches[:1])  # warm-up
    rates = {name: [] for name in variants}
    losses = {}
    for _ in range(args.repeats):
        for name, (model, params, opt) in built.items():
            secs, toks, loss = train_steps(model, params, opt, batches[1:])
            rates[name].append(toks / secs)
            losses.setdefault(name, loss)
    fp32, bf16 = statistics.median(rates["fp32"]), statistics.median(rates["bf16"])
    print(f"model {args.model}, {args.threads} threads, LoRA r={args.rank} on {args.targets} of {len(layers)} layers, "
          f"batch {args.batch_size}, {args.steps} steps x {args.repeats} repeats")
    print(f"fp32: {fp32:8.1f} train tokens/s   (runs: {', '.join(f'{r:.0f}' for r in rates['fp32'])})")
    print(f"bf16: {bf16:8.1f} train tokens/s   (runs: {', '.join(f'{r:.0f}' for r in rates['bf16'])})")
    print(f"bf16 / fp32 speed ratio: {bf16 / fp32:.2f}x; first-step loss fp32 {losses['fp32']:.4f} "
          f"vs bf16 {losses['bf16']:.4f} (diff {abs(losses['bf16'] - losses['fp32']):.4f})")


if __name__ == "__main__":
    main()
