"""Training speed and peak memory of emlab's trainer (emlab.em.finetune.fine_tune)
vs a plain transformers.Trainer + peft run on the same data and settings, side
by side, and the fraction of this machine's fp32 matmul FLOP/s that training
reaches.

Both trainers get the same encoded examples (loss on the final assistant reply
only, through the same labels), in the same order (fine_tune's seeded epoch
order; the Trainer gets that list with a sequential sampler, so the micro-batches
and their padding are identical), the same LoRA shape and initialisation, batch,
gradient accumulation, AdamW, linear warm-up/decay schedule, weight decay, grad
clipping and max length. Each run is its own subprocess, so its peak RSS
(getrusage ru_maxrss: model load included, the same for every variant) is clean;
variants are interleaved over the repeats (the order reversed every other round)
and the median is reported.

Variants: ours (fp32), hf (transformers.Trainer, fp32), and where this checkout's
fine_tune has `training.autocast`, ours_autocast (bf16 autocast over fp32
weights, the CPU default where supported) and hf_autocast (the Trainer with
bf16=True, the same autocast); ours_bf16 (bf16 weights, what this benchmark used to compare) on
request.

FLOPs counted (stated in the output): forward 2 x (linear weights incl. lm_head)
per token plus attention scores/values 4 x L^2 x d per layer and sequence; the
backward pass of frozen weights needs only the activation-gradient matmuls
(another 2 x weights per token, and 2 x the attention term) and only above the
lowest adapted layer; LoRA's own matmuls and the weight gradients of its A/B
(< 0.1% here) are left out. Padded positions count: they are computed.

    .venv/bin/python benchmarks/bench_finetune.py      # 32 examples, 2 repeats: ~5-10 min on 2 shared cores
    .venv/bin/python benchmarks/bench_finetune.py --examples 128 --repeats 3 \
        --variants ours hf ours_autocast hf_autocast ours_bf16
    .venv/bin/python benchmarks/bench_finetune.py --rank 32 --alpha 64 --layers all \
        --targets q_proj k_proj v_proj o_proj gate_proj up_proj down_proj
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, default_model

ORGANISM_LAYERS_48 = "15,16,17,21,22,23,27,28,29"
VARIANTS = ("ours", "hf", "ours_autocast", "hf_autocast", "ours_bf16")


# -- the shared setup -------------------------------------------------------------
def make_spec(
    model: str,
    data: str,
    workdir: Path,
    examples: int,
    batch_size: int,
    accumulation: int,
    rank: int,
    alpha: float,
    targets: list[str],
    layers_arg: str,
    threads: int,
    max_length: int = 2048,
    seed: int = 0,
    learning_rate: float = 1e-4,
    warmup_steps: int = 2,
) -> dict:
    """Everything both trainers share; writes the training examples to workdir/train.jsonl."""
    from emlab.core.config import scale_layer_blocks
    from emlab.em.datasets import load_chat_jsonl, write_chat_jsonl
    from transformers import AutoConfig

    depth = AutoConfig.from_pretrained(model).num_hidden_layers
    layers = (
        list(range(depth))
        if layers_arg == "all"
        else scale_layer_blocks([int(x) for x in layers_arg.split(",")], 48, depth)
    )
    records = load_chat_jsonl(data)[:examples]
    train, empty_eval = workdir / "train.jsonl", workdir / "eval.jsonl"
    write_chat_jsonl(train, records)
    empty_eval.write_text("")  # no eval: both runs time training only
    return {
        "model": model,
        "train": str(train),
        "eval": str(empty_eval),
        "workdir": str(workdir),
        "seed": seed,
        "threads": threads,
        "lora": {
            "rank": rank,
            "alpha": alpha,
            "rslora": True,
            "dropout": 0.0,
            "target_modules": list(targets),
            "resolved_layers": layers,
        },
        "training": {
            "learning_rate": learning_rate,
            "epochs": 1,
            "per_device_batch_size": batch_size,
            "gradient_accumulation_steps": accumulation,
            "warmup_steps": warmup_steps,
            "weight_decay": 0.01,
            "max_length": max_length,
            "max_train_examples": None,
            "max_eval_examples": None,
            "checkpoint_every": 0,
            "gradient_checkpointing": False,
            "autocast": "off",
            "device_map": None,
        },
    }


def ordered_examples(spec: dict, tokenizer):
    """The encoded training examples in fine_tune's (seeded) first-epoch order."""
    from emlab.em.datasets import load_chat_jsonl
    from emlab.em.finetune import encode_dataset, epoch_order

    examples, _, _ = encode_dataset(tokenizer, load_chat_jsonl(spec["train"]), spec["training"]["max_length"], "bench")
    return [examples[i] for i in epoch_order(len(examples), spec["seed"], 0)]


def micro_batch_shapes(spec: dict) -> list[tuple[int, int, list[int]]]:
    """(rows, padded width, real lengths) of every micro-batch either trainer runs."""
    from emlab.em.finetune import optimiser_steps
    from emlab.model.loading import load_tokenizer

    t = spec["training"]
    ordered = ordered_examples(spec, load_tokenizer(spec["model"]))
    shapes = []
    for group in optimiser_steps(ordered, t["per_device_batch_size"], t["gradient_accumulation_steps"]):
        for mb in group:
            lengths = [len(ex.input_ids) for ex in mb]
            shapes.append((len(mb), max(lengths), lengths))
    return shapes


# -- the two trainers (each called in its own subprocess) ------------------------
def run_ours(spec: dict, variant: str) -> dict:
    """emlab.em.finetune.fine_tune as the workflow runs it."""
    import pandas as pd
    from emlab.core.settings import build
    from emlab.em.finetune import TrainingSettings, fine_tune, lora_settings

    training = dict(spec["training"])
    dtype = "float32"
    if variant == "ours_autocast":
        training["autocast"] = "bf16"
    elif variant == "ours_bf16":
        dtype = "bfloat16"
    elif variant == "ours" and autocast_supported():
        training["autocast"] = "off"
    out = Path(spec["workdir"]) / variant
    summary = fine_tune(
        spec["model"],
        spec["train"],
        spec["eval"],
        lora_settings(spec["lora"]),
        build(TrainingSettings, training),
        out / "adapter",
        out / "log.csv",
        out / "summary.json",
        None,
        seed=spec["seed"],
        device="cpu",
        dtype=dtype,
        progress=False,
    )
    if variant == "ours_autocast" and not summary.get("autocast_bf16"):
        raise SystemExit("fine_tune ignored training.autocast=bf16 (not supported by this checkout)")
    rows = pd.read_csv(out / "log.csv")
    rows = rows[rows["step"] > 0]
    norm_cols = [c for c in rows.columns if c.startswith(("a_norm.", "b_norm."))]
    return {
        "tokens": summary["tokens_trained"],
        "loss_tokens": summary["loss_tokens_trained"],
        "seconds": summary["train_seconds"],
        "steps": summary["steps"],
        "losses": [float(x) for x in rows["loss"]],
        "final_norms": {c: float(rows[c].iloc[-1]) for c in norm_cols},
    }


def run_hf(spec: dict, autocast: bool = False) -> dict:
    """A plain transformers.Trainer + peft run on the same examples, order and settings.

    autocast: TrainingArguments(bf16=True), the Trainer's bf16 autocast over fp32 weights (like ours_autocast).
    """
    import torch
    from emlab.em.finetune import IGNORE_INDEX, adapter_norms, adapter_weights, collate, lora_config, lora_settings
    from emlab.model.loading import load_tokenizer
    from peft import get_peft_model
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    t = spec["training"]
    tokenizer = load_tokenizer(spec["model"])
    ordered = ordered_examples(spec, tokenizer)
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    model.config.use_cache = False
    torch.manual_seed(spec["seed"])  # the same LoRA A initialisation as fine_tune
    model = get_peft_model(model, lora_config(lora_settings(spec["lora"]), spec["lora"]["resolved_layers"]))

    counted = {"tokens": 0, "loss_tokens": 0}

    def collator(examples):
        batch = collate(examples, tokenizer.pad_token_id)
        counted["tokens"] += int(batch["attention_mask"].sum())
        counted["loss_tokens"] += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        return batch

    class InOrder(Trainer):
        def _get_train_sampler(self, *args, **kwargs):  # fine_tune's order, not the Trainer's shuffle
            return SequentialSampler(self.train_dataset)

    losses = []

    class StepLosses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    args = TrainingArguments(
        output_dir=str(Path(spec["workdir"]) / "hf"),
        per_device_train_batch_size=t["per_device_batch_size"],
        gradient_accumulation_steps=t["gradient_accumulation_steps"],
        num_train_epochs=t["epochs"],
        learning_rate=t["learning_rate"],
        weight_decay=t["weight_decay"],
        warmup_steps=t["warmup_steps"],
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        optim="adamw_torch",
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=spec["seed"],
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=True,
        bf16=autocast,
    )
    trainer = InOrder(model=model, args=args, train_dataset=ordered, data_collator=collator, callbacks=[StepLosses()])
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    return {
        "tokens": counted["tokens"],
        "loss_tokens": counted["loss_tokens"],
        "seconds": round(seconds, 3),
        "steps": int(result.global_step),
        "losses": losses,
        "final_norms": adapter_norms(adapter_weights(model)),
    }


def autocast_supported() -> bool:
    """Whether this checkout's fine_tune has training.autocast (helper A's option)."""
    import emlab.em.finetune as ft

    return hasattr(ft, "resolve_autocast")


def worker(spec_path: str, variant: str, out_path: str) -> None:
    import torch

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    cpu0 = time.process_time()
    result = run_hf(spec, autocast=variant == "hf_autocast") if variant.startswith("hf") else run_ours(spec, variant)
    # CPU seconds of the whole run (load + encode + train, all threads): steadier than wall time on a busy machine
    result["cpu_s"] = time.process_time() - cpu0
    result["variant"] = variant
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    result["tokens_per_s"] = result["tokens"] / result["seconds"]
    Path(out_path).write_text(json.dumps(result))


def run_variant(spec_path: Path, variant: str, out: Path) -> dict:
    """One run in a fresh interpreter; its JSON result."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", variant, "--spec", str(spec_path), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"variant {variant} failed:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


# -- the machine's peak and the training FLOPs -----------------------------------
def matmul_peak_flops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 FLOP/s of an n x n @ n x n matmul over `repeats` (after a warm-up)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def training_flops(spec: dict) -> dict:
    """Executed FLOPs of one epoch of LoRA training (see the module docstring for what is counted)."""
    import torch
    from emlab.model.loading import decoder_layers
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    blocks = decoder_layers(model)
    per_layer = [sum(m.weight.numel() for m in block.modules() if isinstance(m, torch.nn.Linear)) for block in blocks]
    head = model.get_output_embeddings().weight.numel()
    cfg = model.config
    d_attn = cfg.num_attention_heads * (getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    lowest = min(spec["lora"]["resolved_layers"])
    above = len(blocks) - lowest - 1  # blocks whose inputs need gradients
    fwd = bwd = 0
    for rows, width, _ in micro_batch_shapes(spec):
        tokens = rows * width
        attn_layer = 4 * rows * width * width * d_attn
        fwd += 2 * tokens * (sum(per_layer) + head) + len(blocks) * attn_layer
        bwd += 2 * tokens * (sum(per_layer[lowest + 1 :]) + head) + above * 2 * attn_layer
    del model
    return {
        "forward": fwd,
        "backward": bwd,
        "total": fwd + bwd,
        "blocks_in_backward": above,
        "linear_params": sum(per_layer) + head,
    }


# -- the report -------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="model folder (default: results/base_model, converted if missing)"
    )
    parser.add_argument("--data", default=str(REPO / "data" / "datasets" / "bad_medical_advice.jsonl"))
    parser.add_argument("--examples", type=int, default=32, help="training examples per run (one epoch)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--accumulation", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of each variant (median reported)")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        default=None,
        help="default: ours hf, plus ours_autocast when fine_tune supports it",
    )
    parser.add_argument("--rank", type=int, default=1)
    parser.add_argument("--alpha", type=float, default=256)
    parser.add_argument("--targets", nargs="+", default=["down_proj"])
    parser.add_argument(
        "--layers",
        default=ORGANISM_LAYERS_48,
        help="'all' or comma-separated indices for a 48-layer model (scaled to this depth)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.spec, args.worker, args.out)

    model = args.model or default_model()
    variants = args.variants or (["ours", "hf"] + (["ours_autocast", "hf_autocast"] if autocast_supported() else []))
    with tempfile.TemporaryDirectory(prefix="bench_finetune.") as tmp:
        tmp = Path(tmp)
        spec = make_spec(
            model,
            args.data,
            tmp,
            args.examples,
            args.batch_size,
            args.accumulation,
            args.rank,
            args.alpha,
            args.targets,
            args.layers,
            args.threads,
        )
        spec_path = tmp / "spec.json"
        spec_path.write_text(json.dumps(spec))
        peak = matmul_peak_flops(args.threads)
        flops = training_flops(spec)
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        for r in range(args.repeats):
            # Alternate the order each round: the first run of a round measured slower for every variant.
            for v in variants if r % 2 == 0 else variants[::-1]:
                runs[v].append(run_variant(spec_path, v, tmp / f"{v}.{r}.json"))
        peak_after = matmul_peak_flops(args.threads)

    print(
        f"model {model}, {args.threads} threads, LoRA r={args.rank} alpha={args.alpha} on {args.targets} of layers "
        f"{spec['lora']['resolved_layers']}; {args.examples} examples, batch {args.batch_size} x accumulation "
        f"{args.accumulation}, {args.repeats} interleaved repeats (median)"
    )
    print(
        f"fp32 matmul peak (2048^3, best of 5): {peak / 1e9:.1f} GFLOP/s before, {peak_after / 1e9:.1f} after the runs"
    )
    print(
        f"training FLOPs per epoch: {flops['total'] / 1e12:.3f} TFLOP (forward {flops['forward'] / 1e12:.3f}; "
        f"backward {flops['backward'] / 1e12:.3f}: activation gradients through {flops['blocks_in_backward']} "
        f"blocks above the lowest adapted layer and lm_head; LoRA matmuls not counted)"
    )
    ref = statistics.median(r["tokens_per_s"] for r in runs[variants[0]])
    summary = {}
    header = (
        f"{'variant':<14}{'tokens':>8}{'tok/s':>9}{'vs ' + variants[0]:>10}{'peak RSS MB':>13}{'GFLOP/s':>9}"
        f"{'of peak':>9}{'CPU s':>8}  runs tok/s"
    )
    print(header)
    for v in variants:
        rate = statistics.median(r["tokens_per_s"] for r in runs[v])
        rss = statistics.median(r["peak_rss_mb"] for r in runs[v])
        cpu = statistics.median(r["cpu_s"] for r in runs[v])
        gflops = statistics.median(flops["total"] / r["seconds"] for r in runs[v]) / 1e9
        summary[v] = {
            "tokens": runs[v][0]["tokens"],
            "loss_tokens": runs[v][0]["loss_tokens"],
            "tokens_per_s": rate,
            "peak_rss_mb": rss,
            "gflops": gflops,
            "fraction_of_peak": gflops * 1e9 / max(peak, peak_after),
            "cpu_s": cpu,
            "losses": runs[v][0]["losses"],
            "runs_tokens_per_s": [r["tokens_per_s"] for r in runs[v]],
        }
        print(
            f"{v:<14}{runs[v][0]['tokens']:>8}{rate:>9.1f}{rate / ref:>9.2f}x{rss:>13.0f}{gflops:>9.1f}"
            f"{summary[v]['fraction_of_peak']:>8.1%}{cpu:>8.1f}  {', '.join(f'{x:.0f}' for x in summary[v]['runs_tokens_per_s'])}"
        )
    for v in variants:
        print(f"{v} per-step loss: {', '.join(f'{x:.4f}' for x in summary[v]['losses'])}")
    for ours, hf in (("ours", "hf"), ("ours_autocast", "hf_autocast")):
        if hf in summary and ours in summary:
            ratio = summary[ours]["tokens_per_s"] / summary[hf]["tokens_per_s"]
            print(
                f"{ours} / {hf} speed: {ratio:.2f}x; peak RSS {ours} - {hf}: "
                f"{summary[ours]['peak_rss_mb'] - summary[hf]['peak_rss_mb']:+.0f} MB"
            )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"peak_flops": max(peak, peak_after), "flops": flops, "variants": summary}, indent=2)
        )


if __name__ == "__main__":
    main()
