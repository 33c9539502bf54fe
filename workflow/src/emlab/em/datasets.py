"""Chat datasets: load and validate JSONL conversations, normalise them, and
split them into seeded train/eval sets.

The reference format is one `{"messages": [{"role": "user", ...},
{"role": "assistant", ...}]}` object per line (optionally system turn(s) first);
multi-turn conversations alternating user/assistant and ending with the
assistant are accepted too (training uses only the final reply). Every problem
is reported with the file and line number, before any expensive work starts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from pathlib import Path

from emlab.core.atomic import atomic_path, write_json
from emlab.core.errors import EMLabError

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeio' else 'a'} {word}"


def _check_messages(messages, where: str) -> list[dict]:
    """Validated, normalised copy of one conversation's messages (see module docstring)."""
    if not isinstance(messages, list) or not messages:
        raise EMLabError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects")
    out = []
    for i, msg in enumerate(messages):
        at = f"{where}: messages[{i}]"
        if not isinstance(msg, dict):
            raise EMLabError(f"{at} is a {type(msg).__name__}, not an object with 'role' and 'content'")
        if "role" not in msg or "content" not in msg:
            missing = [k for k in ("role", "content") if k not in msg]
            raise EMLabError(f"{at} has no {' or '.join(repr(k) for k in missing)}")
        role, content = msg["role"], msg["content"]
        if role not in ROLES:
            raise EMLabError(f"{at}: role {role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise EMLabError(f"{at}: content must be a string, got {type(content).__name__}")
        out.append({"role": role, "content": content.strip()})  # unknown keys dropped

    n_system = 0
    while n_system < len(out) and out[n_system]["role"] == "system":
        n_system += 1
    turns = out[n_system:]
    if any(m["role"] == "system" for m in turns):
        i = n_system + next(j for j, m in enumerate(turns) if m["role"] == "system")
        raise EMLabError(
            f"{where}: messages[{i}] is a system turn after the conversation started; system turns go first"
        )
    if not turns:
        raise EMLabError(f"{where}: no user or assistant turn (only system messages)")
    for j, msg in enumerate(turns):
        expected = "user" if j % 2 == 0 else "assistant"
        if msg["role"] != expected:
            raise EMLabError(
                f"{where}: messages[{n_system + j}] is {_a(msg['role'])} turn where {_a(expected)} turn was expected "
                "(after optional system turns, user and assistant must alternate, starting with user)"
            )
    if turns[-1]["role"] != "assistant":
        raise EMLabError(
            f"{where}: no assistant turn at the end (the last message must be the assistant reply to train on)"
        )
    for j, msg in enumerate(turns):
        if msg["role"] == "assistant" and not msg["content"]:
            raise EMLabError(f"{where}: messages[{n_system + j}] is an empty assistant reply")
        if msg["role"] == "user" and not msg["content"]:
            raise EMLabError(f"{where}: messages[{n_system + j}] is an empty user turn")
    return out


def load_chat_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read and validate a chat JSONL file; returns [{"messages": [...]}, ...] (normalised).

    Blank lines are skipped; extra top-level keys (OpenAI fine-tuning style) are
    accepted and dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise EMLabError(f"dataset file {path} does not exist; check datasets.<name>.path in the config")
    records = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EMLabError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise EMLabError(
                    f"{where}: each line must be a JSON object with a 'messages' list, got {type(obj).__name__}"
                )
            if "messages" not in obj:
                raise EMLabError(
                    f'{where}: missing \'messages\' (expected {{"messages": [{{"role": ..., "content": ...}}, ...]}})'
                )
            records.append({"messages": _check_messages(obj["messages"], where)})
    if not records:
        raise EMLabError(f"{path}: no conversations (the file is empty)")
    return records


def prompt_and_answer(record: dict) -> tuple[list[dict], str]:
    """Split a conversation into the prompt messages and the final assistant reply (the training target)."""
    messages = record["messages"]
    return messages[:-1], messages[-1]["content"]


def split_train_eval(records: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """Seeded, deterministic split; both parts come in a seeded shuffled order.

    The eval part holds round(n * eval_fraction) records (at least one when the
    fraction is positive and there are two or more records).
    """
    if not 0 <= eval_fraction < 1:
        raise EMLabError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_eval = int(round(len(records) * eval_fraction))
    if eval_fraction > 0 and n_eval == 0 and len(records) >= 2:
        n_eval = 1
    eval_idx, train_idx = order[:n_eval], order[n_eval:]
    return [records[i] for i in train_idx], [records[i] for i in eval_idx]


def write_chat_jsonl(path: str | os.PathLike, records: list[dict]) -> None:
    """Write records one JSON object per line, atomically."""
    with atomic_path(path, suffix=".jsonl") as tmp:
        with tmp.open("w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def prepare_dataset(
    source: str | os.PathLike,
    train_out: str | os.PathLike,
    eval_out: str | os.PathLike,
    summary_out: str | os.PathLike,
    eval_fraction: float,
    seed: int,
) -> dict:
    """Validate `source`, split it, write train/eval JSONL and a summary (all atomically)."""
    records = load_chat_jsonl(source)
    train, evals = split_train_eval(records, eval_fraction, seed)
    if not train:
        raise EMLabError(f"{source}: eval_fraction {eval_fraction} leaves no training examples")
    n_turns = [sum(m["role"] == "assistant" for m in r["messages"]) for r in records]
    summary = {
        "source": str(source),
        "source_sha256": file_sha256(source),
        "n_examples": len(records),
        "n_train": len(train),
        "n_eval": len(evals),
        "n_multi_turn": sum(n > 1 for n in n_turns),
        "n_with_system": sum(r["messages"][0]["role"] == "system" for r in records),
        "eval_fraction": eval_fraction,
        "seed": seed,
    }
    write_chat_jsonl(train_out, train)
    write_chat_jsonl(eval_out, evals)
    write_json(summary_out, summary)
    log.info("dataset %s: %d train, %d eval", source, len(train), len(evals))
    return summary
