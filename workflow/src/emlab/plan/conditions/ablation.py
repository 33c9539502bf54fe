"""Directional ablation: a fine-tuned model with mean-diff directions
projected out of the residual stream after every block.

  ablate__<ft>__layerwise              each layer's own v_l, after block l
  ablate__<ft>__single_L<l>            v_l (one layer's), after every block
  ablate__<ft>__random_L<l>_seed<s>    control: a seeded random direction with the norm of v_l
  ablate__<ft>__transfer_<src>_L<l>    transfer: v_l of another fine-tune <src>, after every block

Projection ignores the norm; the random control's norm is matched so it is
the same object the paper describes, and steering controls can reuse it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from emlab.plan.conditions.condition import Condition, Group


class Ablation(Condition):
    """What the ablations share: kind "ablate", group "ablation", the hook that projects directions out."""

    vector: str  # (a field of every concrete ablation)

    KIND = "ablate"
    GROUP = Group.ABLATION
    OPERATION = "ablate"

    @property
    def direction(self) -> tuple[str, str]:
        return self.vector, "general"


@dataclass(frozen=True)
class LayerwiseAblation(Ablation):
    """v_l of fine-tune `vector` projected out after block l, for every l."""

    model: str
    vector: str

    MODE = "layerwise"
    ID = r"ablate__(?P<model>{name})__layerwise"

    @property
    def condition_id(self) -> str:
        return f"ablate__{self.model}__layerwise"

    @classmethod
    def from_id(cls, fields):
        return cls(fields["model"], fields["model"])

    def intervention(self) -> dict:
        return {"kind": "ablate", "vector": self.vector, "mode": "layerwise"}

    @classmethod
    def from_spec(cls, model: str, spec: Mapping, params: Mapping):
        return cls(model, spec["vector"])

    @property
    def label(self) -> tuple[str, str]:
        return "layer-wise", "layer-wise"


@dataclass(frozen=True)
class SingleAblation(Ablation):
    """v_layer of fine-tune `vector` projected out after every block."""

    model: str
    vector: str
    layer: int

    MODE = "single"
    ID = r"ablate__(?P<model>{name})__single_L(?P<layer>[0-9]+)"

    def __post_init__(self):
        object.__setattr__(self, "layer", int(self.layer))

    @property
    def condition_id(self) -> str:
        return f"ablate__{self.model}__single_L{self.layer}"

    @classmethod
    def from_id(cls, fields):
        return cls(fields["model"], fields["model"], int(fields["layer"]))

    def intervention(self) -> dict:
        return {"kind": "ablate", "vector": self.vector, "mode": "single", "layer": self.layer}

    @classmethod
    def from_spec(cls, model: str, spec: Mapping, params: Mapping):
        return cls(model, spec["vector"], spec["layer"])

    @property
    def label(self) -> tuple[str, str]:
        return f"single L{self.layer}", "single"


@dataclass(frozen=True)
class RandomAblation(Ablation):
    """Control: a seeded random direction with the norm of v_layer (of `vector`) projected out after every block."""

    model: str
    vector: str
    layer: int
    seed: int

    MODE = "random"
    ID = r"ablate__(?P<model>{name})__random_L(?P<layer>[0-9]+)_seed(?P<seed>-?[0-9]+)"

    def __post_init__(self):
        object.__setattr__(self, "layer", int(self.layer))
        object.__setattr__(self, "seed", int(self.seed))

    @property
    def condition_id(self) -> str:
        return f"ablate__{self.model}__random_L{self.layer}_seed{self.seed}"

    @classmethod
    def from_id(cls, fields):
        return cls(fields["model"], fields["model"], int(fields["layer"]), int(fields["seed"]))

    def intervention(self) -> dict:
        return {"kind": "ablate", "vector": self.vector, "mode": "random", "layer": self.layer, "seed": self.seed}

    @classmethod
    def from_spec(cls, model: str, spec: Mapping, params: Mapping):
        return cls(model, spec["vector"], spec["layer"], spec.get("seed", 0))

    @property
    def label(self) -> tuple[str, str]:
        return f"random L{self.layer}\nseed {self.seed}", "random"


@dataclass(frozen=True)
class Transfer(SingleAblation):
    """Transfer: v_layer of another fine-tune (`vector`) projected out of fine-tune `model` after every block.

    Applied exactly like a single-layer ablation (same spec); only the group and the id differ.
    """

    GROUP = Group.TRANSFER
    ID = r"ablate__(?P<model>{name})__transfer_(?P<vector>{name})_L(?P<layer>[0-9]+)"

    @property
    def condition_id(self) -> str:
        return f"ablate__{self.model}__transfer_{self.vector}_L{self.layer}"

    @classmethod
    def from_id(cls, fields):
        return cls(fields["model"], fields["vector"], int(fields["layer"]))

    @property
    def label(self) -> tuple[str, str]:
        return f"transfer:\n{self.vector} L{self.layer}", "transfer"
