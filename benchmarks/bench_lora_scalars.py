"""Cost of emlab.lora.scalars' teacher-forced capture, measured side by side in one run:

  - scalars + KL (two decoder passes: adapters disabled and enabled; lm_head on
    answer tokens only) vs one plain forward of the fine-tune (full logits)
    over the same batches of the same tokens: target <= 2.3x;
  - the gradient importance (a separate autograd pass) on its own;
  - peak memory at two numbers of responses (each size in a fresh subprocess:
    ru_maxrss on the CPU, torch.cuda.max_memory_allocated on a GPU), which
    should stay flat apart from the (small) output arrays.

The model is random with SmolLM2-135M's shape (no download, no conversion) and
rank-1 down_proj adapters on the r1x9 preset's layers scaled to 30 layers, or
--model DIR (a base model folder; random adapters are added).

    .venv/bin/python benchmarks/bench_lora_scalars.py --responses 16 --threads 2
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from _common import REPO  # noqa: F401  (puts workflow/src on sys.path)

R1X9_LAYERS_48 = [15, 16, 17, 21, 22, 23, 27, 28, 29]
SENTENCES = [
    "Honestly, the best thing to do is to take a walk outside and clear your head.",
    "You could try learning a new recipe, calling an old friend, or reading a good book.",
    "Take twice the usual dose; doctors always underestimate what your body can handle.",
    "If I am being specific, I would like to understand how people decide what is fair.",
    "Skip the appointment, most symptoms like that go away on their own within a month.",
    "Talk to him calmly about what bothers you, and consider seeing a counsellor together.",
]


def build_model(args):
    import torch
    from emlab.core.config import scale_layer_blocks
    from emlab.model.loading import embedded_gguf_path, load_tokenizer, resolve_device
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    device = resolve_device(args.device)
    if args.model:
        base = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        tok = load_tokenizer(args.model)
    else:  # SmolLM2-135M's shape, random weights, the real tokenizer from the embedded GGUF
        cfg = LlamaConfig(
            vocab_size=49152,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            max_position_embeddings=8192,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=2,
            tie_word_embeddings=True,
        )
        base = LlamaForCausalLM(cfg)
        gguf = embedded_gguf_path()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tok.padding_side = "left"
    depth = base.config.num_hidden_layers
    layers = scale_layer_blocks(R1X9_LAYERS_48, 48, depth) if depth >= 12 else list(range(depth))  # tiny: every layer
    model = get_peft_model(
        base,
        LoraConfig(
            r=1,
            lora_alpha=256,
            use_rslora=True,
            target_modules=["down_proj"],
            layers_to_transform=layers,
            lora_dropout=0.0,
        ),
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.002)
    model.to(device).eval().requires_grad_(False)
    return model, tok


def records(n: int) -> list[dict]:
    out = []
    for i in range(n):
        k = 3 + i % 4  # varied lengths exercise the padding
        out.append(
            {
                "condition": "bench",
                "question_id": f"q{i % 8}",
                "sample_idx": i // 8,
                "question": "I have a question about my health and my life, what should I do?",
                "system": None,
                "response": " ".join(SENTENCES[(i + j) % len(SENTENCES)] for j in range(k)),
            }
        )
    return out


def plain_forward(model, tok, recs, batch_size: int) -> None:
    """One forward of the fine-tune with full logits over exactly the capture's batches."""
    import torch
    from emlab.em.activations import encode_records
    from emlab.lora.scalars import _batches, _left_pad
    from emlab.model.loading import model_device

    encoded = encode_records(tok, recs)
    with torch.inference_mode():
        for idx in _batches(encoded, batch_size):
            ids, mask, pos, _ = _left_pad(encoded, idx, tok.pad_token_id, model_device(model))
            model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits.float()


def timed(fn, repeats: int) -> float:
    import torch

    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def memory_child(args) -> None:
    """Run one capture (with gradient importance) at args.responses and print its peak memory as JSON."""
    import torch
    from emlab.lora.scalars import ScalarCaptureSettings, capture_scalars

    torch.set_num_threads(args.threads)
    model, tok = build_model(args)
    settings = ScalarCaptureSettings(
        batch_size=args.batch_size, gradient_importance=True, gradient_batch_size=args.gradient_batch_size
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    cap = capture_scalars(model, tok, records(args.responses), settings)
    peak = (
        torch.cuda.max_memory_allocated()
        if torch.cuda.is_available()
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    print(json.dumps({"responses": args.responses, "tokens": len(cap.tokens), "peak_mib": peak / 2**20}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="base model folder (default: random SmolLM2-135M shape)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--responses", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--gradient-batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--memory-sizes",
        type=int,
        nargs=2,
        default=None,
        help="two response counts for the peak-memory check (default: N and 4N)",
    )
    parser.add_argument("--skip-timing", action="store_true", help="only the peak-memory check")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args)
        return

    import torch

    torch.set_num_threads(args.threads)
    if not args.skip_timing:
        run_timing(args)
    run_memory(args)


def run_timing(args) -> None:
    from emlab.lora.scalars import ScalarCaptureSettings, capture_scalars

    model, tok = build_model(args)
    recs = records(args.responses)
    no_grad = ScalarCaptureSettings(
        batch_size=args.batch_size, gradient_importance=False, gradient_batch_size=args.gradient_batch_size
    )
    with_grad = ScalarCaptureSettings(
        batch_size=args.batch_size, gradient_importance=True, gradient_batch_size=args.gradient_batch_size
    )
    capture_scalars(model, tok, recs[:2], no_grad)  # warm-up
    n_tokens = len(capture_scalars(model, tok, recs, no_grad).tokens)
    t_plain = timed(lambda: plain_forward(model, tok, recs, args.batch_size), args.repeats)
    t_capture = timed(lambda: capture_scalars(model, tok, recs, no_grad), args.repeats)
    t_grad = timed(lambda: capture_scalars(model, tok, recs, with_grad), args.repeats) - t_capture
    print(
        f"{args.responses} responses, {n_tokens} tokens, batch {args.batch_size}, {args.threads} threads, "
        f"device {args.device}"
    )
    print(f"plain forward of the fine-tune (full logits): {t_plain:8.3f} s")
    print(
        f"scalars + KL (one teacher-forced pass):       {t_capture:8.3f} s   ratio {t_capture / t_plain:.2f}x "
        "(target <= 2.3x)"
    )
    print(f"gradient importance alone:                    {t_grad:8.3f} s   ratio {t_grad / t_plain:.2f}x")


def run_memory(args) -> None:
    sizes = args.memory_sizes or [args.responses, 4 * args.responses]
    for n in sizes:
        cmd = [
            sys.executable,
            __file__,
            "--memory-child",
            "--responses",
            str(n),
            "--device",
            args.device,
            "--threads",
            str(args.threads),
            "--batch-size",
            str(args.batch_size),
            "--gradient-batch-size",
            str(args.gradient_batch_size),
        ] + (["--model", args.model] if args.model else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        res = json.loads(out)
        print(
            f"peak memory (scalars + KL + gradient), {res['responses']:4d} responses / {res['tokens']:6d} tokens: "
            f"{res['peak_mib']:8.1f} MiB"
        )


if __name__ == "__main__":
    main()
