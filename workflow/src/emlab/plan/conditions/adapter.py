"""Adapter projection: a weights edit, not a hook. A mean-diff vector is
projected out of the B vector of a fine-tune's single rank-1 down_proj adapter
(renormalised to B's norm) before the adapter is merged
(emlab.lora.single_adapter.apply_adapter_projection).

  adapter_project__<ft>__L<l>            v_l of the fine-tune itself
  adapter_project__<ft>__<src>_L<l>      v_l of another fine-tune <src> (single_adapter.reference_vector)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from emlab.plan.conditions.condition import Condition, Group


@dataclass(frozen=True)
class AdapterProjection(Condition):
    """v_layer of fine-tune `vector` (the model's own, or another's) projected out of `model`'s rank-1 adapter
    B vector at load time."""

    model: str
    vector: str
    layer: int

    KIND = "adapter_project"
    GROUP = Group.ABLATION
    # names are lower case, so "<src>_L<l>" splits unambiguously at the "_L"
    ID = r"adapter_project__(?P<model>{name})__(?:(?P<vector>{name})_)?L(?P<layer>[0-9]+)"

    def __post_init__(self):
        object.__setattr__(self, "layer", int(self.layer))

    @property
    def condition_id(self) -> str:
        source = "" if self.vector == self.model else f"{self.vector}_"
        return f"adapter_project__{self.model}__{source}L{self.layer}"

    @classmethod
    def from_id(cls, fields):
        return cls(fields["model"], fields.get("vector") or fields["model"], int(fields["layer"]))

    @property
    def direction(self) -> tuple[str, str]:
        return self.vector, "general"

    def intervention(self) -> dict:
        return {"kind": "adapter_project", "vector": self.vector, "layer": self.layer}

    @classmethod
    def from_spec(cls, model: str, spec: Mapping, params: Mapping):
        return cls(model, spec["vector"], spec["layer"])

    @property
    def label(self) -> tuple[str, str]:
        if self.vector == self.model:
            return f"v L{self.layer} projected\nout of B", "B projected"
        return f"{self.vector}\nL{self.layer} out of B", "B projected"
