"""Typed settings are built strictly from validated config, and canonical params ignore key order."""

from __future__ import annotations

import dataclasses

import pytest
from emlab.core.errors import EMLabError
from emlab.core.settings import build, canonical


@dataclasses.dataclass(frozen=True)
class Inner:
    rate: float
    name: str


@dataclasses.dataclass(frozen=True)
class Outer:
    inner: Inner
    steps: int
    optional: Inner | None
    scale: float | None


def test_build_nested_and_coerces_float_fields():
    out = build(Outer, {"inner": {"rate": 1, "name": "x"}, "steps": 3, "optional": None, "scale": 2})
    assert out == Outer(Inner(1.0, "x"), 3, None, 2.0)
    assert isinstance(out.inner.rate, float) and isinstance(out.scale, float) and isinstance(out.steps, int)


def test_build_names_unknown_and_missing_keys():
    with pytest.raises(EMLabError, match=r"training: unknown key\(s\) typo"):
        build(Inner, {"rate": 1.0, "name": "x", "typo": 1}, "training")
    with pytest.raises(EMLabError, match=r"training.inner: missing key\(s\) name"):
        build(Outer, {"inner": {"rate": 1.0}, "steps": 1, "optional": None, "scale": None}, "training")


def test_canonical_ignores_key_order_and_number_spelling():
    a = {"b": {"y": 2.0e-3, "x": [1.0, {"q": 1, "p": 2}]}, "a": 8}
    b = {"a": 8.0, "b": {"x": [1, {"p": 2, "q": 1}], "y": 0.002}}
    assert repr(canonical(a)) == repr(canonical(b))
    assert list(canonical(a)) == ["a", "b"]
    assert canonical(True) is True and canonical(0.5) == 0.5
