"""Interventions on rank-1 LoRA adapters (Soligo et al. section 4.3 and appendix J).

Adapter steering (`scale_adapters`): multiply chosen adapters' contribution by a
factor and zero (or keep) the others, by temporarily setting peft's per-adapter
`scaling` (always restored). It acts on the weights' effect, not on positions,
so it is exact in batched, left-padded, KV-cached generation; merging the model
inside the context bakes the factors into the merged weights.

Scalar patching (`generate_patched`): generate with the fine-tune while, at the
*prompt* positions, every adapter's scalar s = A·x is replaced by the one
recorded for a donor prompt (`prompt_scalars`, the fine-tune teacher-forced over
the donor prompt alone). Decoding steps stay unpatched. Position mapping
(`donor_positions`):
  - "end": the prompts are aligned at their last token (the assistant header
    lines up); recipient position i takes donor position i - (n_r - n_d);
  - "start": aligned at the first token; recipient position i takes donor
    position i.
A recipient position with no donor counterpart (the donor prompt is shorter)
keeps its own scalar. In a batch the prefill is one forward over the
left-padded prompts: the hook patches that forward only (checked: exactly one
per adapter, of the batch's prompt width), so the KV cache holds the patched
prompt and every decoding step runs the fine-tune unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from emlab.core.errors import EMLabError
from emlab.lora.scalars import Rank1Adapter, edit_scalars, rank1_adapters, read_scalars
from emlab.model.batching import pad_batch, pad_token_id, positions_from_mask
from emlab.model.loading import model_device
from emlab.plan.roles import OTHERS, AdapterScaling

log = logging.getLogger(__name__)

ALIGNMENTS = ("end", "start")


# --------------------------------------------------------------------------- adapter steering


@contextlib.contextmanager
def scale_adapters(model, scaling: AdapterScaling, where: str = "adapter steering") -> Iterator[None]:
    """peft's scaling of each listed adapter x its factor, the others x 0 ("zero") or x 1 ("keep"); restored after."""
    if scaling.others not in OTHERS:
        raise EMLabError(f"{where}: `others` must be one of {OTHERS}, got {scaling.others!r}")
    adapters = {ad.name: ad for ad in rank1_adapters(model, where)}
    unknown = sorted(set(scaling.factors) - set(adapters))
    if unknown:
        raise EMLabError(f"{where}: adapter(s) {unknown} do not exist; the model's adapters are {sorted(adapters)}")
    saved = {name: ad.module.scaling[ad.adapter] for name, ad in adapters.items()}
    try:
        for name, ad in adapters.items():
            factor = scaling.factors.get(name, 0.0 if scaling.others == "zero" else 1.0)
            ad.module.scaling[ad.adapter] = saved[name] * float(factor)
        yield
    finally:
        for name, ad in adapters.items():
            ad.module.scaling[ad.adapter] = saved[name]


# --------------------------------------------------------------------------- scalar patching


def donor_positions(n_recipient: int, n_donor: int, align: str) -> np.ndarray:
    """For each recipient prompt position, the donor position whose scalars it takes (-1: keep its own)."""
    if align not in ALIGNMENTS:
        raise EMLabError(f"scalar patching: align must be one of {ALIGNMENTS}, got {align!r}")
    pos = np.arange(n_recipient)
    src = pos - (n_recipient - n_donor) if align == "end" else pos.copy()
    src[(src < 0) | (src >= n_donor)] = -1
    return src


@torch.inference_mode()
def prompt_scalars(
    model, prompts: list[tuple[int, ...]], batch_size: int, pad_id: int, adapters: list[Rank1Adapter] | None = None
) -> list[np.ndarray]:
    """Every adapter's scalars over each prompt alone (teacher-forced): [len(prompt), n_adapters] float32 each."""
    adapters = adapters or rank1_adapters(model)
    device = model_device(model)
    out: list[np.ndarray | None] = [None] * len(prompts)
    state: dict = {}

    def record(i: int, s: torch.Tensor) -> None:
        state["buf"][:, :, i] = s.float()

    order = sorted(range(len(prompts)), key=lambda j: -len(prompts[j]))
    with read_scalars(adapters, record):
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            ids, mask = pad_batch([prompts[j] for j in idx], pad_id, "left", device)
            state["buf"] = torch.zeros((*ids.shape, len(adapters)), dtype=torch.float32, device=device)
            model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions_from_mask(mask),
                use_cache=False,
                logits_to_keep=1,
            )
            buf = state.pop("buf").cpu().numpy()
            for row, j in enumerate(idx):
                out[j] = buf[row, ids.shape[1] - len(prompts[j]) :].copy()
    return out  # type: ignore[return-value]


def patch_values(
    prompts: list[tuple[int, ...]], donors: list[np.ndarray], align: str, n_adapters: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (values [batch, width, n_adapters], patch mask [batch, width]) for one batch of prompts."""
    width = max(len(p) for p in prompts)
    values = torch.zeros((len(prompts), width, n_adapters), dtype=torch.float32)
    mask = torch.zeros((len(prompts), width), dtype=torch.bool)
    for row, (p, d) in enumerate(zip(prompts, donors)):
        d = np.asarray(d, dtype=np.float32)
        if d.ndim != 2 or d.shape[1] != n_adapters:
            raise EMLabError(f"scalar patching: donor scalars of shape {d.shape} do not fit {n_adapters} adapters")
        src = donor_positions(len(p), len(d), align)
        off = width - len(p)
        keep = src >= 0
        values[row, off + np.flatnonzero(keep)] = torch.from_numpy(d[src[keep]])
        mask[row, off + np.flatnonzero(keep)] = True
    return values, mask


@contextlib.contextmanager
def patch_prefill(adapters: list[Rank1Adapter], values: torch.Tensor, mask: torch.Tensor) -> Iterator[None]:
    """Patch the scalars of the first forward through each adapter (the prefill, [batch, width]) only.

    Later forwards (KV-cached decoding steps) pass unchanged. Leaving the context
    without a prefill through every adapter, or a first forward of another shape,
    is an error: the patch would silently miss.
    """
    done: set[int] = set()
    cache: dict = {}

    def fn(i: int, s: torch.Tensor):
        if i in done:
            return None
        if tuple(s.shape) != tuple(mask.shape):
            raise EMLabError(
                f"scalar patching: the first forward through adapter {adapters[i].name} has shape "
                f"{tuple(s.shape)}, not the prompt batch {tuple(mask.shape)}"
            )
        done.add(i)
        if s.device not in cache:
            cache[s.device] = (values.to(s.device), mask.to(s.device))
        v, m = cache[s.device]
        return torch.where(m, v[:, :, i].to(s.dtype), s)

    with edit_scalars(adapters, fn):
        yield
    if len(done) != len(adapters):
        raise EMLabError(f"scalar patching: only {len(done)} of {len(adapters)} adapters saw the prompt")


@dataclass(frozen=True)
class PatchSampling:
    """Sampling of patched generations (the generation config's values)."""

    max_new_tokens: int
    temperature: float
    top_p: float
    batch_size: int


def generate_patched(
    model,
    prompts: list[tuple[int, ...]],
    donors: list[np.ndarray],
    seeds: list[int],
    sampling: PatchSampling,
    align: str,
    stop_ids: list[int],
    pad_id: int,
    progress: bool = False,
) -> list[tuple[list[int], str]]:
    """Sample one continuation per recipient prompt with its prompt scalars patched from its donor's.

    `donors[j]` is prompt_scalars of prompt j's donor. Rows are batched by
    length through emlab.em.generation.generate_batch (each row's own random
    stream, so results do not depend on the batching); returns (new token ids,
    finish_reason) per prompt, in the given order.
    """
    from tqdm.auto import tqdm

    from emlab.em.generation import generate_batch

    if not len(prompts) == len(donors) == len(seeds):
        raise EMLabError("scalar patching: need one donor and one seed per prompt")
    adapters = rank1_adapters(model)
    order = sorted(range(len(prompts)), key=lambda j: -len(prompts[j]))
    out: list = [None] * len(prompts)
    start = time.perf_counter()
    bar = tqdm(total=len(prompts), desc="patched generate", unit="resp", disable=not progress)
    for b in range(0, len(order), sampling.batch_size):
        idx = order[b : b + sampling.batch_size]
        values, mask = patch_values([prompts[j] for j in idx], [donors[j] for j in idx], align, len(adapters))
        with patch_prefill(adapters, values, mask):
            res = generate_batch(
                model,
                [prompts[j] for j in idx],
                [seeds[j] for j in idx],
                sampling.max_new_tokens,
                sampling.temperature,
                sampling.top_p,
                stop_ids,
                pad_id,
            )
        for j, r in zip(idx, res):
            out[j] = r
        bar.update(len(idx))
    bar.close()
    log.info("patched generation: %d responses in %.1f s", len(prompts), time.perf_counter() - start)
    return out


def patched_responses(
    model,
    tokenizer,
    condition,
    general: list,
    medical: list,
    *,
    samples_per_question: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    batch_size: int,
    seed: int,
) -> list[dict]:
    """The records of a ScalarPatching condition (emlab.plan.conditions.scalar_patching): every recipient
    question x sample, answered with its prompt scalars taken from its donor question's prompt.

    Rows are the generation records of emlab.em.generation (the recipient's question, prompt and sampling
    seed, so the `same` pair repeats the unpatched unmerged fine-tune's sampling exactly). The donor of
    sample i is the donor question's own prompt for sample i (its paraphrase i, if it has variants).
    """
    from emlab.em.generation import _records, build_jobs, stop_token_ids

    ids = [q.id for q in general] + [q.id for q in medical]
    clash = sorted({i for i in ids if ids.count(i) > 1})
    if clash:
        raise EMLabError(
            f"scalar patching: question id(s) {clash} appear in both the evaluation and the medical question "
            "file (or twice in one); ids must be unique across both"
        )
    sets = {"general": general, "medical": medical}
    pairs = condition.donor_indices(len(general), len(medical))
    recipients = [sets[rs][ri] for rs, ri, _, _ in pairs]
    donor_qs = [sets[ds][di] for _, _, ds, di in pairs]
    jobs = build_jobs(tokenizer, recipients, samples_per_question, seed)
    donor_jobs = build_jobs(tokenizer, donor_qs, samples_per_question, seed)  # same order: job k <- donor job k
    pad_id = pad_token_id(tokenizer)
    unique = list(dict.fromkeys(j.prompt_ids for j in donor_jobs))
    scalars = dict(zip(unique, prompt_scalars(model, unique, batch_size, pad_id)))
    out = generate_patched(
        model,
        [j.prompt_ids for j in jobs],
        [scalars[d.prompt_ids] for d in donor_jobs],
        [j.seed for j in jobs],
        PatchSampling(max_new_tokens, temperature, top_p, batch_size),
        condition.align,
        stop_token_ids(tokenizer, model),
        pad_id,
        progress=True,
    )
    log.info(
        "scalar patching %s: %d recipient questions x %d samples (%s)",
        condition.pair,
        len(recipients),
        samples_per_question,
        ", ".join(f"{r.id}<-{d.id}" for r, d in zip(recipients, donor_qs)),
    )
    return _records(jobs, dict(enumerate(out)), tokenizer, temperature, top_p, max_new_tokens)


@torch.inference_mode()
def reference_patched_generation(
    model,
    prompt: tuple[int, ...],
    donor: np.ndarray,
    align: str,
    max_new_tokens: int,
    uniforms: torch.Tensor,
    temperature: float,
    top_p: float,
    stop_ids: list[int],
) -> list[int]:
    """The slow, independent definition: one row, no padding, no KV cache; each step re-runs the whole
    sequence with the prompt positions' scalars patched. Returns the new tokens (stop token excluded)."""
    from emlab.em.generation import sample_next_tokens

    adapters = rank1_adapters(model)
    device = model_device(model)
    src = donor_positions(len(prompt), len(donor), align)
    keep = np.flatnonzero(src >= 0)
    patch = torch.from_numpy(np.asarray(donor, dtype=np.float32)[src[keep]]).to(device)  # [n_keep, n_adapters]
    keep_t = torch.from_numpy(keep).to(device)

    def fn(i: int, s: torch.Tensor):
        s = s.clone()
        s[0, keep_t] = patch[:, i].to(s.dtype)
        return s

    seq = list(prompt)
    new: list[int] = []
    with edit_scalars(adapters, fn):
        for step in range(max_new_tokens):
            logits = model(input_ids=torch.tensor([seq], device=device), use_cache=False).logits[:, -1, :]
            tok = int(sample_next_tokens(logits, uniforms[step : step + 1].to(device), temperature, top_p)[0])
            if tok in stop_ids:
                break
            new.append(tok)
            seq.append(tok)
    return new
