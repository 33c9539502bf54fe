"""Steering: the base model with lambda * v_l of a fine-tune added to the
residual stream after block l, at every position
(`steer__<finetune>[__<split>]__L<l>__s<lambda>`). The general mean-diff
vector keeps the short id; a semantic vector (steering.splits) names its split."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from emlab.plan.conditions.condition import Condition, Group


def format_scale(x: float) -> str:
    """A scale as it appears in a condition id: shortest form, '-' written 'm' (4.0 -> 4, -2 -> m2)."""
    return f"{x:g}".replace("-", "m")


@dataclass(frozen=True)
class Steer(Condition):
    """scale * v_layer of fine-tune `vector` (its general vector or semantic split) added after block `layer`."""

    vector: str
    layer: int
    scale: float
    split: str = "general"

    KIND = "steer"
    GROUP = Group.STEERING
    OPERATION = "steer"
    ID = r"steer__(?P<vector>{name})(?:__(?P<split>{name}))?__L(?P<layer>[0-9]+)__s(?P<scale>[0-9.e+m]+|inf|minf)"

    def __post_init__(self):
        object.__setattr__(self, "layer", int(self.layer))
        object.__setattr__(self, "scale", float(self.scale))

    @property
    def model(self) -> str:  # type: ignore[override]  # steering always generates from the base model
        return "base"

    @property
    def condition_id(self) -> str:
        name = self.vector if self.split == "general" else f"{self.vector}__{self.split}"
        return f"steer__{name}__L{self.layer}__s{format_scale(self.scale)}"

    @classmethod
    def from_id(cls, fields):
        return cls(
            fields["vector"],
            int(fields["layer"]),
            float(fields["scale"].replace("m", "-")),
            fields["split"] or "general",
        )

    @property
    def direction(self) -> tuple[str, str]:
        return self.vector, self.split

    def intervention(self) -> dict:
        spec = {"kind": "steer", "vector": self.vector, "layer": self.layer, "scale": self.scale}
        if self.split != "general":  # only selects which direction file is loaded
            spec["split"] = self.split
        return spec

    @classmethod
    def from_spec(cls, model: str, spec: Mapping, params: Mapping):
        return cls(spec["vector"], spec["layer"], spec["scale"], spec.get("split", "general"))

    @property
    def label(self) -> tuple[str, str]:
        kind = "" if self.split == "general" else f" {self.split}"
        return f"{self.vector}{kind} L{self.layer}\nλ={self.scale:g}", "steering"
