"""SQLite cache of judged prompts, safe under parallel Snakemake jobs.

Key: (backend, judge model, metric, rubric version, sha256 of the rendered
prompt). Value: raw score (before the mass threshold), mass and the raw
distribution as JSON. WAL mode and a busy timeout let separate processes read
and write concurrently. The pipeline stores each result as it arrives (one
transaction per put_many), so a killed job loses at most the requests in flight;
a committed transaction survives the death of the process (synchronous=NORMAL
gives up durability only on a power loss).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from emlab.core.errors import EMLabError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS judgments (
    backend TEXT NOT NULL,
    judge_model TEXT NOT NULL,
    metric TEXT NOT NULL,
    rubric_version TEXT NOT NULL,
    prompt_sha256 TEXT NOT NULL,
    score REAL,
    mass REAL NOT NULL,
    raw TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (backend, judge_model, metric, rubric_version, prompt_sha256)
) WITHOUT ROWID
"""


def prompt_sha256(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


class CacheKey(NamedTuple):
    backend: str
    judge_model: str
    metric: str
    rubric_version: str
    prompt_sha256: str


class CachedJudgment(NamedTuple):
    score: float  # raw weighted mean, NaN when mass is 0
    mass: float
    raw: str  # JSON: the top logprobs (openai) or the integer distribution (hf)


class JudgeCache:
    """A connection to the judge cache; use as a context manager."""

    def __init__(self, path: str | os.PathLike, busy_timeout_s: float = 120.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(str(self.path), timeout=busy_timeout_s, isolation_level=None)
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.execute(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise EMLabError(
                f"judge cache {self.path} cannot be opened ({exc}); delete it or set judge.cache"
            ) from None

    def __enter__(self) -> JudgeCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    def get_many(self, keys: Iterable[CacheKey]) -> dict[CacheKey, CachedJudgment]:
        """The cached judgments among `keys`."""
        found = {}
        for key in keys:
            row = self._conn.execute(
                "SELECT score, mass, raw FROM judgments WHERE backend=? AND judge_model=? AND metric=? "
                "AND rubric_version=? AND prompt_sha256=?",
                tuple(key),
            ).fetchone()
            if row is not None:
                score = math.nan if row[0] is None else float(row[0])
                found[key] = CachedJudgment(score, float(row[1]), row[2])
        return found

    def put_many(self, items: Iterable[tuple[CacheKey, CachedJudgment]]) -> int:
        """Store judgments in one transaction (committed on return)."""
        rows = [
            (
                *key,
                None if not math.isfinite(j.score) else float(j.score),
                float(j.mass),
                j.raw if isinstance(j.raw, str) else json.dumps(j.raw),
                time.time(),
            )
            for key, j in items
        ]
        if not rows:
            return 0
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.executemany("INSERT OR REPLACE INTO judgments VALUES (?,?,?,?,?,?,?,?,?)", rows)
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        return len(rows)

    def count(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM judgments").fetchone()[0]
