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
  {"kind": "adapter_project", "vector": SRC, "layer": L}
      a weights edit, not a hook: v_L (of SRC) is projected out of the B
      vector of the model's single rank-1 down_proj adapter (renormalised to
      B's norm) before the adapter is merged (see adapter_edit and
      emlab.single_adapter).
  A steer spec may name "split": a semantic vector; it only selects which
  direction file is loaded (rules/common.smk direction_file).
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
    if kind == "adapter_project":
        _layer(spec, n_layers)
        return "none", {}  # already applied to the weights by adapter_edit at load time
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
    raise EMLabError(f"unknown intervention kind {kind!r} (none, steer, ablate, adapter_project)")


def adapter_edit(spec: dict, vectors: torch.Tensor | None):
    """For an adapter_project spec, the edit to apply to the (unmerged) peft model; None for other kinds."""
    if spec.get("kind") != "adapter_project":
        return None
    if vectors is None:
        raise EMLabError(f"intervention {spec} needs a direction file")
    from .single_adapter import apply_adapter_projection

    return lambda peft_model: apply_adapter_projection(peft_model, vectors, int(spec["layer"]))


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
