"""The torch runtime a result was computed with: its intra-op thread count pinned for a block, and the
run metadata (seed, device, dtype, threads, versions) that generation and judgment parquets carry
(emlab.core.provenance encodes and reads it)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from emlab.core.provenance import encode_metadata, read_metadata
from emlab.model.loading import resolve_device, resolve_dtype


def run_metadata(seed: int | None, device: str, dtype: str, **extra) -> dict[str, str]:
    """Parquet key-value metadata: seed, device, dtype, torch's current intra-op thread
    count and the versions of python, torch, transformers and peft (plus `extra`)."""
    return encode_metadata(seed=seed, device=device, dtype=dtype, torch_threads=torch.get_num_threads(), **extra)


@contextlib.contextmanager
def pinned_threads(n: int | None) -> Iterator[int]:
    """Run the block with torch's intra-op thread count set to `n` (None: leave it as it is,
    i.e. the job's threads); yields the count in effect and restores the previous one."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def judgment_metadata(responses_path: str | os.PathLike, judge_params: dict, device: str) -> dict[str, str]:
    """run_metadata for a judgments parquet: the seed of the judged responses (from their
    parquet's metadata; null when it has none), and the judge's device and dtype (hf backend;
    "remote" for an API judge); a condition recorded as n/a keeps its reason (na_reason)."""
    backend = judge_params["backend"]
    responses_meta = read_metadata(responses_path)
    seed = responses_meta.get("seed")
    extra = {k: responses_meta[k] for k in ("na_reason", "na_condition") if k in responses_meta}
    if backend == "hf":
        dev = resolve_device(device)
        return run_metadata(
            seed,
            str(dev),
            str(resolve_dtype(judge_params["hf"]["dtype"], dev)).replace("torch.", ""),
            backend=backend,
            **extra,
        )
    return run_metadata(seed, "remote", "remote", backend=backend, **extra)
