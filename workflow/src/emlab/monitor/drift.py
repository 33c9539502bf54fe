"""Activation drift of a fine-tune along trait directions (docs/trait-monitoring.md).

At every checkpoint t the measurement prompts run through the model once
(left-padded batches, last prompt token only, one layer): their mean activation
h̄_t [d]. With step 0 = the base model,
    drift_t      = B (h̄_t - h̄_0) / mean_i ||h_{0,i}||    for a basis B [k, d]
    drift_norm_t = ||h̄_t - h̄_0|| / ||h̄_0||
and Δh̄_t = h̄_t - h̄_0 [d] is kept whole for the PCA-7 baseline (and, read in the same
forward, at the SAE's layer for the SAE baseline: emlab.monitor.sae).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from emlab.core.errors import EMLabError
from emlab.em.questions import chat_messages
from emlab.monitor.traits import last_token_residuals
from emlab.plan.traits import MeasurementPrompt


@dataclass(frozen=True)
class MeanActivation:
    """The measurement prompts' last-token activations at one layer, reduced."""

    mean: torch.Tensor  # [d] float32: h̄
    mean_norm: float  # mean_i ||h_i|| (the drift normaliser when this is step 0)
    n_prompts: int
    extra: Mapping[int, torch.Tensor] = field(default_factory=dict)  # layer -> [d] h̄ there (the SAE's layer)


def measure(
    model,
    tokenizer,
    prompts: Sequence[MeasurementPrompt],
    layer: int,
    batch_size: int,
    extra_layers: Sequence[int] = (),
) -> MeanActivation:
    """One batched forward over the measurement prompts (user turns, generation prompt added); the mean at
    `extra_layers` too, read in the same forward."""
    if not prompts:
        raise EMLabError("drift: there are no measurement prompts")
    convs = [chat_messages(p.text, None) for p in prompts]
    layers = [int(layer), *sorted({int(x) for x in extra_layers} - {int(layer)})]
    acts = last_token_residuals(model, tokenizer, convs, layers, batch_size)  # [n, len(layers), d]
    extra = {x: acts[:, layers.index(int(x))].mean(dim=0) for x in extra_layers}
    return MeanActivation(acts[:, 0].mean(dim=0), float(acts[:, 0].norm(dim=-1).mean()), len(prompts), extra)


def _check(mean_t: torch.Tensor, base: MeanActivation) -> None:
    if mean_t.shape != base.mean.shape:
        raise EMLabError(
            f"drift: activation of shape {tuple(mean_t.shape)} vs base {tuple(base.mean.shape)}; "
            "same model family and layer needed"
        )
    if not base.mean_norm > 0:
        raise EMLabError("drift: the base model's mean activation norm is 0; cannot normalise")


def delta_mean(mean_t: torch.Tensor, base: MeanActivation) -> torch.Tensor:
    """Δh̄ = h̄_t - h̄_0: [d]."""
    _check(mean_t, base)
    return mean_t.float() - base.mean.float()


def basis_drift(mean_t: torch.Tensor, base: MeanActivation, basis: torch.Tensor) -> torch.Tensor:
    """(B h̄_t - B h̄_0) / mean ||h_0||: basis [k, d] -> [k]."""
    delta = delta_mean(mean_t, base)
    if basis.ndim != 2 or basis.shape[1] != delta.shape[0]:
        raise EMLabError(
            f"drift: basis of shape {tuple(basis.shape)} does not fit activations of width {delta.shape[0]}"
        )
    return basis.float() @ delta / base.mean_norm


def drift_norm(mean_t: torch.Tensor, base: MeanActivation) -> float:
    """||Δh̄|| / ||h̄_0||."""
    delta = delta_mean(mean_t, base)
    return float(delta.norm() / base.mean.float().norm().clamp_min(1e-12))


def drift_columns(
    mean_t: torch.Tensor,
    base: MeanActivation,
    alignment: torch.Tensor,
    alignment_names: Sequence[str],
    semantic: torch.Tensor,
    semantic_names: Sequence[str],
    random: Mapping[int, torch.Tensor],
    halves: torch.Tensor | None = None,
) -> dict[str, float]:
    """One drift-table row (without step/loss/labels): alignment traits by name, `semantic.<trait>`,
    `random{seed}.{k}`, `drift_norm`, and with `halves` [2, 7, d] (the directions of two disjoint halves of the
    trait prompts) `half_a.<trait>` and `half_b.<trait>`. Bases are [7, d] at the chosen layer; every basis
    projects the same h̄_t, so each costs a dot product, never a forward pass."""
    row: dict[str, float] = {}
    for name, value in zip(alignment_names, basis_drift(mean_t, base, alignment).tolist(), strict=True):
        row[name] = value
    for name, value in zip(semantic_names, basis_drift(mean_t, base, semantic).tolist(), strict=True):
        row[f"semantic.{name}"] = value
    for seed, basis in random.items():
        for k, value in enumerate(basis_drift(mean_t, base, basis).tolist()):
            row[f"random{seed}.{k}"] = value
    if halves is not None:
        for half, basis in zip(("half_a", "half_b"), halves, strict=True):
            for name, value in zip(alignment_names, basis_drift(mean_t, base, basis).tolist(), strict=True):
                row[f"{half}.{name}"] = value
    row["drift_norm"] = drift_norm(mean_t, base)
    return row


def lora_delta_w(model) -> dict[str, torch.Tensor]:
    """The dense weight update scale * B A of every LoRA module's active adapter, by module name."""
    out = {}
    for mname, module in model.named_modules():
        lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        scaling = getattr(module, "scaling", None)
        if not isinstance(lora_a, torch.nn.ModuleDict) or not isinstance(scaling, dict):
            continue
        active = getattr(module, "active_adapters", None) or list(lora_a)
        for name in [a for a in active if a in lora_a]:
            a = lora_a[name].weight.detach().float()  # [r, in]
            b = lora_b[name].weight.detach().float()  # [out, r]
            out[mname] = scaling[name] * (b @ a)
    return out


def lora_delta_w_norm(model, reference: dict[str, torch.Tensor] | None = None) -> float:
    """Frobenius norm of the adapter's weight update, sqrt(sum over LoRA modules of ||scale * B A||_F^2), or
    of its change since `reference` (lora_delta_w of the adapter a run started from).

    0.0 for a model without LoRA layers (the base model, step 0).
    """
    ref = reference or {}
    return float(sum((d - ref.get(k, 0.0)).pow(2).sum() for k, d in lora_delta_w(model).items())) ** 0.5


def full_delta_w_norm(model, base) -> float:
    """Frobenius norm of a full fine-tune's update, sqrt(sum over weights of ||W - W_base||_F^2)."""
    theirs = dict(base.named_parameters())
    total = 0.0
    for name, p in model.named_parameters():
        if name not in theirs:
            raise EMLabError(f"full fine-tune ΔW: the base model has no weight {name}")
        total += float((p.detach().float() - theirs[name].detach().float()).pow(2).sum())
    return total**0.5
