"""Adapter steering (`adapter_steer__<ft>__<case>`, Soligo et al. section 4.3, Fig. 7): chosen rank-1
adapters' contributions multiplied by a factor, the others zeroed or kept (emlab.lora.patching.scale_adapters).

The factors per adapter (`L{l}.down_proj`) are resolved at plan time from the configured adapter roles
(emlab.plan.study.adapter_steering_conditions) and travel in the intervention spec; the id names only the
fine-tune and the case, so a parsed id equals the planned condition (factors and others are not compared).
The model is generated from with its adapters unmerged (NEEDS_ADAPTERS), since scaling acts on peft's
per-adapter `scaling`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from emlab.plan.conditions.condition import Condition, Group


@dataclass(frozen=True)
class AdapterSteering(Condition):
    """Fine-tune `model` with adapter `factors` ((name, factor) pairs, sorted) and the rest `others` (zero|keep)."""

    model: str
    case: str
    factors: tuple[tuple[str, float], ...] | Mapping[str, float] = field(
        default=(), compare=False
    )  # sorted pairs after init
    others: str = field(default="zero", compare=False)

    KIND = "adapter_steer"
    GROUP = Group.ADAPTER_STEERING
    ID = r"adapter_steer__(?P<model>{name})__(?P<case>{name})"
    NEEDS_ADAPTERS = True

    def __post_init__(self):
        items = self.factors.items() if isinstance(self.factors, Mapping) else self.factors
        object.__setattr__(self, "factors", tuple(sorted((str(a), float(f)) for a, f in items)))

    @property
    def condition_id(self) -> str:
        return f"adapter_steer__{self.model}__{self.case}"

    @classmethod
    def from_id(cls, fields):
        return cls(fields["model"], fields["case"])

    def intervention(self) -> dict:
        return {"kind": "adapter_steer", "case": self.case, "factors": dict(self.factors), "others": self.others}

    @classmethod
    def from_spec(cls, model: str, spec: Mapping, params: Mapping):
        return cls(model, spec["case"], dict(spec["factors"]), spec["others"])

    @property
    def label(self) -> tuple[str, str]:
        return f"adapters: {self.case}", "adapter_steering"
