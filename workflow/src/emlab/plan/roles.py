"""Adapter roles and the scaling they give (Soligo et al. section 4.3): which rank-1 adapters of a
fine-tune are "medical", "general" or "neither", from configured layers (here) or from the probes'
coefficients (emlab.lora.probes), and the per-adapter factors of an adapter-steering case. Plan-time
values: nothing here imports torch; emlab.lora.patching.scale_adapters applies a scaling to a model.
With roles from the probes (lora_interp.roles.source rule) a case's factors are resolved in its
generation job, from the fine-tune's roles.json (read_roles, AdapterSteering.with_roles)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from emlab.core.config import scale_layer_blocks
from emlab.core.errors import EMLabError

ROLES = ("general", "medical", "neither")
OTHERS = ("zero", "keep")  # what adapter steering does to the adapters a case does not list


@dataclass(frozen=True)
class RoleSettings:
    """How adapters get their roles (config `lora_interp.roles`).

    source "config": from `medical_layers` / `general_layers` (indices of a
    `reference_depth`-layer model, scaled like the fine-tune presets; null
    reference_depth: this model's own indices). source "rule": ROLE_RULE over the
    coefficients of `protocol` and `filter`.
    """

    source: str  # config | rule
    medical_layers: list[int]
    general_layers: list[int]
    reference_depth: int | None
    protocol: str
    filter: str
    relative_threshold: float  # |mean coefficient| >= this x the experiment's largest
    sign_agreement: float  # share of runs whose coefficient has the mean's sign


def roles_from_config(
    adapters: list[str],
    layers: list[int],
    settings: RoleSettings,
    n_layers: int,
    adapter_reference_layers: list[int] | None = None,
) -> dict:
    """{adapter: {"role", "why"}} from the configured role layers; a role layer without an adapter is an error.

    Layers of a `reference_depth` model are scaled with emlab.config.scale_layer_blocks
    over the union of the role layers and `adapter_reference_layers` (the
    fine-tune's own adapter layers at that depth, when given), so a role lands
    on the adapter the same scaling put there.
    """
    medical, general = [int(x) for x in settings.medical_layers], [int(x) for x in settings.general_layers]
    both = sorted(set(medical) & set(general))
    if both:
        raise EMLabError(f"lora_interp.roles: layer(s) {both} are both medical and general")
    mapping = {x: x for x in medical + general}
    if settings.reference_depth:
        ref = sorted(set(medical) | set(general) | set(adapter_reference_layers or []))
        mapping = dict(zip(ref, scale_layer_blocks(ref, int(settings.reference_depth), n_layers)))
    by_layer: dict[int, list[str]] = {}
    for a, layer in zip(adapters, layers):
        by_layer.setdefault(int(layer), []).append(a)
    out = {a: {"role": "neither", "why": "config: layer in neither role list"} for a in adapters}
    for role, role_layers in (("medical", medical), ("general", general)):
        for x in role_layers:
            target = mapping[x]
            if target not in by_layer:
                raise EMLabError(
                    f"lora_interp.roles.{role}_layers: layer {x}"
                    + (
                        f" (of {settings.reference_depth}, layer {target} of this {n_layers}-layer model)"
                        if settings.reference_depth
                        else ""
                    )
                    + f" has no adapter; the fine-tune's adapters are at layers {sorted(by_layer)}"
                )
            for a in by_layer[target]:
                src = f"layer {x} of {settings.reference_depth}" if settings.reference_depth else f"layer {x}"
                out[a] = {"role": role, "why": f"config: {role}_layers lists {src}"}
    return out


class RolesMissing(EMLabError):
    """A case's role(s) that no adapter has: at plan time (config roles) a config error; at run time (roles the
    probes gave, lora_interp.roles.source rule) the case is recorded n/a."""

    def __init__(self, message: str, roles: list[str]):
        super().__init__(message)
        self.roles = roles


def read_roles(path) -> dict:
    """{adapter: {"role", "why"}} of a roles.json (emlab.lora.probes.write_roles)."""
    import json

    try:
        roles = json.loads(Path(path).read_text())["roles"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EMLabError(f"cannot read adapter roles from {path} ({exc}); re-run rule lora_probes") from None
    if not isinstance(roles, dict) or not roles:
        raise EMLabError(f"{path}: `roles` must map each adapter to its role; re-run rule lora_probes")
    bad = sorted(a for a, r in roles.items() if not isinstance(r, dict) or r.get("role") not in ROLES)
    if bad:
        raise EMLabError(f"{path}: adapter(s) {bad} have no role of {ROLES}; re-run rule lora_probes")
    return roles


@dataclass(frozen=True)
class AdapterScaling:
    """Factors per adapter name (`L{l}.down_proj`); the unlisted adapters are zeroed or kept."""

    factors: dict[str, float]
    others: str  # zero | keep


def role_scaling(roles: dict, role_factors: dict[str, float], others: str) -> AdapterScaling:
    """An AdapterScaling from adapter roles ({adapter: {"role": ...}} or {adapter: role}) and factors per role.

    E.g. {"medical": 30} with others "zero" (the paper's medical case), or
    {"medical": 30, "general": -10} with others "keep".
    """
    unknown = sorted(set(role_factors) - {"general", "medical", "neither"})
    if unknown:
        raise EMLabError(f"adapter steering: unknown role(s) {unknown}; roles are general, medical, neither")
    factors = {}
    for adapter, role in roles.items():
        role = role["role"] if isinstance(role, dict) else role
        if role in role_factors:
            factors[adapter] = float(role_factors[role])
    missing = [r for r in role_factors if r not in {(v["role"] if isinstance(v, dict) else v) for v in roles.values()}]
    if missing:
        raise RolesMissing(
            f"adapter steering: no adapter has role(s) {missing} (roles: "
            f"{ {a: (v['role'] if isinstance(v, dict) else v) for a, v in roles.items()} })",
            missing,
        )
    return AdapterScaling(factors, others)
