"""What a result depends on beyond its inputs, recorded next to it.

Sampling is reproducible for the same seed, device, dtype, torch intra-op
thread count and library versions: a different thread count reduces the
matmuls in another order, and at temperature 1 a last-bit difference can pick
another token. Generation and judgment parquets carry these as key-value
schema metadata (emlab.model.runtime.run_metadata, encoded here and read back
with `read_metadata`), so two runs can be told apart without changing the
table data.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform

PREFIX = "emlab."
PACKAGES = ("torch", "transformers", "peft")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def encode_metadata(seed: int | None, device: str, dtype: str, torch_threads: int, **extra) -> dict[str, str]:
    """Parquet key-value metadata: seed, device, dtype, the torch intra-op thread count and the versions of
    python, torch, transformers and peft (plus `extra`); keys prefixed, values JSON (strings as they are)."""
    fields = {
        "seed": seed,
        "device": device,
        "dtype": dtype,
        "torch_threads": torch_threads,
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


def na_record(path: str | os.PathLike, meta: dict | None = None) -> tuple[str, str] | None:
    """(condition, reason) of a table recorded n/a (empty, its metadata's na_reason saying why and na_condition
    naming it; the file name when that is missing), or None for any other table. `meta`: read_metadata(path)."""
    meta = read_metadata(path) if meta is None else meta
    if not meta.get("na_reason"):
        return None
    return str(meta.get("na_condition") or os.path.basename(str(path)).removesuffix(".parquet")), str(meta["na_reason"])
