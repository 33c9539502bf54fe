"""Each condition kind applied to a loaded model. The kinds themselves (ids,
specs, groups, labels) are values in emlab.plan.conditions, which import no
torch; this package holds what each does to a model, registered per kind:

  edits          {layer: vector} of a kind's residual-stream hook (steering adds, ablation projects out)
  apply          the model with the kind applied, as a context manager (hooks removed after)
  before_merge   an edit of the unmerged peft model at load time (the adapter projection)
  generate.py    all responses of one condition: load, apply, sample (emlab.em.generation)

A new kind registers its `edits` (and, where a hook is not enough, its `apply` or
`before_merge`) here with `@edits.register`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import singledispatch

import torch

from emlab.core.errors import EMLabError
from emlab.lora.patching import scale_adapters
from emlab.lora.single_adapter import apply_adapter_projection
from emlab.model import hooks
from emlab.model.loading import num_layers
from emlab.plan.conditions import (
    AdapterProjection,
    AdapterSteering,
    Condition,
    LayerwiseAblation,
    RandomAblation,
    ScalarPatching,
    SingleAblation,
    Steer,
    as_condition,
)
from emlab.plan.roles import AdapterScaling


def random_like(vector: torch.Tensor, seed: int) -> torch.Tensor:
    """A random direction with the same norm as `vector` (Gaussian, seeded).

    The norm is matched exactly; the reference code's baseline was ~sqrt(d) too large.
    """
    gen = torch.Generator().manual_seed(int(seed))
    r = torch.randn(vector.shape, generator=gen, dtype=torch.float32)
    return r / r.norm() * vector.float().norm()


def _vectors(condition: Condition, vectors: torch.Tensor | None, n_layers: int) -> torch.Tensor:
    if vectors is None:
        raise EMLabError(f"intervention {condition.intervention()} needs a direction file")
    if vectors.shape[0] != n_layers:
        raise EMLabError(f"direction file has {vectors.shape[0]} layers but the model has {n_layers}")
    return vectors


# -- the residual-stream edit of each kind ------------------------------------------------------------
@singledispatch
def edits(condition: Condition, vectors: torch.Tensor | None, n_layers: int) -> dict[int, torch.Tensor]:
    """{layer: vector} for the residual-stream hook (the kind's OPERATION); vectors is [n_layers, d_model].
    Kinds without a hook edit nothing."""
    return {}


@edits.register
def _(condition: Steer, vectors, n_layers):
    vectors = _vectors(condition, vectors, n_layers)
    layer = condition.check_layer(condition.layer, n_layers)
    return {layer: condition.scale * vectors[layer].float()}


@edits.register
def _(condition: LayerwiseAblation, vectors, n_layers):
    vectors = _vectors(condition, vectors, n_layers)
    return {layer: vectors[layer].float() for layer in range(n_layers)}


@edits.register
def _(condition: SingleAblation, vectors, n_layers):  # a transfer too: the same spec, another group
    v = _vectors(condition, vectors, n_layers)[condition.check_layer(condition.layer, n_layers)].float()
    return {layer: v for layer in range(n_layers)}


@edits.register
def _(condition: RandomAblation, vectors, n_layers):
    v = _vectors(condition, vectors, n_layers)[condition.check_layer(condition.layer, n_layers)]
    v = random_like(v, condition.seed)
    return {layer: v for layer in range(n_layers)}


@edits.register
def _(condition: AdapterProjection, vectors, n_layers):
    condition.check_layer(condition.layer, n_layers)
    return {}  # applied to the weights by before_merge at load time


# -- the model with a kind applied ---------------------------------------------------------------------
_HOOKS = {"steer": hooks.steer, "ablate": hooks.ablate}


@singledispatch
def apply(condition: Condition, model, vectors: torch.Tensor | None) -> AbstractContextManager[None]:
    """The model with the condition applied, as a context manager: its residual-stream hook, if any."""
    changes = edits(condition, vectors, num_layers(model))  # validates
    if condition.OPERATION in _HOOKS:
        return _HOOKS[condition.OPERATION](model, changes)
    return contextlib.nullcontext()


@apply.register
def _(condition: AdapterSteering, model, vectors):
    if not condition.resolved:
        raise EMLabError(
            f"condition {condition.condition_id}: its adapters come from the fine-tune's roles.json "
            "(lora_interp.roles.source rule); resolve it with AdapterSteering.with_roles before applying it"
        )
    return scale_adapters(
        model, AdapterScaling(dict(condition.factors), condition.others), where=f"condition {condition.condition_id}"
    )


@apply.register
def _(condition: ScalarPatching, model, vectors):
    raise EMLabError(
        f"condition {condition.condition_id}: scalar patching is not a hook around ordinary sampling; "
        "generate it with emlab.lora.patching.patched_responses"
    )


@singledispatch
def before_merge(condition: Condition, vectors: torch.Tensor | None) -> Callable | None:
    """An edit of the unmerged peft model applied at load time (model.loading.load_model), or None."""
    return None


@before_merge.register
def _(condition: AdapterProjection, vectors):
    if vectors is None:
        raise EMLabError(f"intervention {condition.intervention()} needs a direction file")
    layer = condition.layer
    return lambda peft_model: apply_adapter_projection(peft_model, vectors, layer)


# -- entry points taking a Condition, its params form or a bare spec ---------------------------------------
def apply_intervention(model, spec, vectors: torch.Tensor | None) -> AbstractContextManager[None]:
    """Context manager: the model with a condition's intervention applied (hooks removed after).
    `spec`: a Condition, its params form or a bare intervention spec."""
    return apply(as_condition(spec), model, vectors)


def adapter_edit(spec, vectors: torch.Tensor | None) -> Callable | None:
    """The edit to apply to the (unmerged) peft model at load time; None for kinds without one."""
    return before_merge(as_condition(spec), vectors)


def build_edits(spec, vectors: torch.Tensor | None, n_layers: int) -> tuple[str, dict[int, torch.Tensor]]:
    """(operation, {layer: vector}) of a condition's residual-stream hook; operation steer, ablate or none."""
    condition = as_condition(spec)
    changes = edits(condition, vectors, n_layers)
    return (condition.OPERATION if changes else "none"), changes


__all__ = ["adapter_edit", "apply", "apply_intervention", "before_merge", "build_edits", "edits", "random_like"]
