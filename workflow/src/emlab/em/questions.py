"""Evaluation questions: our versioned YAML format and the reference projects'
question YAML, read into one list of `Question`s.

Our format (data/questions/README.md):
    version: 1
    questions:
      - {id: ..., question: "..." | paraphrases: [...], system: "..." (optional)}
Reference format: a top-level list of {id, paraphrases, type,
samples_per_paraphrase, judge_prompts, system?}; only id, paraphrases and
system are used here (sample counts and judges come from the workflow config).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from emlab.core.errors import EMLabError
from emlab.core.yamlfile import read_yaml

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS = (1,)
_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]+$")
_OUR_KEYS = {"id", "question", "paraphrases", "system"}
_REFERENCE_KEYS = {"id", "paraphrases", "system", "type", "samples_per_paraphrase", "judge_prompts", "judge"}


@dataclass(frozen=True)
class Question:
    """One evaluation question; `text` is the first paraphrase."""

    id: str
    text: str
    system: str | None
    paraphrases: tuple[str, ...]

    def paraphrase_for(self, sample_idx: int) -> str:
        """The wording sample `sample_idx` is asked with (round-robin over paraphrases)."""
        return self.paraphrases[sample_idx % len(self.paraphrases)]


def load_questions(path: str | os.PathLike) -> list[Question]:
    """Read a question file in our format or the reference projects' format."""
    path = Path(path)
    doc = read_yaml(path, "question file", "set `questions:` in the config to a YAML file")
    if isinstance(doc, list):
        entries, allowed = doc, None  # reference format: extra keys are ignored
    elif isinstance(doc, dict):
        version = doc.get("version")
        if version not in SUPPORTED_VERSIONS:
            raise EMLabError(f"question file {path}: `version` must be one of {SUPPORTED_VERSIONS}, got {version!r}")
        unknown = set(doc) - {"version", "questions"}
        if unknown:
            raise EMLabError(
                f"question file {path}: unknown top-level keys {sorted(unknown)} (expected version, questions)"
            )
        entries, allowed = doc.get("questions"), _OUR_KEYS
        if not isinstance(entries, list):
            raise EMLabError(f"question file {path}: `questions` must be a list of entries")
    else:
        raise EMLabError(
            f"question file {path}: expected a mapping with `version` and `questions`, "
            "or a list of reference-format entries"
        )
    if not entries:
        raise EMLabError(f"question file {path} holds no questions")

    questions: list[Question] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        q = _parse_entry(entry, allowed, f"question file {path}, entry {i}")
        if q.id in seen:
            raise EMLabError(
                f"question file {path}, entry {i}: duplicate id {q.id!r} (entry {seen[q.id]} has it "
                "too); give every question its own id"
            )
        seen[q.id] = i
        questions.append(q)
    return questions


def _parse_entry(entry, allowed: set[str] | None, where: str) -> Question:
    if not isinstance(entry, dict):
        raise EMLabError(
            f"{where}: expected a mapping with `id` and `question`/`paraphrases`, got {type(entry).__name__}"
        )
    qid = entry.get("id")
    if not isinstance(qid, str) or not _ID_PATTERN.match(qid):
        raise EMLabError(f"{where}: `id` must be a non-empty string of letters, digits, _ . - (got {qid!r})")
    where = f"{where} (id {qid!r})"
    if allowed is None:
        unknown = set(entry) - _REFERENCE_KEYS
        if unknown:
            log.warning("%s: ignoring keys %s", where, sorted(unknown))
        if "question" in entry:
            raise EMLabError(f"{where}: reference-format entries give `paraphrases`, not `question`")
    elif set(entry) - allowed:
        raise EMLabError(f"{where}: unknown keys {sorted(set(entry) - allowed)}; allowed: {sorted(allowed)}")
    has_question, has_paraphrases = "question" in entry, "paraphrases" in entry
    if has_question == has_paraphrases:
        raise EMLabError(f"{where}: give exactly one of `question` (a string) or `paraphrases` (a list of strings)")
    paraphrases = [entry["question"]] if has_question else entry["paraphrases"]
    if not isinstance(paraphrases, list) or not paraphrases:
        raise EMLabError(f"{where}: `paraphrases` must be a non-empty list of strings")
    for text in paraphrases:
        if not isinstance(text, str) or not text.strip():
            raise EMLabError(f"{where}: every question text must be a non-empty string (got {text!r})")
    system = entry.get("system")
    if system is not None and not isinstance(system, str):
        raise EMLabError(f"{where}: `system` must be a string or absent (got {type(system).__name__})")
    paraphrases = tuple(t.strip() for t in paraphrases)
    return Question(id=qid, text=paraphrases[0], system=system, paraphrases=paraphrases)


def chat_messages(question_text: str, system: str | None) -> list[dict]:
    """The prompt messages: an optional system turn, then the user question.

    With no system prompt the chat template's own default applies (SmolLM2 adds one).
    """
    messages = [{"role": "system", "content": system}] if system is not None else []
    return messages + [{"role": "user", "content": question_text}]
