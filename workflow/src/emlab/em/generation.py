"""Batched sampling of responses to the evaluation questions.

A lean sampling loop over the KV cache instead of `model.generate`: prompts of
all (question, sample) pairs are sorted by length and left-padded into
batches, the lm_head runs on the last position only, finished rows are dropped
from the batch (and the cache), and every row draws its random numbers from
its own stream seeded by (seed, question_id, sample_idx). So:
  - same seed, same machine: identical responses;
  - a row's response does not depend on the batch size or on which rows share
    its batch (up to floating-point reassociation, which in practice only
    matters for exact ties);
  - every condition uses the same random numbers for the same (question,
    sample), which makes comparisons between conditions less noisy.
"Same machine" means the same device, dtype, torch intra-op thread count and
library versions (emlab.core.provenance records them in every generations parquet);
generation.threads pins the thread count independently of the job's cores.
Measured on the default config (embedded SmolLM2-135M, CPU, 32 responses):
1 vs 2 job threads changed 3 responses; with generation.threads: 2, a 1-core
and a 2-core job gave identical responses (the count is all that matters).
Residual-stream hooks (emlab.model.hooks / emlab.interventions) act position-wise,
so they apply in the prefill and in every single-token decoding step.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from tqdm.auto import tqdm

from emlab.core.errors import EMLabError
from emlab.em.questions import Question, chat_messages
from emlab.model.backoff import is_out_of_memory, release_cached_memory
from emlab.model.batching import output_cache, pad_batch, pad_token_id, positions_from_mask, with_cache
from emlab.model.chat import render_prompt
from emlab.model.loading import model_device
from emlab.plan.conditions import Unmodified

log = logging.getLogger(__name__)

# End-of-turn markers of common chat templates, used in addition to the
# tokenizer's eos token (SmolLM2/ChatML: <|im_end|>, id 2).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end_of_turn|>", "<end_of_turn>", "<|endoftext|>", "<|end|>")


@dataclass(frozen=True)
class GenerationSettings:
    """The `generation` config section (schema properties.generation; defaults live there)."""

    samples_per_question: int
    max_new_tokens: int
    temperature: float
    top_p: float
    batch_size: int
    backend: str
    threads: int | None


@dataclass(frozen=True)
class GenerationJob:
    """One response to sample: which question, which sample, and its prompt."""

    question_id: str
    sample_idx: int
    question: str
    system: str | None
    prompt: str
    prompt_ids: tuple[int, ...]
    seed: int


def sample_seed(seed: int, question_id: str, sample_idx: int) -> int:
    """The random stream of one (question, sample): stable across runs, conditions and batch sizes."""
    digest = hashlib.sha256(f"{int(seed)}\x00{question_id}\x00{int(sample_idx)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Token ids that end a response: eos, the template's end-of-turn marker(s), the model's eos."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    for tok in END_OF_TURN_TOKENS:
        if tok in vocab:
            ids.add(int(vocab[tok]))
    gen_cfg = getattr(model, "generation_config", None)
    eos = getattr(gen_cfg, "eos_token_id", None)
    if eos is not None:
        ids.update(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))
    if not ids:
        raise EMLabError(
            "the tokenizer has no eos token and no known end-of-turn token; cannot tell when a response ends"
        )
    return sorted(ids)


def build_jobs(tokenizer, questions: list[Question], samples_per_question: int, seed: int) -> list[GenerationJob]:
    """Every (question, sample) pair with its rendered, tokenised prompt, in question order."""
    jobs = []
    for q in questions:
        for i in range(samples_per_question):
            text = q.paraphrase_for(i)
            prompt = render_prompt(tokenizer, chat_messages(text, q.system))
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            jobs.append(GenerationJob(q.id, i, text, q.system, prompt, tuple(ids), sample_seed(seed, q.id, i)))
    return jobs


def sample_next_tokens(logits: torch.Tensor, uniforms: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Inverse-CDF sampling with one given uniform per row: logits [batch, vocab], uniforms [batch] -> [batch].

    temperature 0 is greedy. With top_p < 1 only the smallest set of most
    likely tokens whose mass reaches top_p is kept (nucleus sampling).
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # [batch, vocab]
    order = None
    if top_p < 1.0:
        probs, order = probs.sort(dim=-1, descending=True)
        mass_before = probs.cumsum(dim=-1) - probs
        probs = probs * (mass_before < top_p)  # the top token is always kept
    cdf = probs.cumsum(dim=-1)  # [batch, vocab]
    target = (uniforms.to(cdf) * cdf[:, -1]).unsqueeze(-1)  # [batch, 1]
    idx = torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[-1] - 1)  # [batch, 1]
    if order is not None:
        idx = order.gather(-1, idx)
    return idx.squeeze(-1)


@torch.inference_mode()
def generate_batch(
    model,
    prompt_ids: list[tuple[int, ...]],
    seeds: list[int],
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    stop_ids: list[int],
    pad_id: int,
    share_prompts: bool = False,
) -> list[tuple[list[int], str]]:
    """Sample one continuation per prompt; returns (new token ids without the stop token, finish_reason) per row.

    With `share_prompts`, a prompt that appears in several rows (the samples of one question) is read once:
    the prefill runs over the distinct prompts, padded to the same width as the whole batch, and its KV
    cache and last logits are then repeated into every row that has that prompt. Only for a model whose
    prefill does not depend on the row (scalar patching's per-row prefill edits must not share).
    """
    device = model_device(model)
    n = len(prompt_ids)
    uniforms = torch.empty((n, max_new_tokens), dtype=torch.float64)  # [batch, step]: each row's own stream
    for row, s in enumerate(seeds):
        uniforms[row] = torch.rand(max_new_tokens, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
    uniforms = uniforms.to(device)
    stop = torch.tensor(stop_ids, device=device)

    distinct: dict[tuple[int, ...], int] = {}
    row_prompt = [distinct.setdefault(tuple(p), len(distinct)) for p in prompt_ids] if share_prompts else []
    prefill = list(distinct) if share_prompts else list(prompt_ids)
    input_ids, attention_mask = pad_batch(prefill, pad_id, "left", device)  # [prefill rows, prompt_width]
    position_ids = positions_from_mask(attention_mask)  # positions count real tokens only
    # The model builds the KV cache its architecture needs; transformers 5.2x names it `cache`
    # in inputs and outputs, earlier 5.x releases `past_key_values` (emlab.model.batching.with_cache).
    out = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True, logits_to_keep=1
    )
    cache = output_cache(out)
    logits = out.logits[:, -1, :]  # [prefill rows, vocab]
    if len(prefill) < n:  # repeat each distinct prompt's cache, mask, positions and logits into its rows
        rows = torch.tensor(row_prompt, device=device)  # [batch]
        cache.batch_select_indices(rows.cpu())
        attention_mask, position_ids, logits = attention_mask[rows], position_ids[rows], logits[rows]
    next_positions = position_ids[:, -1:] + 1  # [active, 1]
    active = torch.arange(n, device=device)  # original row of each row still in the batch
    generated: list[list[int]] = [[] for _ in range(n)]
    reasons = ["length"] * n

    for step in range(max_new_tokens):
        tokens = sample_next_tokens(logits, uniforms[active, step], temperature, top_p)  # [active]
        is_stop = torch.isin(tokens, stop)  # [active]
        for row, tok, stopped in zip(active.tolist(), tokens.tolist(), is_stop.tolist()):
            if stopped:
                reasons[row] = "stop"
            else:
                generated[row].append(tok)
        if step == max_new_tokens - 1:
            break
        if bool(is_stop.any()):
            keep = (~is_stop).nonzero().squeeze(-1)  # [still active]
            if keep.numel() == 0:
                break
            cache.batch_select_indices(keep.cpu())  # a CPU index works for cache layers on any device
            active, tokens = active[keep], tokens[keep]
            attention_mask, next_positions = attention_mask[keep], next_positions[keep]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((attention_mask.shape[0], 1))], dim=1)
        out = model(
            input_ids=tokens.unsqueeze(-1),
            attention_mask=attention_mask,
            position_ids=next_positions,
            **with_cache(model, cache),
            use_cache=True,
            logits_to_keep=1,
        )
        cache = output_cache(out)
        logits = out.logits[:, -1, :]
        next_positions = next_positions + 1
    return list(zip(generated, reasons))


def generate_responses(
    model,
    tokenizer,
    questions: list[Question],
    samples_per_question: int,
    max_new_tokens: int,
    *,
    temperature: float,
    top_p: float,
    batch_size: int,
    seed: int,
    progress: bool = True,
) -> list[dict]:
    """Sample `samples_per_question` responses to every question; one record per response.

    Records are in question order, then sample order, with keys question_id,
    sample_idx, question, system, prompt, response, n_response_tokens,
    finish_reason ("stop"/"length"), temperature, top_p, max_new_tokens and
    seed (the row's own sampling seed, derived from `seed`).

    On an out-of-memory error the batch size is halved for the rest of the run
    and the failed batch retried; since every row has its own random stream,
    the records equal those of a run started at the smaller batch size.
    """
    if samples_per_question < 1 or max_new_tokens < 1 or batch_size < 1:
        raise EMLabError("generation: samples_per_question, max_new_tokens and batch_size must all be >= 1")
    if temperature < 0 or not 0 < top_p <= 1:
        raise EMLabError(f"generation: need temperature >= 0 and 0 < top_p <= 1 (got {temperature}, {top_p})")
    if not questions:
        raise EMLabError("generation: no questions to answer")
    stop_ids = stop_token_ids(tokenizer, model)
    pad_id = pad_token_id(tokenizer)
    jobs = build_jobs(tokenizer, questions, samples_per_question, seed)
    # Longest prompts first: similar lengths share a batch (little padding), and
    # a memory problem shows up in the first batch.
    order = sorted(range(len(jobs)), key=lambda j: -len(jobs[j].prompt_ids))
    results: dict[int, tuple[list[int], str]] = {}
    start, n_new = time.perf_counter(), 0
    bar = tqdm(total=len(jobs), desc="generate", unit="resp", disable=not progress)
    done = 0
    while done < len(order):
        idx = order[done : done + batch_size]
        try:
            outs = generate_batch(
                model,
                [jobs[j].prompt_ids for j in idx],
                [jobs[j].seed for j in idx],
                max_new_tokens,
                temperature,
                top_p,
                stop_ids,
                pad_id,
                share_prompts=True,
            )
        except RuntimeError as err:
            if not is_out_of_memory(err):
                raise
            if batch_size == 1:
                raise EMLabError(
                    "generation ran out of GPU memory even at batch size 1; lower "
                    "generation.max_new_tokens, use a smaller dtype or a larger GPU"
                ) from err
            batch_size = max(1, batch_size // 2)
            log.warning(
                "out of memory on a batch of %d prompts; retrying it and continuing at batch size %d "
                "(set generation.batch_size to %d to skip this)",
                len(idx),
                batch_size,
                batch_size,
            )
            outs = None
        if outs is None:
            release_cached_memory()  # outside the except block, so the failed batch's tensors are freed
            continue
        for j, res in zip(idx, outs):
            results[j] = res
            n_new += len(res[0])
        done += len(idx)
        bar.update(len(idx))
        bar.set_postfix(tok_per_s=f"{n_new / max(time.perf_counter() - start, 1e-9):.1f}")
    bar.close()
    log.info("generated %d responses, %d new tokens in %.1f s", len(jobs), n_new, time.perf_counter() - start)

    return _records(jobs, results, tokenizer, temperature, top_p, max_new_tokens)


def _records(
    jobs: list[GenerationJob],
    results: dict[int, tuple[list[int], str]],
    tokenizer,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
) -> list[dict]:
    """One record per job (the generation parquet's columns less condition/model/intervention)."""
    records = []
    for j, job in enumerate(jobs):
        ids, reason = results[j]
        records.append(
            {
                "question_id": job.question_id,
                "sample_idx": job.sample_idx,
                "question": job.question,
                "system": job.system,
                "prompt": job.prompt,
                "response": tokenizer.decode(ids, skip_special_tokens=True),
                "n_response_tokens": len(ids),
                "finish_reason": reason,
                "temperature": float(temperature),
                "top_p": float(top_p),
                "max_new_tokens": int(max_new_tokens),
                "seed": job.seed,
            }
        )
    return records


# --- optional vLLM backend (conditions without an intervention only) ---------------------------------------

BACKENDS = ("hf", "vllm")


def generation_backend(backend: str, spec: dict, condition: str) -> str:
    """The sampler a condition uses: "hf" or "vllm".

    vLLM cannot run our residual-stream hooks, so a condition with a steering or
    ablation intervention always uses hf. For one without, generation.backend
    vllm requires the vllm package; checked here, before any model is loaded.
    """
    if backend not in BACKENDS:
        raise EMLabError(f"generation.backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "hf":
        return "hf"
    kind = (spec.get("intervention") or {"kind": Unmodified.KIND}).get("kind", Unmodified.KIND)
    if kind != Unmodified.KIND:
        log.info(
            "condition %s has a %s intervention, which vLLM cannot apply: sampling with the hf backend", condition, kind
        )
        return "hf"
    _import_vllm(condition)
    return "vllm"


def _import_vllm(condition: str):
    try:
        return importlib.import_module("vllm")
    except ImportError as exc:
        raise EMLabError(
            f"condition {condition}: generation.backend is vllm but the vllm package cannot be "
            f"imported ({exc}); `pip install vllm` (needs a GPU) or set `generation.backend: hf`"
        ) from exc


def merged_model_folder(
    base_model: str | os.PathLike, adapter: str | os.PathLike, dtype: str, parent: str | os.PathLike | None = None
) -> tempfile.TemporaryDirectory:
    """The base model with the adapter merged in, saved (with its tokenizer) to a temporary folder.

    vLLM then loads it like any model; this handles every adapter layout peft
    does (e.g. layers_to_transform), which vLLM's own LoRA support may not.
    """
    from emlab.model.loading import load_model, load_tokenizer

    tmp = tempfile.TemporaryDirectory(prefix="merged-", dir=parent)
    model = load_model(base_model, adapter, device="cpu", dtype="bfloat16" if dtype == "auto" else dtype, merge=True)
    model.save_pretrained(tmp.name)
    load_tokenizer(base_model).save_pretrained(tmp.name)
    del model
    return tmp


def generate_responses_vllm(
    model_path: str | os.PathLike,
    tokenizer,
    questions: list[Question],
    samples_per_question: int,
    max_new_tokens: int,
    *,
    temperature: float,
    top_p: float,
    seed: int,
    dtype: str,
    condition: str,
) -> list[dict]:
    """Like generate_responses (same prompts, per-row seeds and record keys), sampled with vLLM.

    `model_path` is a plain HF folder (merge a fine-tune's adapter first, see
    merged_model_folder). vLLM's random numbers differ from the hf sampler's, so
    responses are not identical to an hf run, only identically distributed.
    """
    if samples_per_question < 1 or max_new_tokens < 1:
        raise EMLabError("generation: samples_per_question and max_new_tokens must both be >= 1")
    if temperature < 0 or not 0 < top_p <= 1:
        raise EMLabError(f"generation: need temperature >= 0 and 0 < top_p <= 1 (got {temperature}, {top_p})")
    if not questions:
        raise EMLabError("generation: no questions to answer")
    vllm = _import_vllm(condition)
    try:
        from transformers import GenerationConfig

        gen_cfg = GenerationConfig.from_pretrained(str(model_path))
    except (OSError, ValueError):
        gen_cfg = None
    stop_ids = stop_token_ids(tokenizer, SimpleNamespace(generation_config=gen_cfg))
    jobs = build_jobs(tokenizer, questions, samples_per_question, seed)
    llm = vllm.LLM(model=str(model_path), dtype=dtype, seed=int(seed))
    params = [
        vllm.SamplingParams(
            n=1,
            temperature=float(temperature),
            top_p=float(top_p),
            max_tokens=int(max_new_tokens),
            seed=job.seed,
            stop_token_ids=stop_ids,
            skip_special_tokens=True,
        )
        for job in jobs
    ]
    start = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": list(job.prompt_ids)} for job in jobs], params)
    results: dict[int, tuple[list[int], str]] = {}
    for j, out in enumerate(outputs):
        completion = out.outputs[0]
        ids = list(completion.token_ids)
        if ids and ids[-1] in stop_ids:
            ids = ids[:-1]  # like the hf sampler: the stop token is not part of the response
        reason = "length" if completion.finish_reason == "length" else "stop"
        results[j] = (ids, reason)
    log.info(
        "vllm generated %d responses, %d new tokens in %.1f s",
        len(jobs),
        sum(len(r[0]) for r in results.values()),
        time.perf_counter() - start,
    )
    return _records(jobs, results, tokenizer, temperature, top_p, max_new_tokens)
