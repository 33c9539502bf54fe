"""The common shape of every study condition: which model is generated from
and what is done to it. Value types only: nothing here imports torch or a
model; how each kind edits a loaded model lives in emlab.interventions.

A condition kind is one frozen dataclass (a subclass of `Condition`) that
  - builds its condition id (`condition_id`) and parses it back (`ID`, `from_id`);
  - serialises to and from the JSON spec that travels through Snakemake params
    (`intervention`, `to_params`, `from_params`); the spec, and so the
    `intervention` column of the generation tables, is part of the artifacts;
  - belongs to one row group of tables and figures (`GROUP`, a `Group`);
  - names itself for figures and tables (`label`, `columns`).
Subclasses register themselves; `parse_condition_id` and `from_params` find
the kind. Adding a kind is one class here and its edit in emlab.interventions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from enum import Enum
from typing import Any, ClassVar

from emlab.core.errors import EMLabError


class Group(str, Enum):
    """The row group of a condition in tables and figures. A str, so that params, CSV and parquet
    columns hold the plain name ("steering"); code compares members (`c.group is Group.STEERING`)."""

    MODEL = "model"  # the base model or a fine-tune as trained
    CHECKPOINT = "checkpoint"  # a fine-tune at a saved training step
    STEERING = "steering"
    ABLATION = "ablation"  # directional ablations and the adapter projection
    TRANSFER = "transfer"  # a direction of one fine-tune ablated from another
    ADAPTER_STEERING = "adapter_steering"
    SCALAR_PATCHING = "scalar_patching"
    MONITOR = "monitor"  # a checkpoint of a trait-monitor run, judged to label it

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    __hash__ = str.__hash__  # a member and its name are one key of a dict or set


# A fine-tune name (config schema: lower case, single underscores) or "base"; never contains "__",
# which separates the parts of a condition id, so ids parse unambiguously.
NAME = r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*"

_KINDS: list[type[Condition]] = []


class Condition:
    """One generated-and-judged condition (see the module docstring). Subclasses are frozen dataclasses
    with a `model` field (or property): "base" or a fine-tune name."""

    KIND: ClassVar[str]  # the spec's "kind": none, steer, ablate, adapter_project
    MODE: ClassVar[str | None] = None  # the spec's "mode" (ablations)
    GROUP: ClassVar[Group]  # the row group of tables and figures
    ID: ClassVar[str]  # regex of the condition id; named groups, NAME for names
    OPERATION: ClassVar[str] = "none"  # what `edits` feeds: "steer" (add), "ablate" (project out) or nothing
    NEEDS_ADAPTERS: ClassVar[bool] = False  # generate from the unmerged peft model (apply edits the adapters)

    model: str
    _id_re: ClassVar[re.Pattern]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "ID" in cls.__dict__:  # a concrete kind (intermediate classes give no ID)
            cls._id_re = re.compile(cls.ID.replace("{name}", NAME))
            _KINDS.append(cls)

    # -- identity ------------------------------------------------------------------------
    @property
    def condition_id(self) -> str:
        raise NotImplementedError

    @classmethod
    def from_id(cls, fields: dict[str, str]) -> Condition:
        """The condition of a matched id (`fields`: the named groups of ID)."""
        raise NotImplementedError

    @property
    def group(self) -> Group:
        return self.GROUP

    @property
    def checkpoint(self) -> int | None:
        """The training step whose adapter is used; None: the finished fine-tune (or the base model)."""
        return None

    @property
    def direction(self) -> tuple[str, str] | None:
        """(fine-tune, split) of the direction file the condition needs, or None."""
        return None

    # -- the JSON spec ---------------------------------------------------------------------
    def intervention(self) -> dict:
        """The intervention spec (JSON-able; written verbatim into the generation tables)."""
        raise NotImplementedError

    @classmethod
    def from_spec(cls, model: str, spec: Mapping, params: Mapping) -> Condition:
        """The condition of an intervention spec on `model` (`params`: the whole params form)."""
        raise NotImplementedError

    def to_params(self) -> dict:
        """The params form: {"model", "group", "intervention"} (+ "checkpoint" for a checkpoint)."""
        out: dict[str, Any] = {"model": self.model, "group": self.group.value, "intervention": self.intervention()}
        if self.checkpoint is not None:
            out["checkpoint"] = self.checkpoint
        return out

    # -- names for tables and figures ----------------------------------------------------------
    def columns(self) -> dict:
        """The condition's columns of the metrics tables (group, model and the spec's fields)."""
        iv = self.intervention()
        return {
            "group": self.group.value,
            "model": self.model,
            "intervention_kind": iv["kind"],
            "vector": iv.get("vector"),
            "layer": iv.get("layer"),
            "scale": iv.get("scale"),
            "mode": iv.get("mode"),
            "seed": iv.get("seed"),
            # which vector of the fine-tune: the general mean-diff vector or a semantic split (steering only)
            "split": iv.get("split", "general") if iv.get("vector") else None,
        }

    @property
    def label(self) -> tuple[str, str]:
        """(bar label, colour key) in the ablation and single-adapter figures."""
        raise NotImplementedError

    def check_layer(self, layer: int, n_layers: int) -> int:
        """`layer`, or a clear error when a `n_layers`-layer model has no such layer."""
        if not 0 <= layer < n_layers:
            raise EMLabError(f"intervention layer {layer} is out of range for a {n_layers}-layer model")
        return layer


def kinds() -> list[type[Condition]]:
    """Every registered condition kind, in registration order."""
    return list(_KINDS)


def parse_condition_id(cid: str) -> Condition:
    """The condition a condition id names.

    An id carries everything but, for a random-direction ablation, the fine-tune whose direction gives the
    norm (only its norm is used): the parsed condition names the ablated model's own.
    """
    for cls in _KINDS:
        match = cls._id_re.fullmatch(str(cid))
        if match:
            return cls.from_id(match.groupdict())
    raise EMLabError(
        f"condition id {cid!r} is not the id of any condition kind "
        f"({', '.join(c.__name__ for c in _KINDS)}); see emlab/plan/conditions/"
    )


def from_params(params: Mapping | str) -> Condition:
    """The condition of its params form ({"model", "group", "intervention", ...}; the intervention may be
    its JSON string). Without a group the first kind with the spec's kind and mode is taken (a bare
    single-layer ablation, not a transfer: they apply alike)."""
    form: Mapping = json.loads(params) if isinstance(params, str) else params
    spec = form.get("intervention") or {"kind": "none"}
    if isinstance(spec, str):
        spec = json.loads(spec)
    kind, mode, group = spec.get("kind", "none"), spec.get("mode"), form.get("group")
    matches = [c for c in _KINDS if c.KIND == kind]
    if not matches:
        raise EMLabError(f"unknown intervention kind {kind!r} ({', '.join(dict.fromkeys(c.KIND for c in _KINDS))})")
    if any(c.MODE for c in matches) and not any(c.MODE == mode for c in matches):  # a kind with modes (ablate)
        raise EMLabError(f"unknown ablation mode {mode!r} ({', '.join(c.MODE for c in matches if c.MODE)})")
    matches = [c for c in matches if c.MODE == mode]
    chosen = [c for c in matches if c.GROUP == group] if group is not None else matches[:1]
    if not chosen:
        raise EMLabError(
            f"no condition kind has intervention kind {kind!r}{f', mode {mode!r}' if mode else ''} "
            f"in group {group!r} (groups: {', '.join(c.GROUP for c in matches)})"
        )
    return chosen[0].from_spec(str(form.get("model", "")), spec, form)


def as_condition(value) -> Condition:
    """A Condition from itself, its params form, or a bare intervention spec (enough to apply it)."""
    if isinstance(value, Condition):
        return value
    if isinstance(value, str):
        value = json.loads(value)
    if isinstance(value, Mapping) and "intervention" not in value and "kind" in value:
        value = {"intervention": value}
    return from_params(value)
