"""Conditions with nothing applied: the base model or a fine-tune as trained
(`base`, `<finetune>`), and a fine-tune's adapter at a saved training step
(`<finetune>__step<N>`, phase.eval_steps)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from emlab.plan.conditions.condition import Condition, Group


@dataclass(frozen=True)
class Unmodified(Condition):
    """The base model ("base") or a fine-tune as trained."""

    model: str

    KIND = "none"
    GROUP = Group.MODEL
    ID = r"(?P<model>{name})"

    @property
    def condition_id(self) -> str:
        return self.model

    @classmethod
    def from_id(cls, fields):
        return cls(fields["model"])

    def intervention(self) -> dict:
        return {"kind": "none"}

    @classmethod
    def from_spec(cls, model: str, spec: Mapping, params: Mapping):
        return cls(model)

    @property
    def label(self) -> tuple[str, str]:
        return "unablated", "unablated"


@dataclass(frozen=True)
class Checkpoint(Condition):
    """A checkpointed fine-tune's adapter after `step` optimiser steps (exported by rules/phase.smk)."""

    model: str
    step: int

    KIND = "none"
    GROUP = Group.CHECKPOINT
    ID = r"(?P<model>{name})__step(?P<step>[0-9]+)"

    def __post_init__(self):
        object.__setattr__(self, "step", int(self.step))

    @property
    def condition_id(self) -> str:
        return f"{self.model}__step{self.step}"

    @classmethod
    def from_id(cls, fields):
        return cls(fields["model"], int(fields["step"]))

    @property
    def checkpoint(self) -> int:
        return self.step

    def intervention(self) -> dict:
        return {"kind": "none"}

    @classmethod
    def from_spec(cls, model: str, spec: Mapping, params: Mapping):
        return cls(model, int(params["checkpoint"]))

    @property
    def label(self) -> tuple[str, str]:
        return f"step {self.step}", "unablated"


@dataclass(frozen=True)
class MonitorLabel(Condition):
    """A checkpoint of a trait-monitor run (`mon__<dataset>__s<seed>[__long|__full|__from_<ds>]__step<N>`), or the
    base model as its step 0 (`mon__base`), generated and judged with the cheaper `monitor.generation` and
    `monitor.questions` (emlab.plan.monitor): its EM rate labels the checkpoint."""

    model: str  # "base" (step 0) or the run's fine-tune name
    step: int
    base_model: str = ""  # step 0 in a study of several base models: that model's key (mon__<key>__base)

    KIND = "none"
    GROUP = Group.MONITOR
    ID = (
        r"(?P<base>mon__(?:(?P<key>{name})__)?base)"
        r"|(?P<model>mon__(?:{name}__)?{name}__s[0-9]+(?:__long|__full|__from_{name})?)__step(?P<step>[0-9]+)"
    )

    def __post_init__(self):
        object.__setattr__(self, "step", int(self.step))

    @property
    def condition_id(self) -> str:
        if self.model == "base":
            return f"mon__{self.base_model}__base" if self.base_model else "mon__base"
        return f"{self.model}__step{self.step}"

    @classmethod
    def from_id(cls, fields):
        if fields.get("base"):
            return cls("base", 0, fields.get("key") or "")
        return cls(fields["model"], int(fields["step"]))

    @property
    def checkpoint(self) -> int | None:
        return None if self.model == "base" else self.step

    def intervention(self) -> dict:
        return {"kind": "none"}

    @classmethod
    def from_spec(cls, model: str, spec: Mapping, params: Mapping):
        return cls(model, int(params.get("checkpoint") or 0))

    @property
    def label(self) -> tuple[str, str]:
        return f"step {self.step}", "unablated"
