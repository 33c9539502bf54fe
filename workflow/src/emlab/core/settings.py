"""Typed settings: dataclasses built once from the validated config.

The schema (emlab/core/schemas/config.schema.yaml, package data) is the only source of
defaults: `config.validate_config` fills them, and a settings dataclass has
required fields only, so a library function never invents a default of its
own. Each concept declares its dataclass next to the code that uses it
(e.g. `finetune.TrainingSettings`); this module builds any of them from a
mapping, strictly: a missing or unknown key is an error naming it.

`canonical` turns a value into the form Snakemake params should carry, so
that equal settings give equal params whatever the key order of the file.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from emlab.core.errors import EMLabError

T = TypeVar("T")


def build(cls: type[T], mapping: Mapping[str, Any] | T, where: str = "settings") -> T:
    """An instance of dataclass `cls` from `mapping` (nested dataclass fields are built too).

    Every field is required and no other key is allowed; `where` names the
    config section in the error message.
    """
    if isinstance(mapping, cls):
        return mapping
    if not isinstance(mapping, Mapping):
        raise EMLabError(f"{where}: expected a mapping for {cls.__name__}, got {type(mapping).__name__}")
    fields = {f.name: f for f in dataclasses.fields(typing.cast(Any, cls)) if f.init}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise EMLabError(
            f"{where}: unknown key(s) {', '.join(unknown)} for {cls.__name__} (allowed: {', '.join(fields)})"
        )
    missing = [
        name
        for name, f in fields.items()
        if name not in mapping and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise EMLabError(
            f"{where}: missing key(s) {', '.join(missing)} for {cls.__name__}; "
            "settings are built from a validated config, whose schema fills every default"
        )
    hints = typing.get_type_hints(cls)
    values = {name: _build_value(hints[name], mapping[name], f"{where}.{name}") for name in fields if name in mapping}
    return cls(**values)


def _build_value(hint, value, where: str):
    """Build nested dataclasses (also inside `X | None`, lists and dicts); other values pass unchanged."""
    if value is None:
        return None
    if _accepts_float(hint) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # canonical params turn 1.0 into 1; a float field stays a float
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return build(hint, value, where)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if dataclasses.is_dataclass(arg) and isinstance(value, Mapping):
                return build(typing.cast(type, arg), value, where)
        return value
    if origin in (list, tuple) and args and dataclasses.is_dataclass(args[0]):
        return [build(typing.cast(type, args[0]), v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]):
        return {k: build(typing.cast(type, args[1]), v, f"{where}.{k}") for k, v in value.items()}
    return value


def _accepts_float(hint) -> bool:
    """A `float` or `float | None` field (not one that also accepts int)."""
    if hint is float:
        return True
    args = set(typing.get_args(hint)) if typing.get_origin(hint) in (typing.Union, types.UnionType) else set()
    return float in args and int not in args and args <= {float, type(None)}


def as_dict(settings) -> dict:
    """A settings dataclass as a plain, canonical dict (for params, JSON summaries and fingerprints)."""
    return canonical(dataclasses.asdict(settings))


def canonical(value):
    """`value` with every mapping's keys sorted and numbers normalised, recursively.

    Equal settings give equal results whatever the key order or number spelling
    of the config file: floats with an integral value become ints (2.0 -> 2), so
    `2.0e-3` and `0.002`, or `8` and `8.0`, are the same param. Tuples become
    lists; dataclasses become dicts. Snakemake compares params as written, so
    every rule routes its config-derived params through this.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): canonical(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, str):
        return str.__str__(value)  # a str Enum member (a condition Group) as its plain name
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value) and abs(value) < 2**53:
            return int(value)
        return value
    if isinstance(value, int):
        return int(value)
    return value
