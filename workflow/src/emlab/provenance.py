"""What a result depends on beyond its inputs, recorded next to it.

Sampling is reproducible for the same seed, device, dtype, torch intra-op
thread count and library versions: a different thread count reduces the
matmuls in another order, and at temperature 1 a last-bit difference can pick
another token. Generation and judgment parquets carry these as key-value
schema metadata (`run_metadata`, read back with `read_metadata`), so two runs
can be told apart without changing the table data. `pinned_threads` fixes the
intra-op thread count of a block independently of the job's cores
(generation.threads).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
from collections.abc import Iterator

PREFIX = "emlab."
PACKAGES = ("torch", "transformers", "peft")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def run_metadata(seed: int | None, device: str, dtype: str, **extra) -> dict[str, str]:
    """Parquet key-value metadata: seed, device, dtype, torch's current intra-op thread
    count and the versions of python, torch, transformers and peft (plus `extra`)."""
    import torch

    fields = {
        "seed": seed,
        "device": device,
        "dtype": dtype,
        "torch_threads": torch.get_num_threads(),
        "python_version": platform.python_version(),
        **{f"{p}_version": _version(p) for p in PACKAGES},
        **extra,
    }
    return {PREFIX + k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}


def read_metadata(path: str | os.PathLike) -> dict:
    """The run metadata of a parquet written with run_metadata (prefix stripped, JSON decoded)."""
    import pyarrow.parquet as pq

    raw = pq.read_schema(str(path)).metadata or {}
    out = {}
    for key, value in raw.items():
        key, value = key.decode(), value.decode()
        if key.startswith(PREFIX):
            try:
                out[key[len(PREFIX) :]] = json.loads(value)
            except json.JSONDecodeError:
                out[key[len(PREFIX) :]] = value
    return out


@contextlib.contextmanager
def pinned_threads(n: int | None) -> Iterator[int]:
    """Run the block with torch's intra-op thread count set to `n` (None: leave it as it is,
    i.e. the job's threads); yields the count in effect and restores the previous one."""
    import torch

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
        from .models import resolve_device, resolve_dtype

        dev = resolve_device(device)
        return run_metadata(
            seed,
            str(dev),
            str(resolve_dtype(judge_params["hf"]["dtype"], dev)).replace("torch.", ""),
            backend=backend,
            **extra,
        )
    return run_metadata(seed, "remote", "remote", backend=backend, **extra)
