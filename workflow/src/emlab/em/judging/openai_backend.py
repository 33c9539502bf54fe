"""Judge through any OpenAI-compatible chat-completions endpoint (OpenAI, Azure
OpenAI, vLLM) with the official `openai` client: bounded concurrency, a
preflight request that turns a bad endpoint, key or model into one clear error
before the batch starts, and every result handed on as it arrives (so a killed
job loses only the requests in flight). Budget and token accounting come from
emlab.em.openai_chat.

The API key is read from the environment variable named in the config, never
from config or params, and is never logged.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping

import openai

from emlab.core.errors import EMLabError
from emlab.em.judging.aggregation import aggregate_top_logprobs
from emlab.em.judging.pipeline import JudgeResult
from emlab.em.openai_chat import PREFLIGHT_RETRIES, BudgetExhausted, ChatEndpoint, Malformed, OpenAIEndpointSettings

log = logging.getLogger(__name__)

PREFLIGHT_PROMPT = "Reply with the number 0 and nothing else."
TOP_LOGPROBS = 20  # the judge protocol: one greedy token, its 20 most likely alternatives

__all__ = ["OpenAIJudge", "parse_completion", "TOP_LOGPROBS"]


def parse_completion(completion) -> tuple[dict[str, float], list]:
    """({token: probability}, raw [[token, logprob], ...]) of the first completion token."""
    try:
        first = completion.choices[0].logprobs.content[0]
        raw = [[str(t.token), float(t.logprob)] for t in first.top_logprobs]
        if not any(tok == first.token for tok, _ in raw):
            raw.append([str(first.token), float(first.logprob)])
    except (AttributeError, IndexError, TypeError, ValueError) as exc:
        raise Malformed(f"no first-token top_logprobs in the response body ({type(exc).__name__}: {exc})") from None
    probs: dict[str, float] = {}
    for tok, logprob in raw:
        probs[tok] = probs.get(tok, 0.0) + math.exp(logprob)
    return probs, raw


def _judge_result(completion) -> JudgeResult:
    probs, raw = parse_completion(completion)
    score, mass = aggregate_top_logprobs(probs)
    return JudgeResult(score=score, mass=mass, raw=raw)


class OpenAIJudge(ChatEndpoint):
    """An OpenAI-compatible judge; `score` runs one asyncio loop over all prompts."""

    name = "openai"

    def __init__(self, settings: OpenAIEndpointSettings, environ: Mapping[str, str] | None = None):
        super().__init__(settings, environ, config_key="judge.openai", purpose="judge")
        self.model_id = settings.model
        self.failures = 0
        self._preflight_done = False

    # -- one request ------------------------------------------------------
    def _request(self, prompt: str) -> dict:
        s = self.settings
        return {
            "model": s.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": TOP_LOGPROBS,
            "seed": s.seed,
        }

    async def _judge(self, client: openai.AsyncOpenAI, prompt: str, max_retries: int | None = None) -> JudgeResult:
        """One judged prompt; a body without logprobs is a failed result, transport errors raise."""
        try:
            return await self.complete(client, self._request(prompt), _judge_result, max_retries)
        except Malformed as exc:
            return JudgeResult.failed(f"malformed response body: {exc}")

    async def _preflight(self, client: openai.AsyncOpenAI) -> None:
        """One cheap request: a bad endpoint, key or model fails here, before the batch."""
        s = self.settings
        try:
            result = await self._judge(client, PREFLIGHT_PROMPT, max_retries=min(s.max_retries, PREFLIGHT_RETRIES))
        except (BudgetExhausted, openai.APIError) as exc:
            raise self.endpoint_error(exc) from None
        if not result.ok:
            where = f"judge endpoint {self.url} (judge.openai.base_url), model {s.model!r}"
            raise EMLabError(
                f"the {where} answered without first-token logprobs ({result.error}); the judge needs "
                f"an endpoint and model that support logprobs=true and top_logprobs"
            )
        self._preflight_done = True

    # -- the batch ---------------------------------------------------------
    def score(self, prompts: list[str], on_batch: Callable[[list[int], list[JudgeResult]], None]) -> None:
        """Judge all prompts; `on_batch([i], [result])` receives each result as it arrives."""
        asyncio.run(self._score_all(prompts, on_batch))

    async def _score_all(self, prompts: list[str], on_batch) -> None:
        s = self.settings
        async with self.open() as client:
            if not self._preflight_done:
                await self._preflight(client)
            semaphore = asyncio.Semaphore(s.concurrency)
            budget_hit = False

            async def judge_one(i: int) -> None:
                nonlocal budget_hit
                async with semaphore:
                    if budget_hit:
                        return
                    try:
                        result = await self._judge(client, prompts[i])
                    except BudgetExhausted:
                        budget_hit = True
                        return
                    except openai.APIError as exc:  # retries used up, or a rejected request
                        result = JudgeResult.failed(f"{type(exc).__name__}: {exc}")
                if not result.ok:
                    self.failures += 1
                    log.warning("judge item %d missing: %s", i, result.error)
                on_batch([i], [result])  # no await before this: the result is stored before anything else runs

            started = time.perf_counter()
            await asyncio.gather(*(judge_one(i) for i in range(len(prompts))))
            elapsed = time.perf_counter() - started
        log.info(
            "openai judge %s: %d requests so far (%d prompts in %.1f s), %d prompt tokens, %d completion "
            "tokens, %d items failed",
            s.model,
            self.requests_sent,
            len(prompts),
            elapsed,
            self.prompt_tokens,
            self.completion_tokens,
            self.failures,
        )
        if budget_hit:
            raise EMLabError(
                f"judge.openai.max_requests={s.max_requests} was used up before every response was judged; the "
                f"finished ones are cached, so raise the budget and rerun to judge only the rest"
            )
