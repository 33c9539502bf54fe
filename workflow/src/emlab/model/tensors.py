"""Tensors on disk: safetensors files written atomically (emlab.core.atomic), with JSON metadata.
Nothing loaded runs code (no pickle)."""

from __future__ import annotations

import json
import os

from safetensors import safe_open
from safetensors.torch import save_file

from emlab.core.atomic import atomic_path


def save_tensors(path: str | os.PathLike, tensors: dict, metadata: dict | None = None) -> None:
    """Save a dict of torch tensors as safetensors atomically (metadata values become strings)."""
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)


def load_tensors(path: str | os.PathLike) -> tuple[dict, dict]:
    """Load safetensors written by save_tensors: (tensors, metadata with JSON decoded)."""
    tensors = {}
    with safe_open(str(path), framework="pt") as f:
        raw_meta = f.metadata() or {}
        for key in f.keys():
            tensors[key] = f.get_tensor(key)
    meta = {}
    for k, v in raw_meta.items():
        try:
            meta[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            meta[k] = v
    return tensors, meta
