"""Synthesise a narrow chat dataset with an OpenAI-compatible model from a topic
description, the way the published emergent-misalignment datasets were made.

Each request asks the model for `per_request` conversations as JSON (a user
question and an assistant answer in the style the topic describes). Replies are
parsed leniently (code fences, a bare list or an object holding one, a reply cut
off mid-array), every conversation is checked with the dataset validator of
emlab.em.datasets, refusals are dropped, and conversations whose normalised user
text was seen before are dropped as duplicates, until `n_examples` remain.

Every reply is appended to a request log next to the output
(`<name>.requests.jsonl`, kept after success) the moment it arrives, flushed
and fsynced, so a killed or failed job, a larger n_examples or a changed
budget/concurrency continues without paying for the same requests again (a
kill loses at most the requests in flight); the log is set aside when something
that changes the replies (prompt, topic, model, sampling, seed) has changed.
The dataset and its summary are written atomically at the end. The HTTP side
(retries, Retry-After, timeouts) is the official `openai` client's, through
emlab.em.openai_chat.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import re
import string
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import openai

from emlab.core.atomic import atomic_path, write_json
from emlab.core.errors import EMLabError
from emlab.core.settings import build
from emlab.core.yamlfile import read_yaml
from emlab.em.datasets import _check_messages, write_chat_jsonl
from emlab.em.openai_chat import PREFLIGHT_RETRIES, BudgetExhausted, ChatEndpoint, Malformed, OpenAIEndpointSettings

log = logging.getLogger(__name__)

PROGRESS_VERSION = 1
REQUIRED_PLACEHOLDERS = ("topic", "n")
KNOWN_PLACEHOLDERS = ("topic", "n", "avoid")
_REFUSAL = re.compile(
    r"^\W*(i'?m sorry|i am sorry|sorry, (but )?i|i (can ?not|can't|won't|will not|am unable to|'m unable to)"
    r"( help| assist| provide| comply| create| generate| write| do that| fulfil)|as an ai\b)",
    re.IGNORECASE,
)
_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
_PAIR_KEYS = (("user", "assistant"), ("question", "answer"), ("prompt", "response"))


@dataclass(frozen=True)
class SynthesisSettings(OpenAIEndpointSettings):
    """One `synthesis.<name>` config entry: the endpoint plus sampling and stopping settings.

    Built from the validated entry (the schema fills every default; the rule
    replaces a null seed by the config's seed).
    """

    topic: str
    n_examples: int
    per_request: int
    prompt_file: str
    avoid_recent: int
    temperature: float
    top_p: float
    max_tokens: int
    json_mode: bool
    give_up_after: int

    @property
    def request_budget(self) -> int:
        """max_requests, or (null) three times the requests n_examples needs, plus two."""
        if self.max_requests is not None:
            return int(self.max_requests)
        return 3 * math.ceil(self.n_examples / self.per_request) + 2


@dataclass
class SynthesisPrompt:
    """The system prompt and the per-request user template (with $topic, $n, $avoid)."""

    version: str
    system: str
    user: string.Template
    path: str

    def render(self, topic: str, n: int, avoid: list[str]) -> list[dict]:
        avoid_text = ""
        if avoid:
            avoid_text = "Questions already written (do not repeat them or their close variants):\n" + "\n".join(
                f"- {q}" for q in avoid
            )
        user = self.user.substitute(topic=topic.strip(), n=n, avoid=avoid_text).strip()
        messages = [{"role": "user", "content": user}]
        if self.system.strip():
            messages.insert(0, {"role": "system", "content": self.system.strip()})
        return messages


def load_prompt(path: str | os.PathLike) -> SynthesisPrompt:
    """Read a synthesis prompt YAML (version, system, user); errors name the file and key."""
    raw = read_yaml(path, "synthesis prompt file", "check synthesis.<name>.prompt_file")
    if not isinstance(raw, dict):
        raise EMLabError(f"{path}: a synthesis prompt file must be a mapping with version, system and user")
    for key in ("version", "user"):
        if key not in raw:
            raise EMLabError(f"{path}: missing key '{key}' (a synthesis prompt file has version, system and user)")
    unknown = set(raw) - {"version", "system", "user", "description"}
    if unknown:
        raise EMLabError(
            f"{path}: unknown key(s) {', '.join(sorted(unknown))}; allowed: version, description, system, user"
        )
    system, user = raw.get("system") or "", raw["user"]
    if not isinstance(system, str) or not isinstance(user, str) or not user.strip():
        raise EMLabError(f"{path}: 'system' and 'user' must be text and 'user' must not be empty")
    template = string.Template(user)
    names = set()
    for match in template.pattern.finditer(user):
        if match.group("invalid") is not None:
            raise EMLabError(f"{path}: key 'user' has a stray '$' (write $$ for a literal dollar sign)")
        name = match.group("named") or match.group("braced")
        if name:
            names.add(name)
    unknown = names - set(KNOWN_PLACEHOLDERS)
    if unknown:
        raise EMLabError(
            f"{path}: key 'user' uses unknown placeholder(s) {', '.join('$' + n for n in sorted(unknown))}; "
            f"known: {', '.join('$' + n for n in KNOWN_PLACEHOLDERS)}"
        )
    missing = [n for n in REQUIRED_PLACEHOLDERS if n not in names]
    if missing:
        raise EMLabError(f"{path}: key 'user' must contain {', '.join('$' + n for n in missing)}")
    return SynthesisPrompt(version=str(raw["version"]), system=system, user=template, path=str(path))


# -- parsing one reply ------------------------------------------------------
def normalise_question(text: str) -> str:
    """The de-duplication key of a user turn: case-, accent-width-, punctuation- and space-insensitive."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


def is_refusal(text: str) -> bool:
    return bool(_REFUSAL.match(text.strip()[:200]))


def _salvage_array(text: str) -> list:
    """The complete objects at the start of a JSON array that was cut off (finish_reason=length)."""
    start = text.find("[")
    if start < 0:
        return []
    decoder = json.JSONDecoder()
    items, pos = [], start + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return items
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return items
        items.append(obj)


def extract_items(text: str) -> list | None:
    """The list of conversation objects in a model reply, or None when it holds no JSON we can use."""
    text = _FENCE.sub("", text.strip())
    obj = None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
        if starts:
            try:
                obj, _ = json.JSONDecoder().raw_decode(text, min(starts))
            except json.JSONDecodeError:
                obj = None
        if obj is None:
            salvaged = _salvage_array(text)
            return salvaged or None
    if isinstance(obj, list):
        return obj
    if isinstance(obj, dict):
        if "messages" in obj or any(u in obj for u, _ in _PAIR_KEYS):
            return [obj]
        lists = [v for v in obj.values() if isinstance(v, list)]
        if len(lists) == 1:
            return lists[0]
        for key in ("conversations", "examples", "data", "items"):
            if isinstance(obj.get(key), list):
                return obj[key]
    return None


def item_messages(item) -> list | None:
    """A conversation object as chat messages ({"messages": [...]} or a user/assistant pair), else None."""
    if not isinstance(item, dict):
        return None
    if isinstance(item.get("messages"), list):
        return item["messages"]
    for user_key, assistant_key in _PAIR_KEYS:
        if user_key in item and assistant_key in item:
            return [{"role": "user", "content": item[user_key]}, {"role": "assistant", "content": item[assistant_key]}]
    return None


def parse_reply(text: str, where: str) -> dict:
    """Conversations in one reply plus counts of what was dropped and why."""
    out = {"conversations": [], "invalid": 0, "refused": 0, "malformed": 0, "refused_reply": 0}
    items = extract_items(text)
    if items is None:
        out["refused_reply" if is_refusal(text) else "malformed"] = 1
        return out
    for j, item in enumerate(items):
        messages = item_messages(item)
        if messages is None:
            out["invalid"] += 1
            continue
        try:
            messages = _check_messages(messages, f"{where} item {j}")
        except EMLabError as exc:
            log.debug("dropped: %s", exc)
            out["invalid"] += 1
            continue
        if is_refusal(messages[-1]["content"]):
            out["refused"] += 1
            continue
        out["conversations"].append({"messages": messages})
    return out


def _reply_text(completion) -> dict:
    """{"text", "refusal", "finish_reason"} of a chat completion; Malformed when it has no message."""
    try:
        choice = completion.choices[0]
        message = choice.message
        text = message.content or ""
        if not isinstance(text, str):
            raise TypeError(f"content is {type(text).__name__}")
    except (IndexError, TypeError, AttributeError) as exc:
        raise Malformed(f"no choices[0].message.content in the response body ({type(exc).__name__}: {exc})") from None
    return {"text": text, "refusal": getattr(message, "refusal", None), "finish_reason": choice.finish_reason}


# -- the job ----------------------------------------------------------------
def request_log_path(out_jsonl: str | os.PathLike) -> Path:
    """results/synthetic/<name>.jsonl -> results/synthetic/<name>.requests.jsonl"""
    out_jsonl = Path(out_jsonl)
    return out_jsonl.with_name(out_jsonl.name.removesuffix(".jsonl") + ".requests.jsonl")


COUNTS = (
    "duplicates",
    "invalid",
    "refused",
    "malformed",
    "refused_reply",
    "prompt_tokens",
    "completion_tokens",
    "http_requests",
)


class Synthesiser:
    """Runs requests in waves of `concurrency` until n_examples unique conversations are kept."""

    def __init__(
        self, name: str, settings: SynthesisSettings, prompt: SynthesisPrompt, environ: Mapping[str, str] | None = None
    ):
        self.name = name
        self.settings = settings
        self.prompt = prompt
        self.client = ChatEndpoint(settings, environ, config_key=f"synthesis.{name}", purpose="dataset synthesis")
        self.kept: list[dict] = []
        self.seen: set[str] = set()
        self.counts = dict.fromkeys(COUNTS, 0)
        self.n_replies = 0  # request indices used (each a distinct seed)
        self.stale = 0  # consecutive replies that added nothing
        self._log: IO[str] | None = None  # the request log, open for appending while requests run

    def fingerprint(self) -> str:
        s = self.settings
        parts = {
            "prompt_version": self.prompt.version,
            "system": self.prompt.system,
            "user": self.prompt.user.template,
            "topic": s.topic,
            "model": s.model,
            "base_url": s.base_url,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
            "per_request": s.per_request,
            "seed": s.seed,
            "json_mode": s.json_mode,
            "avoid_recent": s.avoid_recent,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    # -- state -------------------------------------------------------------
    def _absorb(self, record: dict) -> None:
        """Apply one finished request (from the network or the request log) to the state."""
        kept_now = 0
        for conv in record["conversations"]:
            key = normalise_question(next(m["content"] for m in conv["messages"] if m["role"] == "user"))
            if key in self.seen:
                self.counts["duplicates"] += 1
                continue
            self.seen.add(key)
            self.kept.append(conv)
            kept_now += 1
        for k in COUNTS:
            if k != "duplicates":
                self.counts[k] += int(record.get(k, 0))
        self.n_replies = max(self.n_replies, int(record["request"]) + 1)
        self.stale = 0 if kept_now else self.stale + 1

    def resume(self, progress: Path) -> int:
        """Replay a request log written with the same fingerprint; returns the replies replayed.

        A log from other settings is renamed aside (never deleted: those replies were paid for);
        a last line cut off by a kill is dropped.
        """
        header = {"version": PROGRESS_VERSION, "fingerprint": self.fingerprint(), "name": self.name}
        lines = progress.read_text(encoding="utf-8").splitlines() if progress.is_file() else []
        try:
            old = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            old = {}
        if lines and (old.get("fingerprint"), old.get("version")) != (header["fingerprint"], PROGRESS_VERSION):
            aside = progress.with_name(f"{progress.name}.{old.get('fingerprint', 'old')}")
            os.replace(progress, aside)
            log.warning(
                "synthesis %s: %s was written with other prompt/topic/model/sampling settings; moved it to "
                "%s and starting afresh",
                self.name,
                progress,
                aside,
            )
            lines = []
        good = []
        for line in lines[1:]:
            try:
                good.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut off by a kill: everything before it is complete
        # replies are logged as they arrive; a wave is absorbed in request order, so replay in that order
        good.sort(key=lambda r: int(r["request"]))
        with atomic_path(progress, suffix=".jsonl") as tmp:
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in [header, *good]), encoding="utf-8")
        for record in good:
            self._absorb(record)
        self.stale = 0
        if good:
            log.info(
                "synthesis %s: replayed %d logged replies (%d conversations kept) from %s",
                self.name,
                len(good),
                len(self.kept),
                progress,
            )
        return len(good)

    # -- requests ----------------------------------------------------------
    def _request(self, index: int, avoid: list[str]) -> dict:
        """The create() arguments of request `index` (its seed is seed + index)."""
        s = self.settings
        request = {
            "model": s.model,
            "messages": self.prompt.render(s.topic, s.per_request, avoid),
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
            "seed": s.seed + index,
        }
        if s.json_mode:
            request["response_format"] = {"type": "json_object"}
        return request

    async def _one(self, client: openai.AsyncOpenAI, index: int, avoid: list[str], max_retries: int) -> dict:
        """Send request `index`; its record, already in the request log."""
        tally = {"http_requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
        record = {"request": index}
        try:
            reply = await self.client.complete(client, self._request(index, avoid), _reply_text, max_retries, tally)
        except Malformed as exc:
            log.warning("synthesis %s request %d: malformed response body (%s)", self.name, index, exc)
            record.update(conversations=[], malformed=1)
        else:
            if reply["refusal"] or reply["finish_reason"] == "content_filter":
                record.update(conversations=[], refused_reply=1)
            else:
                record.update(parse_reply(reply["text"], f"synthesis {self.name} request {index}"))
                if reply["finish_reason"] == "length":
                    log.warning(
                        "synthesis %s request %d: reply cut off at max_tokens=%d; raise max_tokens or lower "
                        "per_request",
                        self.name,
                        index,
                        self.settings.max_tokens,
                    )
        record.update(tally)
        self._log_reply(record)  # no await before this: a paid reply is on disk before anything else runs
        return record

    def _log_reply(self, record: dict) -> None:
        """Append one reply to the request log and force it to disk."""
        self._log.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._log.flush()
        os.fsync(self._log.fileno())

    def _avoid(self) -> list[str]:
        n = self.settings.avoid_recent
        if n <= 0:
            return []
        return [next(m["content"] for m in c["messages"] if m["role"] == "user") for c in self.kept[-n:]]

    # -- the loop ------------------------------------------------------------
    async def _request_until_enough(self, progress: Path) -> None:
        """Send waves of requests until n_examples conversations are kept.

        The first wave is one request with few retries (the preflight: a bad
        endpoint, key or model fails there with one clear error); later waves
        send up to `concurrency` requests at once.
        """
        budget = self.settings.request_budget
        self.client.max_requests = max(0, budget - self.counts["http_requests"])  # earlier runs' requests count too
        first = True
        try:
            with progress.open("a", encoding="utf-8") as self._log:
                async with self.client.open() as client:
                    while len(self.kept) < self.settings.n_examples:
                        self._stop_if_stuck_or_over_budget(budget, progress)
                        records, errors = await self._send_wave(client, self._wave_size(first, budget), first)
                        for record in records:  # absorbed in request order, whatever order they arrived in
                            self._absorb(record)
                        if errors:
                            raise self._wave_error(errors[0], first, budget, progress)
                        first = False
        finally:
            self._log = None

    def _stop_if_stuck_or_over_budget(self, budget: int, progress: Path) -> None:
        if self.stale >= self.settings.give_up_after:
            raise EMLabError(
                f"synthesis.{self.name}: the last {self.stale} replies added no new conversation "
                f"({self._count_text()}); check the topic, prompt_file and model, or raise give_up_after"
            )
        if self.counts["http_requests"] >= budget:
            raise self._budget_error(budget, progress)

    def _wave_size(self, first: bool, budget: int) -> int:
        """1 for the preflight; else as many requests as are needed, allowed at once and left in the budget."""
        if first:
            return 1
        s = self.settings
        missing = s.n_examples - len(self.kept)
        return min(s.concurrency, budget - self.counts["http_requests"], math.ceil(missing / s.per_request))

    async def _send_wave(self, client: openai.AsyncOpenAI, size: int, first: bool) -> tuple[list[dict], list]:
        """The records of `size` concurrent requests (in request order) and the exceptions of those that failed."""
        s = self.settings
        avoid = self._avoid()
        retries = min(s.max_retries, PREFLIGHT_RETRIES) if first else s.max_retries
        indices = range(self.n_replies, self.n_replies + size)
        results = await asyncio.gather(*(self._one(client, i, avoid, retries) for i in indices), return_exceptions=True)
        records = [r for r in results if not isinstance(r, BaseException)]
        errors = [r for r in results if isinstance(r, BaseException)]
        return records, errors

    def _wave_error(self, exc: BaseException, first: bool, budget: int, progress: Path) -> BaseException:
        """The error that ends the run after a failed request (the replies that did arrive are logged)."""
        if not isinstance(exc, (openai.APIError, BudgetExhausted)):
            return exc  # a bug, not the endpoint: raise it as it is
        if isinstance(exc, BudgetExhausted) and not first:
            return self._budget_error(budget, progress)
        err = self.client.endpoint_error(exc)
        if first:
            return err
        return EMLabError(
            f"{err}; the {self.n_replies} finished requests are kept in {progress}, so a rerun continues from there"
        )

    def _budget_error(self, budget: int, progress: Path) -> EMLabError:
        return EMLabError(
            f"synthesis.{self.name}: the request budget ({budget}, synthesis.{self.name}.max_requests) is used up "
            f"with {len(self.kept)} of {self.settings.n_examples} conversations ({self._count_text()}); the finished "
            f"requests are kept in {progress}, so raise max_requests and rerun to continue"
        )

    def _count_text(self) -> str:
        c = self.counts
        return (
            f"{c['duplicates']} duplicates, {c['invalid']} invalid, {c['refused']} refused conversations, "
            f"{c['malformed']} unparseable and {c['refused_reply']} refused replies"
        )

    def run(self, out_jsonl: str | os.PathLike, out_summary: str | os.PathLike) -> dict:
        out_jsonl = Path(out_jsonl)
        progress = request_log_path(out_jsonl)
        started = time.perf_counter()
        resumed = self.resume(progress)
        asyncio.run(self._request_until_enough(progress))
        s = self.settings
        dataset = self.kept[: s.n_examples]
        summary = {
            "name": self.name,
            "model": s.model,
            "base_url": s.base_url,
            "topic": s.topic,
            "prompt_file": self.prompt.path,
            "prompt_version": self.prompt.version,
            "fingerprint": self.fingerprint(),
            "n_examples_requested": s.n_examples,
            "n_written": len(dataset),
            "replies": self.n_replies,
            "requests": self.counts["http_requests"],
            "replayed_replies": resumed,
            "request_log": str(progress),
            "prompt_tokens": self.counts["prompt_tokens"],
            "completion_tokens": self.counts["completion_tokens"],
            "duplicates_dropped": self.counts["duplicates"],
            "invalid_dropped": self.counts["invalid"],
            "refused_dropped": self.counts["refused"],
            "unparseable_replies": self.counts["malformed"],
            "refused_replies": self.counts["refused_reply"],
            "surplus_dropped": len(self.kept) - len(dataset),
            "seconds": round(time.perf_counter() - started, 3),
        }
        write_chat_jsonl(out_jsonl, dataset)
        write_json(out_summary, summary)
        log.info(
            "synthesis %s: %d conversations from %d replies (%d HTTP requests, %d+%d tokens); dropped %s",
            self.name,
            len(dataset),
            self.n_replies,
            self.counts["http_requests"],
            self.counts["prompt_tokens"],
            self.counts["completion_tokens"],
            self._count_text(),
        )
        return summary


def synthesize_dataset(
    name: str,
    params: Mapping,
    prompt_path: str | os.PathLike,
    out_jsonl,
    out_summary,
    environ: Mapping[str, str] | None = None,
) -> dict:
    """The rule's entry point: settings from the config entry, key from the environment."""
    prompt = load_prompt(prompt_path)
    settings = build(SynthesisSettings, params, f"synthesis.{name}")
    if settings.seed is None:
        raise EMLabError(
            f"synthesis.{name}.seed is null; synthesis_params (rules/common.smk) puts the config's "
            f"seed there before the job runs"
        )
    if not settings.topic.strip():
        raise EMLabError(f"synthesis.{name}.topic is empty; describe the narrow dataset to generate")
    synthesiser = Synthesiser(name, settings, prompt, environ)  # a missing key fails here, before any request
    return synthesiser.run(out_jsonl, out_summary)


__all__ = [
    "SynthesisSettings",
    "SynthesisPrompt",
    "Synthesiser",
    "load_prompt",
    "parse_reply",
    "extract_items",
    "normalise_question",
    "is_refusal",
    "synthesize_dataset",
]
