"""What the judge and dataset synthesis add to the official `openai` client.

The client (`AsyncOpenAI`, or `AsyncAzureOpenAI` when api_version is set) does
the HTTP: retries with backoff that honour Retry-After, timeouts, typed errors.
This module adds what it lacks: the key read from the environment variable the
config names (never from config, params or logs), a budget of HTTP requests
(retries included), token accounting, a retry of 200 bodies the caller cannot
use, and one clear error when the first (preflight) request shows a bad
endpoint, key or model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import openai

from emlab.core.errors import EMLabError

log = logging.getLogger(__name__)
# The HTTP library logs every request at INFO; a judging job sends thousands. The totals are logged instead.
for _name in ("httpx2", "httpx"):
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.WARNING)

T = TypeVar("T")

PREFLIGHT_RETRIES = 2  # the first request gives up early: a wrong URL should not wait out max_retries
MALFORMED_RETRIES = 2  # a 200 body the caller cannot use is asked for again this many times


@dataclass(frozen=True)
class OpenAIEndpointSettings:
    """Where and how to call the endpoint (`judge.openai`, or part of a `synthesis.<name>` entry).

    The key itself comes from the environment variable `api_key_env`.
    """

    base_url: str
    model: str
    api_key_env: str
    api_version: str | None  # set: Azure OpenAI (api-key header, api-version query)
    concurrency: int
    timeout_s: float
    max_retries: int
    max_requests: int | None
    seed: int


class BudgetExhausted(Exception):
    """The request budget is used up; raised instead of sending another HTTP request."""


class Malformed(Exception):
    """A 200 response whose body the caller cannot use."""


class ChatEndpoint:
    """Chat completions through the `openai` client, with a request budget and token counts.

    `config_key` names the config section in error messages (e.g. "judge.openai"
    or "synthesis.med"); `purpose` says who calls ("judge", "dataset synthesis").
    """

    def __init__(
        self,
        settings: OpenAIEndpointSettings,
        environ: Mapping[str, str] | None = None,
        config_key: str = "judge.openai",
        purpose: str = "judge",
    ):
        environ = os.environ if environ is None else environ
        key = environ.get(settings.api_key_env, "")
        if not key:
            raise EMLabError(
                f"the {purpose} needs an API key in the environment variable {settings.api_key_env} "
                f"({config_key}.api_key_env): export {settings.api_key_env}=... before running"
            )
        self._api_key = key
        self.settings = settings
        self.config_key = config_key
        self.purpose = purpose
        self.url = settings.base_url.rstrip("/") + "/chat/completions"
        self.max_requests = settings.max_requests  # a caller may lower it by what earlier runs sent
        self.requests_sent = 0  # HTTP requests, retries included
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def open(self) -> openai.AsyncOpenAI:
        """A client for one event loop (use as `async with endpoint.open() as client`)."""
        s = self.settings
        http = openai.DefaultAsyncHttpxClient(event_hooks={"request": [self._count_request]})
        common = dict(
            api_key=self._api_key, base_url=s.base_url, timeout=s.timeout_s, max_retries=s.max_retries, http_client=http
        )
        if s.api_version:
            return openai.AsyncAzureOpenAI(api_version=s.api_version, **common)
        return openai.AsyncOpenAI(**common)

    async def _count_request(self, request) -> None:
        """Called before every HTTP request, retries included: the budget stops the one too many."""
        if self.max_requests is not None and self.requests_sent >= self.max_requests:
            raise BudgetExhausted()
        self.requests_sent += 1

    async def complete(
        self,
        client: openai.AsyncOpenAI,
        request: dict,
        parse: Callable[[object], T],
        max_retries: int | None = None,
        tally: dict | None = None,
    ) -> T:
        """parse(completion) of one chat completion (`request`: the create() arguments).

        The client retries 429/5xx/timeouts/connection errors (`max_retries`, or the
        settings') and raises openai.APIError subclasses once it gives up; the budget
        raises BudgetExhausted. A body that does not parse, or that `parse` rejects
        with Malformed, is asked for again MALFORMED_RETRIES times, then Malformed is
        raised. `tally` collects this call's http_requests and tokens.
        """
        if max_retries is not None:
            client = client.with_options(max_retries=max_retries)
        problem = None
        for _ in range(MALFORMED_RETRIES + 1):
            try:
                raw = await client.chat.completions.with_raw_response.create(**request)
            except openai.APIConnectionError as exc:
                if isinstance(exc.__cause__, BudgetExhausted):  # a client that wraps what the request hook raised
                    raise exc.__cause__ from None
                raise
            self._tally(tally, "http_requests", raw.retries_taken + 1)
            try:
                completion = raw.parse()
                usage = completion.usage
                if usage is not None:
                    self._count_tokens(tally, usage.prompt_tokens or 0, usage.completion_tokens or 0)
                return parse(completion)
            except (Malformed, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
                problem = exc  # ValueError includes a body that is not JSON
                log.debug("%s request: unusable response body (%s); asking again", self.purpose, exc)
        raise Malformed(f"{type(problem).__name__}: {problem}")

    def _count_tokens(self, tally: dict | None, prompt: int, completion: int) -> None:
        self.prompt_tokens += int(prompt)
        self.completion_tokens += int(completion)
        self._tally(tally, "prompt_tokens", prompt)
        self._tally(tally, "completion_tokens", completion)

    @staticmethod
    def _tally(tally: dict | None, key: str, n: int) -> None:
        if tally is not None:
            tally[key] = tally.get(key, 0) + int(n)

    def endpoint_error(self, exc: Exception) -> EMLabError:
        """One clear error for a failed request (the preflight's, or one that stops a run)."""
        s = self.settings
        where = f"{self.purpose} endpoint {self.url} ({self.config_key}.base_url), model {s.model!r}"
        if isinstance(exc, BudgetExhausted):
            return EMLabError(f"{self.config_key}.max_requests={s.max_requests} allows no further request; raise it")
        if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
            return EMLabError(
                f"cannot reach the {where}: {type(exc).__name__}: {exc}; check the URL and that the server is up"
            )
        if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            return EMLabError(
                f"the {where} rejected the API key from ${s.api_key_env} (HTTP {exc.status_code}); "
                f"check the key and its permissions"
            )
        if isinstance(exc, (openai.NotFoundError, openai.BadRequestError, openai.UnprocessableEntityError)):
            return EMLabError(
                f"the {where} rejected the request (HTTP {exc.status_code}: {str(exc)[:200]}); check "
                f"{self.config_key}.model (for Azure: base_url of the deployment and api_version)"
            )
        if isinstance(exc, openai.RateLimitError):
            return EMLabError(
                f"the {where} kept answering HTTP 429 (rate limit or quota) through the retries: "
                f"{str(exc)[:200]}; lower {self.config_key}.concurrency or check the quota"
            )
        if isinstance(exc, openai.APIStatusError):
            return EMLabError(f"the {where} answered HTTP {exc.status_code}: {str(exc)[:200]}")
        return EMLabError(f"the {where} failed: {type(exc).__name__}: {exc}")
