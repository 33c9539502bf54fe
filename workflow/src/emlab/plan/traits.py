"""The trait-monitor's input files and its layer choice, at plan time (no torch): the four YAML files
under data/traits/ (emlab.monitor.traits reads activations with them) and `traits.layer` resolved against
a model's depth, so that a layer out of range fails when the DAG is built.

  alignment.yaml             seven alignment traits, positive/negative system prompts
  semantic.yaml              seven semantic control traits, same form
  extraction_questions.yaml  questions asked under every trait prompt
  measurement_prompts.yaml   the prompts whose activation drift the monitor reads
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from emlab.core.errors import EMLabError
from emlab.core.yamlfile import read_yaml

TRAIT_FILES = {
    "alignment": "alignment.yaml",
    "semantic": "semantic.yaml",
    "extraction": "extraction_questions.yaml",
    "measurement": "measurement_prompts.yaml",
}
MEASUREMENT_CATEGORIES = ("technical", "ethical", "emotional", "casual", "adversarial")
MIN_PROMPTS_PER_SIDE = 2


# --- loading -----------------------------------------------------------------


@dataclass(frozen=True)
class Trait:
    name: str
    positive: tuple[str, ...]
    negative: tuple[str, ...]


@dataclass(frozen=True)
class TraitFile:
    path: str
    version: int
    traits: tuple[Trait, ...]

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.traits]


@dataclass(frozen=True)
class MeasurementPrompt:
    id: str
    category: str
    text: str


@dataclass(frozen=True)
class TraitSet:
    """Everything under data/traits/: the inputs of directions and drift."""

    alignment: TraitFile
    semantic: TraitFile
    questions: tuple[str, ...]
    measurement: tuple[MeasurementPrompt, ...]
    versions: dict  # {"alignment": 1, "semantic": 1, "extraction": 1, "measurement": 1}

    @property
    def version(self) -> str:
        """One string naming every file's version, recorded by directions and monitors."""
        return ";".join(f"{k}={self.versions[k]}" for k in sorted(self.versions))


def _top(path: Path, data, keys: set[str], what: str) -> int:
    if not isinstance(data, dict):
        raise EMLabError(f"{what} {path}: the top level must be a mapping with keys {sorted(keys)}")
    unknown = set(data) - keys
    if unknown:
        raise EMLabError(f"{what} {path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(keys)}")
    version = data.get("version")
    if version is None:
        raise EMLabError(f"{what} {path}: missing `version` (an integer; bump it whenever the text changes)")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise EMLabError(f"{what} {path}: `version` must be a positive integer (got {version!r})")
    return version


def _text(path: Path, value, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise EMLabError(f"{path}: {where} must be a non-empty string (got {value!r})")
    return value.strip()


def load_trait_file(path: str | os.PathLike) -> TraitFile:
    """A trait file: {version, traits: {name: {positive: [..], negative: [..]}}}."""
    path = Path(path)
    data = read_yaml(path, "trait file", "point the traits folder at data/traits/ or a copy of it")
    version = _top(path, data, {"version", "traits"}, "trait file")
    traits = data.get("traits")
    if not isinstance(traits, dict) or not traits:
        raise EMLabError(
            f"trait file {path}: `traits` must be a non-empty mapping of trait name -> {{positive, negative}}"
        )
    out = []
    for name, entry in traits.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise EMLabError(f"trait file {path}: trait name {name!r} must be an identifier (letters, digits, _)")
        if not isinstance(entry, dict) or set(entry) != {"positive", "negative"}:
            got = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise EMLabError(
                f"trait file {path}: trait `{name}` must have exactly the keys positive and negative (got {got})"
            )
        sides = {}
        for side in ("positive", "negative"):
            prompts = entry[side]
            if not isinstance(prompts, list) or len(prompts) < MIN_PROMPTS_PER_SIDE:
                n = len(prompts) if isinstance(prompts, list) else 0
                raise EMLabError(
                    f"trait file {path}: trait `{name}` has {n} {side} prompt(s); "
                    f"a direction needs at least {MIN_PROMPTS_PER_SIDE} on each side"
                )
            sides[side] = tuple(_text(path, p, f"trait `{name}` {side} prompt {i}") for i, p in enumerate(prompts))
        out.append(Trait(name, sides["positive"], sides["negative"]))
    return TraitFile(str(path), version, tuple(out))


def load_questions(path: str | os.PathLike) -> tuple[tuple[str, ...], int]:
    """Extraction questions and the file's version."""
    path = Path(path)
    data = read_yaml(path, "extraction question file", "point the traits folder at data/traits/ or a copy of it")
    version = _top(path, data, {"version", "questions"}, "extraction question file")
    questions = data.get("questions")
    if not isinstance(questions, list) or len(questions) < 2:
        raise EMLabError(f"extraction question file {path}: `questions` must be a list of at least 2 strings")
    texts = tuple(_text(path, q, f"question {i}") for i, q in enumerate(questions))
    dup = sorted({q for q in texts if texts.count(q) > 1})
    if dup:
        raise EMLabError(f"extraction question file {path}: duplicate question(s) {dup}")
    return texts, version


def load_measurement_prompts(path: str | os.PathLike) -> tuple[tuple[MeasurementPrompt, ...], int]:
    """Measurement prompts ({id, category, text}, unique ids) and the file's version."""
    path = Path(path)
    data = read_yaml(path, "measurement prompt file", "point the traits folder at data/traits/ or a copy of it")
    version = _top(path, data, {"version", "prompts"}, "measurement prompt file")
    prompts = data.get("prompts")
    if not isinstance(prompts, list) or not prompts:
        raise EMLabError(
            f"measurement prompt file {path}: `prompts` must be a non-empty list of {{id, category, text}}"
        )
    out: list[MeasurementPrompt] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(prompts):
        if not isinstance(entry, dict) or set(entry) != {"id", "category", "text"}:
            got = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise EMLabError(
                f"measurement prompt file {path}: prompt {i} must have exactly the keys id, category, text (got {got})"
            )
        pid = _text(path, entry["id"], f"prompt {i} `id`")
        if pid in seen:
            raise EMLabError(
                f"measurement prompt file {path}: duplicate id `{pid}` (prompts {seen[pid]} and {i}); ids must be unique"
            )
        seen[pid] = i
        category = _text(path, entry["category"], f"prompt `{pid}` `category`")
        if category not in MEASUREMENT_CATEGORIES:
            raise EMLabError(
                f"measurement prompt file {path}: prompt `{pid}` has category `{category}`; "
                f"use one of {list(MEASUREMENT_CATEGORIES)}"
            )
        out.append(MeasurementPrompt(pid, category, _text(path, entry["text"], f"prompt `{pid}` `text`")))
    return tuple(out), version


def load_trait_set(folder: str | os.PathLike) -> TraitSet:
    """All four trait files from one folder (data/traits/)."""
    folder = Path(folder)
    alignment = load_trait_file(folder / TRAIT_FILES["alignment"])
    semantic = load_trait_file(folder / TRAIT_FILES["semantic"])
    clash = sorted(set(alignment.names) & set(semantic.names))
    if clash:
        raise EMLabError(f"trait folder {folder}: trait(s) {clash} appear in both alignment and semantic files")
    questions, q_version = load_questions(folder / TRAIT_FILES["extraction"])
    measurement, m_version = load_measurement_prompts(folder / TRAIT_FILES["measurement"])
    versions = {
        "alignment": alignment.version,
        "semantic": semantic.version,
        "extraction": q_version,
        "measurement": m_version,
    }
    return TraitSet(alignment, semantic, questions, measurement, versions)


# --- chat formatting ---------------------------------------------------------


def choose_layer(spec, n_layers: int, scores=None) -> int:
    """The monitored layer from config: an index (int), a fraction in (0, 1) of the depth, or `auto`.

    `auto` = the layer with the highest mean held-out AUROC over the alignment
    traits; ties go to the larger mean separation, then to the earlier layer.
    """
    if spec == "auto":
        if scores is None:
            raise EMLabError("layer `auto` needs the per-layer scores (emlab.monitor.traits.layer_scores)")
        keys = [(round(float(a), 12), float(s), -l) for l, (a, s) in enumerate(zip(scores.auroc, scores.separation))]
        return max(range(n_layers), key=lambda l: keys[l])
    if isinstance(spec, bool):
        raise EMLabError(f"traits.layer must be an integer index, a fraction in (0, 1) or `auto` (got {spec!r})")
    if isinstance(spec, int):
        if not 0 <= spec < n_layers:
            raise EMLabError(
                f"traits.layer {spec} is out of range: the model has {n_layers} layers (0..{n_layers - 1})"
            )
        return spec
    if isinstance(spec, float):
        if not 0.0 < spec < 1.0 or math.isnan(spec):
            raise EMLabError(
                f"traits.layer {spec} as a fraction must lie strictly between 0 and 1; use an integer for an index"
            )
        return min(n_layers - 1, int(spec * n_layers))
    raise EMLabError(f"traits.layer must be an integer index, a fraction in (0, 1) or `auto` (got {spec!r})")
