"""Scalar patching (`patch__<ft>__<pair>`, Soligo et al. appendix J): generate with a rank-1 fine-tune
while, at the prompt positions, its adapters' scalars are those recorded for another (donor) prompt;
decoding stays unpatched (emlab.lora.patching.patched_responses).

Pair types (recipient prompts <- donor prompts; G the evaluation questions, M the medical questions):
  same               G and M, each its own donor: the control, which must change nothing;
  nonmed_to_nonmed   G <- the next question of G (cyclically);
  med_to_med         M <- the next question of M (cyclically);
  med_to_nonmed      G <- the medical question of the same index (cyclically over M).
The `same` rows on G and on M are the unpatched reference of each recipient set: the same unmerged model,
sampling seeds and batching, so any difference from them is the patch's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from emlab.core.errors import EMLabError
from emlab.plan.conditions.condition import Condition, Group

PAIRS = ("same", "nonmed_to_nonmed", "med_to_med", "med_to_nonmed")
ALIGNMENTS = ("end", "start")


@dataclass(frozen=True)
class ScalarPatching(Condition):
    """Fine-tune `model`, prompt scalars patched by pair type `pair`, positions aligned at `align`."""

    model: str
    pair: str
    align: str = field(default="end", compare=False)

    KIND = "scalar_patch"
    GROUP = Group.SCALAR_PATCHING
    ID = r"patch__(?P<model>{name})__(?P<pair>" + "|".join(PAIRS) + ")"
    NEEDS_ADAPTERS = True

    def __post_init__(self):
        if self.pair not in PAIRS:
            raise EMLabError(f"scalar patching: unknown pair type {self.pair!r}; pair types are {list(PAIRS)}")
        if self.align not in ALIGNMENTS:
            raise EMLabError(f"scalar patching: align must be one of {list(ALIGNMENTS)}, got {self.align!r}")

    @property
    def condition_id(self) -> str:
        return f"patch__{self.model}__{self.pair}"

    @classmethod
    def from_id(cls, fields):
        return cls(fields["model"], fields["pair"])

    @property
    def recipients(self) -> tuple[str, ...]:
        """Question sets answered: "general" (the evaluation questions) and/or "medical"."""
        return {"same": ("general", "medical"), "med_to_med": ("medical",)}.get(self.pair, ("general",))

    @property
    def needs_medical_questions(self) -> bool:
        return self.pair != "nonmed_to_nonmed"

    def intervention(self) -> dict:
        return {"kind": "scalar_patch", "pair": self.pair, "align": self.align}

    @classmethod
    def from_spec(cls, model: str, spec: Mapping, params: Mapping):
        return cls(model, spec["pair"], spec.get("align", "end"))

    @property
    def label(self) -> tuple[str, str]:
        return f"patched: {self.pair.replace('_', ' ')}", "scalar_patching"

    def donor_indices(self, n_general: int, n_medical: int) -> list[tuple[str, int, str, int]]:
        """(recipient set, recipient index, donor set, donor index) for every recipient question, in order."""
        need = {"nonmed_to_nonmed": ("general", n_general), "med_to_med": ("medical", n_medical)}.get(self.pair)
        if need and need[1] < 2:
            raise EMLabError(
                f"scalar patching pair {self.pair}: needs at least 2 {need[0]} questions to patch one with "
                f"another, got {need[1]}"
            )
        if self.needs_medical_questions and n_medical < 1:
            raise EMLabError(f"scalar patching pair {self.pair}: the medical question file has no questions")
        if self.pair == "same":
            return [("general", i, "general", i) for i in range(n_general)] + [
                ("medical", i, "medical", i) for i in range(n_medical)
            ]
        if self.pair == "nonmed_to_nonmed":
            return [("general", i, "general", (i + 1) % n_general) for i in range(n_general)]
        if self.pair == "med_to_med":
            return [("medical", i, "medical", (i + 1) % n_medical) for i in range(n_medical)]
        return [("general", i, "medical", i % n_medical) for i in range(n_general)]
