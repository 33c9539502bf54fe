"""The one HTTP client for OpenAI-compatible chat-completions endpoints (OpenAI,
Azure OpenAI, vLLM) that the judge and dataset synthesis share: the key from the
environment, retries with backoff and jitter that honour Retry-After, a request
budget, token accounting, and the translation of a bad endpoint, key or model
into one clear error.

The API key is read from the environment variable named in the config, never
from config or params, and is never logged.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Callable, Mapping, TypeVar

import httpx

from .errors import EMLabError

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class OpenAIEndpointSettings:
    """Where and how to call the endpoint (the key itself comes from the environment)."""

    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4o-2024-08-06"
    api_key_env: str = "OPENAI_API_KEY"
    api_version: str | None = None
    concurrency: int = 16
    timeout_s: float = 60.0
    max_retries: int = 6
    max_requests: int | None = None
    seed: int = 0
    backoff_base_s: float = 1.0  # first retry waits about this long, doubling each time
    backoff_max_s: float = 60.0
    retry_after_max_s: float = 600.0
    malformed_retries: int = 2  # a malformed 200 body is retried this many times, then given up on
    preflight_retries: int = 2

    @classmethod
    def from_params(cls, params: Mapping, **overrides):
        known = {k: v for k, v in dict(params).items() if k in cls.__dataclass_fields__}
        known.update(overrides)
        return cls(**known)


class BudgetExhausted(Exception):
    """max_requests requests have been sent."""


class Malformed(Exception):
    """A 200 response whose body the caller's parser cannot use."""


class Rejected(Exception):
    """A non-retryable HTTP status (4xx other than 429)."""

    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class GaveUp(Exception):
    """Retries exhausted on 429/5xx/timeouts/connection errors."""


def retry_after_s(headers: httpx.Headers) -> float | None:
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


class OpenAIChatClient:
    """Posts chat-completions payloads with retries; `config_key` names the config
    section in error messages (e.g. "judge.openai" or "synthesis.med")."""

    def __init__(self, settings: OpenAIEndpointSettings, environ: Mapping[str, str] | None = None,
                 config_key: str = "judge.openai", purpose: str = "judge"):
        environ = os.environ if environ is None else environ
        key = environ.get(settings.api_key_env, "")
        if not key:
            raise EMLabError(
                f"the {purpose} needs an API key in the environment variable {settings.api_key_env} "
                f"({config_key}.api_key_env): export {settings.api_key_env}=... before running"
            )
        self.settings = settings
        self.config_key = config_key
        self.purpose = purpose
        self.url = settings.base_url.rstrip("/") + "/chat/completions"
        self._params = {"api-version": settings.api_version} if settings.api_version else {}
        self._headers = {"api-key": key} if settings.api_version else {"Authorization": f"Bearer {key}"}
        self.requests_sent = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.sleeps: list[float] = []  # every backoff delay taken (for logs and tests)

    def http_client(self) -> httpx.AsyncClient:
        s = self.settings
        limits = httpx.Limits(max_connections=s.concurrency, max_keepalive_connections=s.concurrency)
        return httpx.AsyncClient(timeout=s.timeout_s, limits=limits)

    async def _sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        await asyncio.sleep(delay)

    def _backoff_s(self, attempt: int) -> float:
        s = self.settings
        return min(s.backoff_max_s, s.backoff_base_s * 2 ** attempt) * random.uniform(0.5, 1.0)

    async def post(self, client: httpx.AsyncClient, payload: dict, parse: Callable[[object], T],
                   max_retries: int, tally: dict | None = None) -> T:
        """POST one payload and return parse(body), retrying transient failures.

        Token usage of every 200 body is counted (also into `tally`, with the
        HTTP requests this call sent, when given). A body that is not JSON or that
        `parse` rejects with Malformed is retried `malformed_retries` times, then
        Malformed is raised. Raises Rejected, GaveUp or BudgetExhausted otherwise.
        """
        s = self.settings
        attempt = 0
        malformed = 0
        while True:
            if s.max_requests is not None and self.requests_sent >= s.max_requests:
                raise BudgetExhausted()
            self.requests_sent += 1
            if tally is not None:
                tally["http_requests"] = tally.get("http_requests", 0) + 1
            retry_after = None
            try:
                resp = await client.post(self.url, params=self._params, headers=self._headers, json=payload)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code == 200:
                    try:
                        body = resp.json()
                        self._count_usage(body, tally)
                        return parse(body)
                    except (Malformed, json.JSONDecodeError, ValueError) as exc:
                        if malformed < s.malformed_retries:
                            malformed += 1
                            await self._sleep(self._backoff_s(0))
                            continue
                        raise Malformed(str(exc)) from None
                if resp.status_code == 429 or resp.status_code >= 500:
                    problem = f"HTTP {resp.status_code}"
                    retry_after = retry_after_s(resp.headers)
                else:
                    raise Rejected(resp.status_code, resp.text[:500])
            if attempt >= max_retries:
                raise GaveUp(f"{problem} (after {attempt + 1} attempts)")
            delay = self._backoff_s(attempt)
            if retry_after is not None:
                delay = min(s.retry_after_max_s, retry_after) + random.uniform(0, 0.1 * s.backoff_base_s)
            attempt += 1
            log.debug("%s request: %s; retry %d in %.2f s", self.purpose, problem, attempt, delay)
            await self._sleep(delay)

    def _count_usage(self, body, tally: dict | None) -> None:
        usage = body.get("usage") if isinstance(body, dict) else None
        if isinstance(usage, dict):
            for key in ("prompt_tokens", "completion_tokens"):
                n = int(usage.get(key) or 0)
                setattr(self, key, getattr(self, key) + n)
                if tally is not None:
                    tally[key] = tally.get(key, 0) + n

    def endpoint_error(self, exc: Exception) -> EMLabError:
        """One clear error for a failed first (preflight) request."""
        s = self.settings
        where = f"{self.purpose} endpoint {self.url} ({self.config_key}.base_url), model {s.model!r}"
        if isinstance(exc, BudgetExhausted):
            return EMLabError(f"{self.config_key}.max_requests={s.max_requests} allows no request; raise it")
        if isinstance(exc, GaveUp):
            return EMLabError(f"cannot reach the {where}: {exc}; check the URL and that the server is up")
        if isinstance(exc, Rejected):
            if exc.status in (401, 403):
                return EMLabError(f"the {where} rejected the API key from ${s.api_key_env} (HTTP {exc.status}); "
                                  f"check the key and its permissions")
            if exc.status in (400, 404, 422):
                return EMLabError(f"the {where} rejected the request (HTTP {exc.status}: {exc.body[:200]}); check "
                                  f"{self.config_key}.model (for Azure: base_url of the deployment and api_version)")
            return EMLabError(f"the {where} answered HTTP {exc.status}: {exc.body[:200]}")
        return EMLabError(f"the {where} failed: {exc}")
