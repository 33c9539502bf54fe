"""Judge every response of a generations table on every metric, through the cache.

Backends implement `score(prompts, on_batch)`: they call `on_batch(indices,
results)` as results finish (the openai backend: each one as it arrives; the hf
backend: each forward batch), and the pipeline stores the genuine results in
the cache right away, one transaction per call. A killed job therefore re-pays
at most the requests that were in flight. A backend is only built when
something is not cached, so a fully cached rerun loads no model and makes no
request.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import pandas as pd
from tqdm.auto import tqdm

from emlab.core.errors import EMLabError
from emlab.em.judging.aggregation import thresholded
from emlab.em.judging.cache import CachedJudgment, CacheKey, JudgeCache, prompt_sha256
from emlab.em.judging.rubrics import Rubric

log = logging.getLogger(__name__)

JUDGMENT_COLUMNS_FIXED = ("condition", "question_id", "sample_idx")
REQUIRED_RESPONSE_COLUMNS = ("condition", "question_id", "sample_idx", "question", "response")


@dataclass
class JudgeResult:
    """One judged prompt: the raw score (before the mass threshold), the mass on
    integers 0..100, the raw distribution, and whether it is a genuine answer
    (cacheable) or a failure (transport error, malformed body)."""

    score: float
    mass: float
    raw: object = field(default_factory=dict)
    ok: bool = True
    error: str | None = None

    @classmethod
    def failed(cls, error: str) -> JudgeResult:
        return cls(score=math.nan, mass=0.0, raw={}, ok=False, error=error)


class JudgeBackend(Protocol):
    def score(self, prompts: list[str], on_batch: Callable[[list[int], list[JudgeResult]], None]) -> None: ...


def judge_responses(
    responses: pd.DataFrame,
    rubrics: dict[str, Rubric],
    make_backend: Callable[[], JudgeBackend],
    backend_name: str,
    judge_model: str,
    cache_path,
    min_number_mass: float,
    progress: bool = True,
) -> pd.DataFrame:
    """The judgments table: one row per response, `m` and `m_mass` per metric."""
    missing_cols = [c for c in REQUIRED_RESPONSE_COLUMNS if c not in responses.columns]
    if missing_cols:
        raise EMLabError(f"responses table lacks column(s) {missing_cols}; it must be a generations parquet")
    out = responses[list(JUDGMENT_COLUMNS_FIXED)].copy().reset_index(drop=True)
    questions = responses["question"].astype(str).tolist()
    answers = responses["response"].fillna("").astype(str).tolist()
    backend = None
    n_failed_total = 0

    with JudgeCache(cache_path) as cache:
        for metric, rubric in rubrics.items():
            prompts = [rubric.render(q, a) for q, a in zip(questions, answers)]
            keys = [CacheKey(backend_name, judge_model, metric, rubric.version, prompt_sha256(p)) for p in prompts]
            results: dict[CacheKey, JudgeResult] = {
                k: JudgeResult(c.score, c.mass, c.raw) for k, c in cache.get_many(set(keys)).items()
            }
            # Identical prompts (same question and answer) are judged once.
            todo_keys: list[CacheKey] = []
            todo_prompts: list[str] = []
            seen: set[CacheKey] = set()
            for k, p in zip(keys, prompts):
                if k not in results and k not in seen:
                    seen.add(k)
                    todo_keys.append(k)
                    todo_prompts.append(p)
            log.info(
                "judge %s: %d responses, %d cached, %d to judge",
                metric,
                len(prompts),
                sum(k in results for k in keys),
                len(todo_keys),
            )
            if todo_prompts:
                if backend is None:
                    backend = make_backend()
                bar = tqdm(total=len(todo_prompts), desc=f"judge {metric}", unit="prompt", disable=not progress)

                def on_batch(indices, batch_results, _keys=todo_keys, _bar=bar):
                    genuine = []
                    for i, r in zip(indices, batch_results):
                        results[_keys[i]] = r
                        if r.ok:
                            genuine.append((_keys[i], CachedJudgment(r.score, r.mass, r.raw)))
                    cache.put_many(genuine)
                    _bar.update(len(indices))

                try:
                    backend.score(todo_prompts, on_batch)
                finally:
                    bar.close()
            n_failed = 0
            scores, masses = [], []
            for k in keys:
                r = results.get(k)
                if r is None or not r.ok:
                    n_failed += 1
                    r = r or JudgeResult.failed("not judged")
                scores.append(thresholded(r.score, r.mass, min_number_mass))
                masses.append(float(r.mass))
            if n_failed:
                log.warning(
                    "judge %s: %d of %d responses have no score because of errors (not cached: "
                    "delete the judgments file and rerun to retry only those)",
                    metric,
                    n_failed,
                    len(keys),
                )
            n_failed_total += n_failed
            out[metric] = pd.Series(scores, dtype="float64")
            out[f"{metric}_mass"] = pd.Series(masses, dtype="float64")
    out["judge_backend"] = backend_name
    out["judge_model"] = judge_model
    if len(out) and n_failed_total == len(out) * len(rubrics):
        raise EMLabError("every judge request failed; see the log for the errors (nothing was cached)")
    return out
