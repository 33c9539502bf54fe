"""Judge through any OpenAI-compatible chat-completions endpoint (OpenAI, Azure
OpenAI, vLLM): bounded concurrency and a preflight request that turns a bad
endpoint, key or model into one clear error before the batch starts, on the
shared client of emlab.openai_chat (retries with backoff and jitter, request
budget, token accounting).

The API key is read from the environment variable named in the config, never
from config or params, and is never logged.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import httpx

from ..errors import EMLabError
from ..openai_chat import (BudgetExhausted, GaveUp, Malformed, OpenAIChatClient, OpenAIEndpointSettings, Rejected,
                           retry_after_s as _retry_after_s)
from .aggregation import aggregate_top_logprobs
from .pipeline import JudgeResult

log = logging.getLogger(__name__)

PREFLIGHT_PROMPT = "Reply with the number 0 and nothing else."

__all__ = ["OpenAIJudge", "OpenAIJudgeSettings", "parse_completion", "_retry_after_s"]


@dataclass
class OpenAIJudgeSettings(OpenAIEndpointSettings):
    """The endpoint settings plus what only the judge needs."""

    top_logprobs: int = 20
    commit_every: int = 32  # results handed to the cache per batch


def parse_completion(body) -> tuple[dict[str, float], list, dict]:
    """({token: probability}, raw [[token, logprob], ...], usage) of a chat-completions body."""
    try:
        choice = body["choices"][0]
        content = choice["logprobs"]["content"]
        first = content[0]
        top = first["top_logprobs"]
        raw = [[str(t["token"]), float(t["logprob"])] for t in top]
        if not any(tok == first["token"] for tok, _ in raw):
            raw.append([str(first["token"]), float(first["logprob"])])
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise Malformed(f"no first-token top_logprobs in the response body ({type(exc).__name__}: {exc})") from None
    probs: dict[str, float] = {}
    for tok, logprob in raw:
        probs[tok] = probs.get(tok, 0.0) + math.exp(logprob)
    usage = body.get("usage") if isinstance(body, dict) else None
    return probs, raw, usage if isinstance(usage, dict) else {}


class OpenAIJudge(OpenAIChatClient):
    """An OpenAI-compatible judge; `score` runs one asyncio loop over all prompts."""

    name = "openai"

    def __init__(self, settings: OpenAIJudgeSettings, environ: Mapping[str, str] | None = None):
        super().__init__(settings, environ, config_key="judge.openai", purpose="judge")
        self.model_id = settings.model
        self.failures = 0
        self._preflight_done = False

    # -- one request ------------------------------------------------------
    def _payload(self, prompt: str) -> dict:
        s = self.settings
        return {"model": s.model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 1,
                "temperature": 0, "logprobs": True, "top_logprobs": s.top_logprobs, "seed": s.seed}

    async def _request(self, client: httpx.AsyncClient, prompt: str, max_retries: int) -> JudgeResult:
        """POST one judge prompt, retrying transient failures; raises Rejected/GaveUp/BudgetExhausted."""
        def parse(body) -> JudgeResult:
            probs, raw, _ = parse_completion(body)
            score, mass = aggregate_top_logprobs(probs)
            return JudgeResult(score=score, mass=mass, raw=raw)

        try:
            return await self.post(client, self._payload(prompt), parse, max_retries)
        except Malformed as exc:
            return JudgeResult.failed(f"malformed response body: {exc}")

    async def _preflight(self, client: httpx.AsyncClient) -> None:
        """One cheap request: a bad endpoint, key or model fails here, before the batch."""
        s = self.settings
        try:
            result = await self._request(client, PREFLIGHT_PROMPT, max_retries=min(s.max_retries, s.preflight_retries))
        except (BudgetExhausted, GaveUp, Rejected) as exc:
            raise self.endpoint_error(exc) from None
        if not result.ok:
            where = f"judge endpoint {self.url} (judge.openai.base_url), model {s.model!r}"
            raise EMLabError(f"the {where} answered without first-token logprobs ({result.error}); the judge needs "
                             f"an endpoint and model that support logprobs=true and top_logprobs")
        self._preflight_done = True

    # -- the batch ---------------------------------------------------------
    def score(self, prompts: list[str], on_batch: Callable[[list[int], list[JudgeResult]], None]) -> None:
        """Judge all prompts; `on_batch` receives finished results every `commit_every` items."""
        asyncio.run(self._score_all(prompts, on_batch))

    async def _score_all(self, prompts: list[str], on_batch) -> None:
        s = self.settings
        async with self.http_client() as client:
            if not self._preflight_done:
                await self._preflight(client)
            semaphore = asyncio.Semaphore(s.concurrency)
            pending_idx: list[int] = []
            pending_res: list[JudgeResult] = []
            budget_hit = False

            def flush() -> None:
                if pending_idx:
                    on_batch(list(pending_idx), list(pending_res))
                    pending_idx.clear()
                    pending_res.clear()

            async def judge_one(i: int) -> None:
                nonlocal budget_hit
                async with semaphore:
                    if budget_hit:
                        return
                    try:
                        result = await self._request(client, prompts[i], max_retries=s.max_retries)
                    except BudgetExhausted:
                        budget_hit = True
                        return
                    except (Rejected, GaveUp) as exc:
                        result = JudgeResult.failed(str(exc))
                if not result.ok:
                    self.failures += 1
                    log.warning("judge item %d missing: %s", i, result.error)
                pending_idx.append(i)
                pending_res.append(result)
                if len(pending_idx) >= s.commit_every:
                    flush()

            started = time.perf_counter()
            await asyncio.gather(*(judge_one(i) for i in range(len(prompts))))
            flush()
            elapsed = time.perf_counter() - started
        log.info("openai judge %s: %d requests so far (%d prompts in %.1f s), %d prompt tokens, %d completion "
                 "tokens, %d items failed", s.model, self.requests_sent, len(prompts), elapsed,
                 self.prompt_tokens, self.completion_tokens, self.failures)
        if budget_hit:
            raise EMLabError(
                f"judge.openai.max_requests={s.max_requests} was used up before every response was judged; the "
                f"finished ones are cached, so raise the budget and rerun to judge only the rest")
