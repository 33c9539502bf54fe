"""Study conditions as typed objects: which model, what is done to it, its
condition id, its JSON spec (through Snakemake params into the generation
tables), how it is applied to a loaded model, and its names in figures and
tables. The plan (emlab.plan) builds them from the config.

  condition.py   the shared shape (Condition), the registry, parse_condition_id, from_params
  unmodified.py  Unmodified (base / fine-tune as trained), Checkpoint (a saved training step),
                 MonitorLabel (a checkpoint of a trait-monitor calibration run)
  steering.py    Steer
  ablation.py    LayerwiseAblation, SingleAblation, RandomAblation, Transfer
  adapter.py     AdapterProjection (a weights edit of a rank-1 adapter)
  adapter_steering.py  AdapterSteering (rank-1 adapters' contributions scaled, unmerged model)
  scalar_patching.py   ScalarPatching (rank-1 adapters' prompt scalars taken from a donor prompt)
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from .ablation import (
    Ablation,
    LayerwiseAblation,
    RandomAblation,
    SingleAblation,
    Transfer,
    random_like,
)
from .adapter import AdapterProjection
from .adapter_steering import AdapterSteering
from .condition import Condition, as_condition, from_params, kinds, parse_condition_id
from .scalar_patching import ScalarPatching
from .steering import Steer, format_scale
from .unmodified import Checkpoint, MonitorLabel, Unmodified

if TYPE_CHECKING:  # torch is imported where a model is edited, not when the plan is built
    import torch


def apply_intervention(model, spec, vectors: torch.Tensor | None) -> AbstractContextManager[None]:
    """Context manager: the model with a condition's intervention applied (hooks removed after).
    `spec`: a Condition, its params form or a bare intervention spec."""
    return as_condition(spec).apply(model, vectors)


def adapter_edit(spec, vectors: torch.Tensor | None) -> Callable | None:
    """The edit to apply to the (unmerged) peft model at load time; None for kinds without one."""
    return as_condition(spec).before_merge(vectors)


def build_edits(spec, vectors: torch.Tensor | None, n_layers: int) -> tuple[str, dict[int, torch.Tensor]]:
    """(operation, {layer: vector}) of a condition's residual-stream hook; operation steer, ablate or none."""
    condition = as_condition(spec)
    edits = condition.edits(vectors, n_layers)
    return (condition.OPERATION if edits else "none"), edits


__all__ = [
    "Ablation",
    "AdapterProjection",
    "AdapterSteering",
    "Checkpoint",
    "Condition",
    "LayerwiseAblation",
    "MonitorLabel",
    "RandomAblation",
    "ScalarPatching",
    "SingleAblation",
    "Steer",
    "Transfer",
    "Unmodified",
    "adapter_edit",
    "apply_intervention",
    "as_condition",
    "build_edits",
    "format_scale",
    "from_params",
    "kinds",
    "parse_condition_id",
    "random_like",
]
