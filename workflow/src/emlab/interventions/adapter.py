"""Adapter projection (`adapter_project__<ft>__L<l>`): a weights edit, not a
hook. v_l of the fine-tune is projected out of the B vector of its single
rank-1 down_proj adapter (renormalised to B's norm) before the adapter is
merged (emlab.single_adapter.apply_adapter_projection)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import EMLabError
from .condition import Condition

if TYPE_CHECKING:  # torch is imported where a model is edited, not when the plan is built
    import torch


@dataclass(frozen=True)
class AdapterProjection(Condition):
    """v_layer of fine-tune `vector` projected out of `model`'s rank-1 adapter B vector at load time."""

    model: str
    vector: str
    layer: int

    KIND = "adapter_project"
    GROUP = "ablation"
    ID = r"adapter_project__(?P<model>{name})__L(?P<layer>[0-9]+)"

    def __post_init__(self):
        object.__setattr__(self, "layer", int(self.layer))

    @property
    def condition_id(self) -> str:
        return f"adapter_project__{self.model}__L{self.layer}"

    @classmethod
    def from_id(cls, fields):
        return cls(fields["model"], fields["model"], int(fields["layer"]))

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
        return f"v L{self.layer} projected\nout of B", "B projected"

    def edits(self, vectors, n_layers: int) -> dict[int, torch.Tensor]:
        self._layer(self.layer, n_layers)
        return {}  # applied to the weights by before_merge at load time

    def before_merge(self, vectors):
        if vectors is None:
            raise EMLabError(f"intervention {self.intervention()} needs a direction file")
        from ..single_adapter import apply_adapter_projection

        layer = self.layer
        return lambda peft_model: apply_adapter_projection(peft_model, vectors, layer)
