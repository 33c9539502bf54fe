"""Whole train_lora runs with training.autocast off vs bf16 on this machine's CPU,
interleaved, at the demo's settings (rank-1 down_proj on the nine scaled organism
layers, batch 8 x accumulation 2): training tokens/s (median of the repeats) and
the final eval loss of each, so the speed-up and what it costs are side by side.
This is the measurement behind the default of `training.autocast` (auto).

    .venv/bin/python benchmarks/bench_finetune_autocast.py --examples 64 --repeats 2
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from _common import REPO, default_model  # noqa: E402  (also puts workflow/src on sys.path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: results/base_model, converted if missing)")
    parser.add_argument("--data", default=str(REPO / "data" / "datasets" / "bad_medical_advice.jsonl"))
    parser.add_argument("--examples", type=int, default=64, help="training examples per run")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of each variant")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.model = args.model or default_model()

    import torch

    from emlab.config import scale_layer_blocks
    from emlab.datasets import load_chat_jsonl, write_chat_jsonl
    from emlab.finetune import cpu_has_bf16, train_lora

    torch.set_num_threads(args.threads)
    from transformers import AutoConfig

    depth = AutoConfig.from_pretrained(args.model).num_hidden_layers
    layers = scale_layer_blocks([15, 16, 17, 21, 22, 23, 27, 28, 29], 48, depth)
    lora = {"rank": 1, "alpha": 256, "rslora": True, "dropout": 0.0, "target_modules": ["down_proj"], "resolved_layers": layers}
    results: dict[str, list[dict]] = {"off": [], "bf16": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        records = load_chat_jsonl(args.data)
        write_chat_jsonl(tmp / "train.jsonl", records[: args.examples])
        write_chat_jsonl(tmp / "eval.jsonl", records[args.examples: args.examples + 16])
        for rep in range(args.repeats):
            for mode in ("off", "bf16"):
                out = tmp / f"{mode}-{rep}"
                training = {"learning_rate": 2e-3, "warmup_steps": 2, "epochs": 1, "per_device_batch_size": 8,
                            "gradient_accumulation_steps": 2, "weight_decay": 0.01, "max_length": 2048,
                            "checkpoint_every": 0, "autocast": mode}
                s = train_lora(args.model, tmp / "train.jsonl", tmp / "eval.jsonl", lora, training, out / "adapter",
                               out / "log.csv", out / "summary.json", seed=0, device="cpu", dtype="float32", progress=False)
                results[mode].append(s)
                print(f"repeat {rep} autocast={mode}: {s['tokens_per_s']:.1f} tokens/s, final eval loss {s['final_eval_loss']:.4f}")
    report = {"cpu_has_bf16": cpu_has_bf16(), "threads": args.threads, "examples": args.examples, "model_layers": depth}
    for mode, runs in results.items():
        report[mode] = {"tokens_per_s_median": statistics.median(r["tokens_per_s"] for r in runs),
                        "final_eval_loss": runs[0]["final_eval_loss"]}
    report["speedup_bf16"] = report["bf16"]["tokens_per_s_median"] / report["off"]["tokens_per_s_median"]
    report["eval_loss_difference"] = report["bf16"]["final_eval_loss"] - report["off"]["final_eval_loss"]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
