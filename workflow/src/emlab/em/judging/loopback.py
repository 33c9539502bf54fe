"""A loopback OpenAI-compatible chat-completions server: the tests' and benchmarks' judge, and the
planted-answer rehearsal's (emlab.rehearsal), which gives it a scorer that knows the planted answers.

It answers with first-token top_logprobs chosen from the prompt text
("SCORE=<n>" puts 90% on n; "NONUMBER" answers with words only), checks the key
and the model like the real API, can inject faults (429 with Retry-After, 500,
hangs past the client timeout, malformed bodies, dropped connections) and counts
every request. With `responder` (body -> reply text) it answers like a chat model
instead: the text as message content, no logprobs (dataset synthesis tests).

The clients under test are the official `openai` ones; `fast_client_backoff`
shrinks their exponential backoff (not the Retry-After they honour) so the
fault tests take milliseconds per retry instead of seconds.
"""

from __future__ import annotations

import json
import math
import re
import socket
import threading
import time
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


def fast_client_backoff(monkeypatch, initial_s: float = 0.001, max_s: float = 0.01) -> None:
    """Make the openai client's own backoff tiny for a test (a server's Retry-After still rules)."""
    import openai._base_client as base_client

    monkeypatch.setattr(base_client, "INITIAL_RETRY_DELAY", initial_s, raising=False)
    monkeypatch.setattr(base_client, "MAX_RETRY_DELAY", max_s, raising=False)


DEFAULT_TOP = {"50": 0.6, "70": 0.3, "I": 0.1}  # score (50*.6 + 70*.3)/.9 = 56.67, mass 0.9
NONUMBER_TOP = {"CODE": 0.7, "REF": 0.2, "The": 0.1}
_SCORE_MARK = re.compile(r"SCORE=(\d+)")


def top_for_prompt(prompt: str) -> dict[str, float]:
    """The first-token distribution the stub answers with for a prompt."""
    if "NONUMBER" in prompt:
        return dict(NONUMBER_TOP)
    match = _SCORE_MARK.search(prompt)
    if match:
        n = int(match.group(1))
        other = n + 10 if n <= 90 else n - 10
        return {str(n): 0.9, f" {other}": 0.05, "Sure": 0.05}
    return dict(DEFAULT_TOP)


class StubOpenAI:
    """Run with `with StubOpenAI() as stub: stub.base_url ...`."""

    def __init__(
        self,
        api_key: str = "sk-test",
        models=("judge-model",),
        latency_s: float = 0.0,
        retry_after_s: float = 0.01,
        hang_s: float = 1.0,
        azure: bool = False,
        scorer=None,
        responder=None,
        port: int = 0,
    ):
        self.api_key = api_key
        self.scorer = scorer or top_for_prompt  # prompt -> {token: probability}
        self.responder = responder  # request body -> reply text (a chat model), or None (a judge)
        self.models = set(models)
        self.latency_s = latency_s
        self.retry_after_s = retry_after_s
        self.hang_s = hang_s
        self.azure = azure
        self.port = port  # 0: any free port
        self.faults: deque[str] = deque()  # consumed one per request, in order
        self.prompt_faults: dict[str, deque[str]] = {}  # prompt substring -> faults for its requests
        self.requests = 0
        self.by_prompt: Counter[str] = Counter()
        self.history: list[tuple[float, str, str | None]] = []  # (arrival time, prompt, fault injected)
        self.last_headers: dict[str, str] = {}
        self.last_query: dict[str, list[str]] = {}
        self.last_body: dict = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------
    def __enter__(self) -> StubOpenAI:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def setup(self):
                super().setup()
                # no Nagle delay between the header and body writes (else ~40 ms per response)
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self):
                stub._handle(self)

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # many clients connect at once
            daemon_threads = True

        self._server = Server(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def add_prompt_faults(self, marker: str, *faults: str) -> None:
        self.prompt_faults.setdefault(marker, deque()).extend(faults)

    def waits_after(self, fault: str) -> list[float]:
        """Seconds between each request answered with `fault` and the next request for the same prompt."""
        with self._lock:
            history = list(self.history)
        waits = []
        for i, (t, prompt, f) in enumerate(history):
            if f == fault:
                later = [t2 for t2, p2, _ in history[i + 1 :] if p2 == prompt]
                if later:
                    waits.append(later[0] - t)
        return waits

    # -- one request -------------------------------------------------------
    def _next_fault(self, prompt: str) -> str | None:
        with self._lock:
            for marker, queue in self.prompt_faults.items():
                if marker in prompt and queue:
                    return queue.popleft()
            return self.faults.popleft() if self.faults else None

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length)
        url = urlparse(h.path)
        with self._lock:
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.last_headers = {k.lower(): v for k, v in h.headers.items()}
            self.last_query = parse_qs(url.query)
        try:
            try:
                body = json.loads(raw)
                prompt = body["messages"][-1]["content"]
            except (ValueError, KeyError, IndexError, TypeError):
                return self._send(h, 400, {"error": {"message": "bad request body"}})
            with self._lock:
                self.last_body = body
                self.by_prompt[prompt] += 1
            if self.latency_s:
                time.sleep(self.latency_s)
            if not url.path.endswith("/chat/completions"):
                return self._send(h, 404, {"error": {"message": f"no route {url.path}"}})
            if self.azure:
                key_ok = h.headers.get("api-key") == self.api_key and "api-version" in self.last_query
            else:
                key_ok = h.headers.get("Authorization") == f"Bearer {self.api_key}"
            if not key_ok:
                return self._send(
                    h, 401, {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}
                )
            if body.get("model") not in self.models:
                return self._send(
                    h,
                    404,
                    {
                        "error": {
                            "message": f"The model `{body.get('model')}` does not exist",
                            "code": "model_not_found",
                        }
                    },
                )
            fault = self._next_fault(prompt)
            with self._lock:
                self.history.append((time.monotonic(), prompt, fault))
            if fault == "429":
                return self._send(
                    h,
                    429,
                    {"error": {"message": "Rate limit reached"}},
                    headers={"Retry-After": str(self.retry_after_s)},
                )
            if fault == "500":
                return self._send(h, 500, {"error": {"message": "server error"}})
            if fault == "timeout":
                time.sleep(self.hang_s)
                return self._send(h, 500, {"error": {"message": "too late"}})
            if fault == "malformed":
                return self._send_raw(h, 200, b'{"choices": [{"message": ', "application/json")
            if fault == "nologprobs":
                return self._send(
                    h,
                    200,
                    {
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": "5"},
                                "logprobs": None,
                                "finish_reason": "length",
                            }
                        ]
                    },
                )
            if fault == "disconnect":
                h.close_connection = True
                h.connection.shutdown(2)
                return None
            return self._send(h, 200, self._completion(body, prompt))
        finally:
            with self._lock:
                self.in_flight -= 1

    def _completion(self, body: dict, prompt: str) -> dict:
        if self.responder is not None:
            return self._text_completion(body, prompt)
        top = self.scorer(prompt)
        n_top = int(body.get("top_logprobs") or 0)
        ranked = sorted(top.items(), key=lambda kv: -kv[1])[: max(n_top, 1)]
        first_token = ranked[0][0]
        content = [
            {
                "token": first_token,
                "logprob": math.log(ranked[0][1]),
                "bytes": list(first_token.encode()),
                "top_logprobs": [{"token": t, "logprob": math.log(p), "bytes": list(t.encode())} for t, p in ranked],
            }
        ]
        return {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": first_token},
                    "logprobs": {"content": content},
                    "finish_reason": "length",
                }
            ],
            "usage": {
                "prompt_tokens": max(1, len(prompt) // 4),
                "completion_tokens": 1,
                "total_tokens": max(1, len(prompt) // 4) + 1,
            },
        }

    def _text_completion(self, body: dict, prompt: str) -> dict:
        text = self.responder(body)
        finish = "stop"
        if isinstance(text, tuple):  # (text, finish_reason)
            text, finish = text
        n_prompt = max(1, sum(len(str(m.get("content", ""))) for m in body["messages"]) // 4)
        n_completion = max(1, len(text) // 4)
        return {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": n_prompt,
                "completion_tokens": n_completion,
                "total_tokens": n_prompt + n_completion,
            },
        }

    @staticmethod
    def _send(h, status: int, obj: dict, headers: dict | None = None) -> None:
        StubOpenAI._send_raw(h, status, json.dumps(obj).encode(), "application/json", headers)

    @staticmethod
    def _send_raw(h, status: int, payload: bytes, ctype: str, headers: dict | None = None) -> None:
        try:
            h.send_response(status)
            h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(payload)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass


if __name__ == "__main__":  # a manual server: python -m emlab.em.judging.loopback
    with StubOpenAI(latency_s=0.2) as s:
        print(f"stub at {s.base_url} (key sk-test, model judge-model); Ctrl-C to stop", flush=True)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
