"""Forward hooks on the residual stream (the output of each decoder block).

Every hook is installed by a context manager that always removes it, and every
edit acts position-wise, so the same hooks work in a full forward pass, in
batched left-padded generation and in KV-cached decoding steps (where the block
sees only the newest token).

Layer index l means "the residual stream after decoder block l" (0-based); this
is where activations are read, directions live, and steering/ablation act.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

import torch

from emlab.core.errors import EMLabError
from emlab.model.loading import decoder_layers

ResidualFn = Callable[[torch.Tensor], torch.Tensor]  # [batch, seq, d_model] -> same


def _check_layers(model, layers) -> torch.nn.ModuleList:
    blocks = decoder_layers(model)
    for layer in layers:
        if not 0 <= int(layer) < len(blocks):
            raise EMLabError(
                f"layer index {layer} is out of range: the model has {len(blocks)} layers (0..{len(blocks) - 1})"
            )
    return blocks


@contextlib.contextmanager
def edit_residual(model, edits: Mapping[int, ResidualFn]) -> Iterator[None]:
    """Replace the output of block l by edits[l](output) for each l in `edits`."""
    blocks = _check_layers(model, edits)
    handles = []

    def make_hook(fn: ResidualFn):
        def hook(_module, _inputs, output):
            if isinstance(output, tuple):
                return (fn(output[0]),) + tuple(output[1:])
            return fn(output)

        return hook

    try:
        for layer, fn in edits.items():
            handles.append(blocks[int(layer)].register_forward_hook(make_hook(fn)))
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def read_residual(model, layers, callback: Callable[[int, torch.Tensor], None]) -> Iterator[None]:
    """Call callback(layer, hidden [batch, seq, d_model]) on each listed block's output."""
    blocks = _check_layers(model, layers)
    handles = []

    def make_hook(layer: int):
        def hook(_module, _inputs, output):
            callback(layer, output[0] if isinstance(output, tuple) else output)

        return hook

    try:
        for layer in layers:
            handles.append(blocks[int(layer)].register_forward_hook(make_hook(int(layer))))
        yield
    finally:
        for h in handles:
            h.remove()


def _on(tensor: torch.Tensor, cache: dict, device, dtype) -> torch.Tensor:
    """`tensor` on (device, dtype), converted once per pair: a decoding step must not pay a copy."""
    key = (device, dtype)
    if key not in cache:
        cache[key] = tensor.to(device=device, dtype=dtype)
    return cache[key]


def add_vector(vector: torch.Tensor) -> ResidualFn:
    """x -> x + vector at every position (steering); `vector` already scaled."""
    cache: dict = {}

    def fn(hidden: torch.Tensor) -> torch.Tensor:
        return hidden + _on(vector, cache, hidden.device, hidden.dtype)

    return fn


def project_out(direction: torch.Tensor) -> ResidualFn:
    """x -> x - v_hat v_hat^T x at every position (directional ablation)."""
    unit = direction.float() / direction.float().norm().clamp_min(1e-12)
    cache: dict = {}

    def fn(hidden: torch.Tensor) -> torch.Tensor:
        u = _on(unit, cache, hidden.device, torch.float32)
        h32 = hidden.float()
        coef = h32 @ u  # [batch, seq]
        return (h32 - coef.unsqueeze(-1) * u).to(hidden.dtype)

    return fn


@contextlib.contextmanager
def steer(model, vectors: Mapping[int, torch.Tensor]) -> Iterator[None]:
    """Add vectors[l] to the residual stream after block l at every position."""
    with edit_residual(model, {l: add_vector(v) for l, v in vectors.items()}):
        yield


@contextlib.contextmanager
def ablate(model, directions: Mapping[int, torch.Tensor]) -> Iterator[None]:
    """Project directions[l] out of the residual stream after block l."""
    with edit_residual(model, {l: project_out(v) for l, v in directions.items()}):
        yield
