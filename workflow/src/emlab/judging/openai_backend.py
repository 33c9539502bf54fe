"""Judge through any OpenAI-compatible chat-completions endpoint (OpenAI, Azure
OpenAI, vLLM), with httpx: bounded concurrency, retries with backoff and jitter,
a request budget, token accounting and a preflight request that turns a bad
endpoint, key or model into one clear error before the batch starts.

The API key is read from the environment variable named in the config, never
from config or params, and is never logged.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import httpx

from ..errors import EMLabError
from .aggregation import aggregate_top_logprobs
from .pipeline import JudgeResult

log = logging.getLogger(__name__)

PREFLIGHT_PROMPT = "Reply with the number 0 and nothing else."


@dataclass
class OpenAIJudgeSettings:
    """Everything the client needs except the key (which comes from the environment)."""

    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4o-2024-08-06"
    api_key_env: str = "OPENAI_API_KEY"
    api_version: str | None = None
    concurrency: int = 16
    timeout_s: float = 60.0
    max_retries: int = 6
    max_requests: int | None = None
    seed: int = 0
    top_logprobs: int = 20
    backoff_base_s: float = 1.0  # first retry waits about this long, doubling each time
    backoff_max_s: float = 60.0
    retry_after_max_s: float = 600.0
    malformed_retries: int = 2  # a malformed 200 body is retried this many times, then the item is missing
    preflight_retries: int = 2
    commit_every: int = 32  # results handed to the cache per batch

    @classmethod
    def from_params(cls, params: Mapping, **overrides) -> "OpenAIJudgeSettings":
        known = {k: v for k, v in dict(params).items() if k in cls.__dataclass_fields__}
        known.update(overrides)
        return cls(**known)


class _BudgetExhausted(Exception):
    pass


class _Malformed(Exception):
    pass


class _Rejected(Exception):
    """A non-retryable HTTP status (4xx other than 429)."""

    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class _GaveUp(Exception):
    """Retries exhausted on 429/5xx/timeouts/connection errors."""


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
        raise _Malformed(f"no first-token top_logprobs in the response body ({type(exc).__name__}: {exc})") from None
    probs: dict[str, float] = {}
    for tok, logprob in raw:
        probs[tok] = probs.get(tok, 0.0) + math.exp(logprob)
    usage = body.get("usage") if isinstance(body, dict) else None
    return probs, raw, usage if isinstance(usage, dict) else {}


def _retry_after_s(headers: httpx.Headers) -> float | None:
    """Seconds from Retry-After (seconds or an HTTP date) or retry-after-ms, if present."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class OpenAIJudge:
    """An OpenAI-compatible judge; `score` runs one asyncio loop over all prompts."""

    name = "openai"

    def __init__(self, settings: OpenAIJudgeSettings, environ: Mapping[str, str] | None = None):
        environ = os.environ if environ is None else environ
        key = environ.get(settings.api_key_env, "")
        if not key:
            raise EMLabError(
                f"the judge needs an API key in the environment variable {settings.api_key_env} "
                f"(judge.openai.api_key_env): export {settings.api_key_env}=... before running"
            )
        self.settings = settings
        self.model_id = settings.model
        self.url = settings.base_url.rstrip("/") + "/chat/completions"
        self._params = {"api-version": settings.api_version} if settings.api_version else {}
        self._headers = {"api-key": key} if settings.api_version else {"Authorization": f"Bearer {key}"}
        self.requests_sent = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.failures = 0
        self.sleeps: list[float] = []  # every backoff delay taken (for logs and tests)
        self._preflight_done = False

    async def _sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        await asyncio.sleep(delay)

    # -- one request ------------------------------------------------------
    def _payload(self, prompt: str) -> dict:
        s = self.settings
        return {"model": s.model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 1,
                "temperature": 0, "logprobs": True, "top_logprobs": s.top_logprobs, "seed": s.seed}

    def _backoff_s(self, attempt: int) -> float:
        s = self.settings
        return min(s.backoff_max_s, s.backoff_base_s * 2 ** attempt) * random.uniform(0.5, 1.0)

    async def _request(self, client: httpx.AsyncClient, prompt: str, max_retries: int) -> JudgeResult:
        """POST one judge prompt, retrying transient failures; raises _Rejected/_GaveUp/_BudgetExhausted."""
        s = self.settings
        attempt = 0
        malformed = 0
        while True:
            if s.max_requests is not None and self.requests_sent >= s.max_requests:
                raise _BudgetExhausted()
            self.requests_sent += 1
            retry_after = None
            try:
                resp = await client.post(self.url, params=self._params, headers=self._headers, json=self._payload(prompt))
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code == 200:
                    try:
                        probs, raw, usage = parse_completion(resp.json())
                    except (_Malformed, json.JSONDecodeError, ValueError) as exc:
                        if malformed < s.malformed_retries:
                            malformed += 1
                            await self._sleep(self._backoff_s(0))
                            continue
                        return JudgeResult.failed(f"malformed response body: {exc}")
                    self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
                    self.completion_tokens += int(usage.get("completion_tokens") or 0)
                    score, mass = aggregate_top_logprobs(probs)
                    return JudgeResult(score=score, mass=mass, raw=raw)
                if resp.status_code == 429 or resp.status_code >= 500:
                    problem = f"HTTP {resp.status_code}"
                    retry_after = _retry_after_s(resp.headers)
                else:
                    raise _Rejected(resp.status_code, resp.text[:500])
            if attempt >= max_retries:
                raise _GaveUp(f"{problem} (after {attempt + 1} attempts)")
            delay = self._backoff_s(attempt)
            if retry_after is not None:
                delay = min(s.retry_after_max_s, retry_after) + random.uniform(0, 0.1 * s.backoff_base_s)
            attempt += 1
            log.debug("judge request: %s; retry %d in %.2f s", problem, attempt, delay)
            await self._sleep(delay)

    async def _preflight(self, client: httpx.AsyncClient) -> None:
        """One cheap request: a bad endpoint, key or model fails here, before the batch."""
        s = self.settings
        where = f"judge endpoint {self.url} (judge.openai.base_url), model {s.model!r}"
        try:
            result = await self._request(client, PREFLIGHT_PROMPT, max_retries=min(s.max_retries, s.preflight_retries))
        except _BudgetExhausted:
            raise EMLabError(f"judge.openai.max_requests={s.max_requests} allows no request; raise it") from None
        except _GaveUp as exc:
            raise EMLabError(f"cannot reach the {where}: {exc}; check the URL and that the server is up") from None
        except _Rejected as exc:
            if exc.status in (401, 403):
                raise EMLabError(f"the {where} rejected the API key from ${s.api_key_env} (HTTP {exc.status}); "
                                 f"check the key and its permissions") from None
            if exc.status in (400, 404, 422):
                raise EMLabError(f"the {where} rejected the request (HTTP {exc.status}: {exc.body[:200]}); check "
                                 f"judge.openai.model (for Azure: base_url of the deployment and api_version)") from None
            raise EMLabError(f"the {where} answered HTTP {exc.status}: {exc.body[:200]}") from None
        if not result.ok:
            raise EMLabError(f"the {where} answered without first-token logprobs ({result.error}); the judge needs "
                             f"an endpoint and model that support logprobs=true and top_logprobs")
        self._preflight_done = True

    # -- the batch ---------------------------------------------------------
    def score(self, prompts: list[str], on_batch: Callable[[list[int], list[JudgeResult]], None]) -> None:
        """Judge all prompts; `on_batch` receives finished results every `commit_every` items."""
        asyncio.run(self._score_all(prompts, on_batch))

    async def _score_all(self, prompts: list[str], on_batch) -> None:
        s = self.settings
        limits = httpx.Limits(max_connections=s.concurrency, max_keepalive_connections=s.concurrency)
        async with httpx.AsyncClient(timeout=s.timeout_s, limits=limits) as client:
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
                    except _BudgetExhausted:
                        budget_hit = True
                        return
                    except (_Rejected, _GaveUp) as exc:
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
