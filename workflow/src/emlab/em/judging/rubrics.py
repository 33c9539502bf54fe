"""Judge rubrics: versioned YAML templates with {question} and {answer} placeholders.

Rendering is a single pass over the template that replaces only the two
placeholders, so response text (braces, "{answer}", Jinja markers, prompt
injections) is inserted verbatim and never re-interpreted.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from emlab.core.errors import EMLabError
from emlab.core.yamlfile import read_yaml

PLACEHOLDERS = ("{question}", "{answer}")
_PLACEHOLDER_PATTERN = re.compile(r"\{question\}|\{answer\}")
_REQUIRED_KEYS = {"metric", "version", "template"}


@dataclass(frozen=True)
class Rubric:
    """One metric's judge prompt; `version` is part of the cache key."""

    metric: str
    version: str
    template: str
    path: str = ""

    def render(self, question: str, answer: str) -> str:
        return render_judge_prompt(self.template, question, answer)


def render_judge_prompt(template: str, question: str, answer: str) -> str:
    """Substitute {question} and {answer} in one pass (substituted text is never re-scanned)."""
    values = {"{question}": str(question), "{answer}": str(answer)}
    return _PLACEHOLDER_PATTERN.sub(lambda match: values[match.group(0)], template)


def load_rubric(path: str | os.PathLike) -> Rubric:
    """Read and validate one rubric YAML file."""
    path = Path(path)
    doc = read_yaml(path, "judge rubric", "add it or drop the metric from judge.metrics")
    if not isinstance(doc, dict):
        raise EMLabError(f"judge rubric {path}: expected a mapping with keys {sorted(_REQUIRED_KEYS)}")
    missing = _REQUIRED_KEYS - doc.keys()
    if missing:
        raise EMLabError(f"judge rubric {path}: missing key(s) {sorted(missing)}")
    template = doc["template"]
    if not isinstance(template, str):
        raise EMLabError(f"judge rubric {path}: `template` must be a string")
    for placeholder in PLACEHOLDERS:
        count = template.count(placeholder)
        if count != 1:
            raise EMLabError(f"judge rubric {path}: `template` must contain {placeholder} exactly once (found {count})")
    if template.index("{question}") > template.index("{answer}"):
        raise EMLabError(f"judge rubric {path}: put {{question}} before {{answer}} (fixed rubric text first)")
    if path.stem != str(doc["metric"]):
        raise EMLabError(f"judge rubric {path}: metric {doc['metric']!r} does not match the file name {path.stem!r}")
    return Rubric(metric=str(doc["metric"]), version=str(doc["version"]), template=template, path=str(path))


def load_rubrics(paths, metrics: list[str]) -> dict[str, Rubric]:
    """The rubric of each metric, from the given files (one file per metric, named <metric>.yaml)."""
    by_metric = {}
    for p in paths:
        rubric = load_rubric(p)
        by_metric[rubric.metric] = rubric
    absent = [m for m in metrics if m not in by_metric]
    if absent:
        raise EMLabError(f"no rubric file for metric(s) {absent}; expected <rubrics_dir>/<metric>.yaml")
    return {m: by_metric[m] for m in metrics}
