"""Adapter steering (`adapter_steer__<ft>__<case>`, Soligo et al. section 4.3, Fig. 7): chosen rank-1
adapters' contributions multiplied by a factor, the others zeroed or kept (emlab.lora.patching.scale_adapters).

The id names only the fine-tune and the case, so a parsed id equals the planned condition (factors,
role factors and others are not compared), whichever way the adapters get their roles:
- lora_interp.roles.source config: the factors per adapter (`L{l}.down_proj`) are resolved at plan time
  from the configured roles (emlab.plan.study.adapter_steering_conditions) and travel in the spec;
- source rule: the spec carries the case's factors per *role* (`role_factors`); the generation job reads
  the roles the fine-tune's own probes gave (its roles.json, an input of that job) and resolves them
  (`with_roles`), so the generations' `intervention` column names the adapters actually scaled. A role
  of the case that no adapter has makes the condition n/a (emlab.interventions.generate).
The model is generated from with its adapters unmerged (NEEDS_ADAPTERS), since scaling acts on peft's
per-adapter `scaling`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from emlab.plan.conditions.condition import Condition, Group


def _pairs(value) -> tuple[tuple[str, float], ...]:
    items = value.items() if isinstance(value, Mapping) else value
    return tuple(sorted((str(a), float(f)) for a, f in items))


@dataclass(frozen=True)
class AdapterSteering(Condition):
    """Fine-tune `model` with adapter `factors` ((name, factor) pairs, sorted) and the rest `others` (zero|keep).

    `role_factors` ((role, factor) pairs): the case by role, its adapters read from the fine-tune's
    roles.json when it is generated (roles from the probes); `factors` stay empty until then."""

    model: str
    case: str
    factors: tuple[tuple[str, float], ...] | Mapping[str, float] = field(
        default=(), compare=False
    )  # sorted pairs after init
    others: str = field(default="zero", compare=False)
    role_factors: tuple[tuple[str, float], ...] | Mapping[str, float] = field(default=(), compare=False)

    KIND = "adapter_steer"
    GROUP = Group.ADAPTER_STEERING
    ID = r"adapter_steer__(?P<model>{name})__(?P<case>{name})"
    NEEDS_ADAPTERS = True

    def __post_init__(self):
        object.__setattr__(self, "factors", _pairs(self.factors))
        object.__setattr__(self, "role_factors", _pairs(self.role_factors))

    @property
    def roles_at_run_time(self) -> bool:
        """Its adapters come from the fine-tune's roles.json, read by the generation job (roles source rule)."""
        return bool(self.role_factors)

    @property
    def resolved(self) -> bool:
        """Its factors per adapter are known (config roles, or with_roles applied)."""
        return not self.role_factors or bool(self.factors)

    def with_roles(self, roles: Mapping) -> AdapterSteering:
        """This case with its factors per adapter from `roles` ({adapter: {"role", ...}} or {adapter: role}).

        Raises emlab.plan.roles.RolesMissing when a role of the case has no adapter."""
        from emlab.plan.roles import role_scaling

        scaling = role_scaling(dict(roles), dict(self.role_factors), self.others)
        return replace(self, factors=scaling.factors)

    @property
    def condition_id(self) -> str:
        return f"adapter_steer__{self.model}__{self.case}"

    @classmethod
    def from_id(cls, fields):
        return cls(fields["model"], fields["case"])

    def intervention(self) -> dict:
        out: dict = {"kind": "adapter_steer", "case": self.case, "others": self.others}
        if self.resolved:
            out["factors"] = dict(self.factors)
        if self.role_factors:
            out["role_factors"] = dict(self.role_factors)
        return out

    @classmethod
    def from_spec(cls, model: str, spec: Mapping, params: Mapping):
        return cls(model, spec["case"], dict(spec.get("factors") or {}), spec["others"],
                   dict(spec.get("role_factors") or {}))  # fmt: skip

    @property
    def label(self) -> tuple[str, str]:
        return f"adapters: {self.case}", "adapter_steering"
