"""Interventions as data: a JSON-able spec (it travels through Snakemake
params) turned into residual-stream edits on a loaded model.

Specs:
  {"kind": "none"}
  {"kind": "steer", "vector": SRC, "layer": L, "scale": lam}
      add lam * v_L (of fine-tune SRC) after block L.
  {"kind": "ablate", "vector": SRC, "mode": "layerwise"}
      project v_l out after every block l (each layer its own direction).
  {"kind": "ablate", "vector": SRC, "mode": "single", "layer": L}
      project v_L out after every block.
  {"kind": "ablate", "vector": SRC, "mode": "random", "layer": L, "seed": s}
      control: a random direction with the norm of v_L, projected out after
      every block. (Projection ignores the norm; the norm is recorded so the
      control is the same object the paper describes, and steering controls can
      reuse it.)
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from . import hooks
from .errors import EMLabError


def random_like(vector: torch.Tensor, seed: int) -> torch.Tensor:
    """A random direction with the same norm as `vector` (Gaussian, seeded).

    The norm is matched exactly; the reference code's baseline was ~sqrt(d) too large.
    """
    gen = torch.Generator().manual_seed(int(seed))
    r = torch.randn(vector.shape, generator=gen, dtype=torch.float32)
    return r / r.norm() * vector.float().norm()


def build_edits(spec: dict, vectors: torch.Tensor | None, n_layers: int) -> tuple[str, dict[int, torch.Tensor]]:
    """Return (operation, {layer: vector}) for a spec; vectors is [n_layers, d_model]."""
    kind = spec.get("kind", "none")
    if kind == "none":
        return "none", {}
    if vectors is None:
        raise EMLabError(f"intervention {spec} needs a direction file")
    if vectors.shape[0] != n_layers:
        raise EMLabError(f"direction file has {vectors.shape[0]} layers but the model has {n_layers}")
    if kind == "steer":
        layer = _layer(spec, n_layers)
        return "steer", {layer: float(spec["scale"]) * vectors[layer].float()}
    if kind == "ablate":
        mode = spec.get("mode")
        if mode == "layerwise":
            return "ablate", {l: vectors[l].float() for l in range(n_layers)}
        if mode == "single":
            v = vectors[_layer(spec, n_layers)].float()
            return "ablate", {l: v for l in range(n_layers)}
        if mode == "random":
            v = random_like(vectors[_layer(spec, n_layers)], int(spec.get("seed", 0)))
            return "ablate", {l: v for l in range(n_layers)}
        raise EMLabError(f"unknown ablation mode {mode!r} (layerwise, single, random)")
    raise EMLabError(f"unknown intervention kind {kind!r} (none, steer, ablate)")


def _layer(spec: dict, n_layers: int) -> int:
    layer = int(spec["layer"])
    if not 0 <= layer < n_layers:
        raise EMLabError(f"intervention layer {layer} is out of range for a {n_layers}-layer model")
    return layer


@contextlib.contextmanager
def apply_intervention(model, spec: dict, vectors: torch.Tensor | None) -> Iterator[None]:
    """Context manager: the model with the intervention applied (hooks removed after)."""
    from .models import num_layers

    op, edits = build_edits(spec, vectors, num_layers(model))
    if op == "none":
        yield
    elif op == "steer":
        with hooks.steer(model, edits):
            yield
    else:
        with hooks.ablate(model, edits):
            yield
