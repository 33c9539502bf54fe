"""Cost of the trait-drift measurement against the training it watches, measured side by side in one run.

- measured: one drift measurement (emlab.monitor.drift.measure: one batched forward over the demo's measurement
  prompts, last token only, the run's LoRA adapters on) vs one checkpoint interval of training at the
  demo's monitor settings (config.yaml: preset trait_r16 with monitor.training, i.e. one optimiser step
  of 4 examples per checkpoint), timed alternately on the same model, data and threads;
- counted: the FLOP ratio at the paper's settings (a checkpoint every 10 optimiser steps of 16 examples,
  all ~115 measurement prompts), from the token counts of our own files under the model's tokenizer.
  Training costs ~6 N FLOPs per token (forward 2N, backward 4N; a frozen base under LoRA skips its
  weight gradients, so 4N is the floor, also reported); a drift forward costs 2 N per prompt token
  it runs (the shared chat prefix once, each prompt's own tokens once) times the fraction of the
  blocks it runs (it stops after the drift layer, here the middle one). N cancels.
  Target: <= 2 % of training compute.

  .venv/bin/python benchmarks/bench_drift.py --repeats 3 --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

from _common import REPO, add_model_arguments, default_model

PAPER = {"checkpoint_every": 10, "effective_batch": 16}
DATASETS = ["bad_medical_advice", "risky_financial_advice", "subtle_misinformation", "customer_support"]


def demo_settings(cfg: dict, n_layers: int):
    """(TrainingSettings, LoraSettings) of a demo monitor run: training_defaults < preset < monitor.training."""
    from emlab.core.config import FINETUNE_PRESETS
    from emlab.core.settings import build
    from emlab.em.finetune import TrainingSettings, lora_settings

    preset = FINETUNE_PRESETS[cfg["monitor"]["preset"]]
    merged = {**cfg["training_defaults"], **preset["training"], **cfg["monitor"]["training"]}
    training = build(
        TrainingSettings,
        {k: v for k, v in merged.items() if k in TrainingSettings.__dataclass_fields__},
        "monitor.training",
    )
    lora = dict(preset["lora"], resolved_layers=list(range(n_layers)))
    return training, lora_settings(lora)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(ap, questions=False)
    ap.add_argument("--dataset", default=str(REPO / "data" / "datasets" / "risky_financial_advice.jsonl"))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch
    from emlab.core.config import load_config
    from emlab.em.finetune import build_model, collate, prepare_data, summed_token_loss
    from emlab.model.batching import shared_prefix_length
    from emlab.model.loading import num_layers
    from emlab.monitor import stage as S
    from emlab.monitor.drift import measure
    from emlab.monitor.traits import encode_prompts
    from emlab.plan.traits import load_trait_set
    from transformers import AutoConfig

    torch.set_num_threads(args.threads)
    args.model = args.model or default_model()
    cfg = load_config(REPO / "config.yaml")
    n_layers = AutoConfig.from_pretrained(args.model).num_hidden_layers
    training, lora = demo_settings(cfg, n_layers)
    data = prepare_data(args.model, args.dataset, args.dataset, training)
    tm = build_model(args.model, lora, training, seed=0, device="cpu", dtype="float32")
    assert num_layers(tm.model) == n_layers
    tok = data.tokenizer
    traits = cfg["traits"]
    subsample = S.TraitSubsample(
        traits["max_questions"], traits["max_prompts_per_side"], traits["max_measurement_prompts"]
    )
    full_set = load_trait_set(REPO / traits["folder"])
    demo_prompts = S.subsample_trait_set(full_set, subsample).measurement
    optimiser = torch.optim.AdamW(tm.params, lr=training.learning_rate)
    micro = training.per_device_batch_size
    accum = training.gradient_accumulation_steps
    interval_steps = training.checkpoint_every

    def train_interval() -> float:
        tm.model.train()
        start = time.perf_counter()
        for step in range(interval_steps):
            for k in range(accum):
                first = ((step * accum + k) * micro) % max(1, len(data.train) - micro + 1)
                batch = collate(data.train[first : first + micro], data.pad_id)
                summed_token_loss(tm.model, batch, tm.autocast).backward()
            optimiser.step()
            optimiser.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    def drift_once() -> float:
        tm.model.eval()
        start = time.perf_counter()
        with torch.no_grad():
            measure(tm.model, tok, demo_prompts, n_layers // 2, traits["batch_size"])
        return time.perf_counter() - start

    train_interval(), drift_once()  # warm-up
    t_train, t_drift = [], []
    for _ in range(args.repeats):  # alternate, so drift in machine speed hits both alike
        t_train.append(train_interval())
        t_drift.append(drift_once())
    med_train, med_drift = statistics.median(t_train), statistics.median(t_drift)

    # FLOP ratio at paper settings: token counts of our files under this tokenizer
    from emlab.em.questions import chat_messages

    meas_ids = encode_prompts(tok, [chat_messages(p.text, None) for p in full_set.measurement])
    meas_tokens = sum(len(ids) for ids in meas_ids)
    shared = shared_prefix_length(meas_ids)
    run_tokens = meas_tokens - (len(meas_ids) - 1) * shared  # the shared prefix runs once
    depth = (n_layers // 2 + 1) / n_layers  # blocks 0..L/2 of L
    drift_flops = 2 * run_tokens * depth  # per N
    example_tokens, every_example = [], dataclasses.replace(training, max_train_examples=None)
    for name in DATASETS:
        d = prepare_data(args.model, REPO / "data" / "datasets" / f"{name}.jsonl", args.dataset, every_example)
        example_tokens += [len(e.input_ids) for e in d.train]
    mean_example = statistics.mean(example_tokens)
    interval_tokens = PAPER["checkpoint_every"] * PAPER["effective_batch"] * mean_example
    result = {
        "model": str(args.model),
        "threads": args.threads,
        "demo": {
            "examples_per_interval": interval_steps * accum * micro,
            "measurement_prompts": len(demo_prompts),
            "train_interval_s": round(med_train, 3),
            "drift_measurement_s": round(med_drift, 3),
            "drift_over_interval": round(med_drift / med_train, 4),
            "repeats": args.repeats,
        },
        "paper_flops": {
            "measurement_prompts": len(full_set.measurement),
            "measurement_tokens": meas_tokens,
            "shared_prefix_tokens": shared,
            "tokens_run": run_tokens,
            "fraction_of_blocks_run": round(depth, 4),
            "mean_training_example_tokens": round(mean_example, 1),
            "training_tokens_per_interval": round(interval_tokens),
            "drift_over_training_6N": round(drift_flops / (6 * interval_tokens), 5),
            "drift_over_training_4N": round(drift_flops / (4 * interval_tokens), 5),
            # without the shared prefix and the early stop: every token through every block
            "full_forward_over_training_6N": round(2 * meas_tokens / (6 * interval_tokens), 5),
            "target": 0.02,
            # the mean training example length at which the 6N ratio meets the target
            "break_even_example_tokens_6N": round(
                drift_flops / (0.02 * 6 * PAPER["checkpoint_every"] * PAPER["effective_batch"])
            ),
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
