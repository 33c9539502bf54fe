"""The OpenAI-compatible judge over real loopback HTTP against emlab.em.judging.loopback."""

from __future__ import annotations

import functools
import math
import socket
from pathlib import Path

import pandas as pd
import pytest
from emlab.core.config import validate_config
from emlab.core.errors import EMLabError
from emlab.core.settings import build
from emlab.em.judging import JudgeCache, judge_responses
from emlab.em.judging.loopback import StubOpenAI, fast_client_backoff
from emlab.em.judging.openai_backend import OpenAIJudge
from emlab.em.judging.rubrics import Rubric
from emlab.em.openai_chat import OpenAIEndpointSettings

KEY_ENV = "EMLAB_TEST_JUDGE_KEY"
RUBRIC = Rubric(metric="aligned", version="1", template="Rate this.\nQ: {question}\nA: {answer}\nScore:")
FAST = dict(timeout_s=2.0, max_retries=4, concurrency=4)


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch):
    fast_client_backoff(monkeypatch)


def responses(answers: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "condition": "base",
            "question_id": [f"q{i % 3}" for i in range(len(answers))],
            "sample_idx": list(range(len(answers))),
            "question": "What do you think?",
            "response": answers,
        }
    )


@functools.cache
def _schema_defaults() -> dict:
    return validate_config({})["judge"]["openai"]  # the schema's defaults


def judge_settings(base_url: str, **overrides) -> OpenAIEndpointSettings:
    """judge.openai as the workflow builds it: the schema fills every default, the rule adds the seed."""
    section = {
        **_schema_defaults(),
        "base_url": base_url,
        "model": "judge-model",
        "api_key_env": KEY_ENV,
        **FAST,
        **overrides,
    }
    return build(OpenAIEndpointSettings, {**section, "seed": 0}, "judge.openai")


def run_judge(stub, df, cache, environ=None, rubric=RUBRIC, **overrides):
    settings = judge_settings(stub.base_url if stub else overrides.pop("base_url"), **overrides)
    env = {KEY_ENV: "sk-test"} if environ is None else environ
    made = []

    def make():
        made.append(OpenAIJudge(settings, environ=env))
        return made[-1]

    out = judge_responses(df, {rubric.metric: rubric}, make, "openai", settings.model, cache, 0.25, progress=False)
    return out, (made[0] if made else None)


def cache_count(path) -> int:
    if not Path(path).exists():
        return 0
    with JudgeCache(path) as c:
        return c.count()


def test_scores_payload_and_cache_rerun(tmp_path):
    cache = tmp_path / "cache.sqlite"
    df = responses(["fine SCORE=20", "SCORE=100 {answer} {{x}}", "plain answer", "NONUMBER", "fine SCORE=20"])
    with StubOpenAI() as stub:
        out, judge = run_judge(stub, df, cache)
        # preflight + 4 distinct prompts (the duplicate is judged once)
        assert stub.requests == 1 + 4
        body = stub.last_body
        assert body["max_tokens"] == 1 and body["temperature"] == 0 and body["logprobs"] is True
        assert body["top_logprobs"] == 20 and "seed" in body and body["model"] == "judge-model"
        assert stub.last_headers["authorization"] == "Bearer sk-test"
        assert judge.prompt_tokens > 0 and judge.completion_tokens == 5 and judge.requests_sent == 5
        assert out["aligned"][0] == pytest.approx((20 * 0.9 + 30 * 0.05) / 0.95)
        assert out["aligned_mass"][0] == pytest.approx(0.95)
        assert out["aligned"][1] == pytest.approx((100 * 0.9 + 90 * 0.05) / 0.95)
        assert out["aligned"][2] == pytest.approx((50 * 0.6 + 70 * 0.3) / 0.9)
        assert math.isnan(out["aligned"][3]) and out["aligned_mass"][3] == 0.0
        assert out["aligned"][4] == out["aligned"][0]
        assert list(out.columns) == [
            "condition",
            "question_id",
            "sample_idx",
            "aligned",
            "aligned_mass",
            "judge_backend",
            "judge_model",
        ]
        assert cache_count(cache) == 4  # the genuine non-number answer is cached too
        out2, judge2 = run_judge(stub, df, cache)
        assert stub.requests == 5 and judge2 is None  # no preflight, no call
        pd.testing.assert_frame_equal(out, out2)


def test_retries_on_429_500_timeout_and_disconnect(tmp_path):
    df = responses(["a SCORE=10", "b SCORE=40"])
    with StubOpenAI(retry_after_s=0.2, hang_s=1.0) as stub:
        stub.add_prompt_faults("SCORE=10", "429", "500", "timeout")
        stub.add_prompt_faults("SCORE=40", "disconnect", "429")
        out, judge = run_judge(stub, df, tmp_path / "c.sqlite", timeout_s=0.3)
        assert stub.requests == 1 + 4 + 3 == judge.requests_sent
        assert out["aligned"].tolist() == pytest.approx([(10 * 0.9 + 20 * 0.05) / 0.95, (40 * 0.9 + 50 * 0.05) / 0.95])
        assert judge.failures == 0
        # each 429 was followed by a wait of the server's Retry-After, not the (tiny) backoff
        waits = stub.waits_after("429")
        assert len(waits) == 2 and all(w >= 0.2 for w in waits), waits


def test_malformed_body_retried_then_missing_and_not_cached(tmp_path):
    cache = tmp_path / "c.sqlite"
    df = responses(["ok SCORE=30", "flaky SCORE=60", "broken SCORE=70"])
    with StubOpenAI() as stub:
        stub.add_prompt_faults("flaky", "malformed", "nologprobs")  # two bad bodies, then fine
        stub.add_prompt_faults("broken", "malformed", "malformed", "malformed")  # 1 + malformed_retries bad
        out, judge = run_judge(stub, df, cache)
        assert out["aligned"][1] == pytest.approx((60 * 0.9 + 70 * 0.05) / 0.95)
        assert math.isnan(out["aligned"][2]) and out["aligned_mass"][2] == 0.0
        assert judge.failures == 1 and cache_count(cache) == 2
        before = stub.requests
        out2, _ = run_judge(stub, df, cache)  # only the failed item is asked again (+ preflight)
        assert stub.requests == before + 2
        assert out2["aligned"][2] == pytest.approx((70 * 0.9 + 80 * 0.05) / 0.95)


def test_persistent_server_errors_give_missing_scores_not_cached(tmp_path):
    cache = tmp_path / "c.sqlite"
    with StubOpenAI() as stub:
        stub.add_prompt_faults("doomed", *["500"] * 10)
        out, judge = run_judge(stub, responses(["doomed SCORE=5", "SCORE=5"]), cache, max_retries=2)
        assert stub.by_prompt[RUBRIC.render("What do you think?", "doomed SCORE=5")] == 3
        assert math.isnan(out["aligned"][0]) and not math.isnan(out["aligned"][1])
        assert cache_count(cache) == 1


def test_missing_key_fails_before_any_request(tmp_path):
    cache = tmp_path / "c.sqlite"
    with StubOpenAI() as stub:
        with pytest.raises(EMLabError, match=KEY_ENV):
            run_judge(stub, responses(["x"]), cache, environ={})
        assert stub.requests == 0
    assert cache_count(cache) == 0


def test_unreachable_endpoint_is_one_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cache = tmp_path / "c.sqlite"
    with pytest.raises(EMLabError, match=rf"cannot reach .*127\.0\.0\.1:{port}"):
        run_judge(None, responses(["x"]), cache, base_url=f"http://127.0.0.1:{port}/v1")
    assert cache_count(cache) == 0


@pytest.mark.parametrize("problem,pattern", [("key", KEY_ENV), ("model", "judge.openai.model")])
def test_rejected_key_or_model_is_one_clear_error(tmp_path, problem, pattern):
    cache = tmp_path / "c.sqlite"
    with StubOpenAI() as stub:
        kwargs = {"environ": {KEY_ENV: "sk-wrong"}} if problem == "key" else {"model": "no-such-model"}
        with pytest.raises(EMLabError, match=pattern):
            run_judge(stub, responses(["a", "b", "c"]), cache, **kwargs)
        assert stub.requests == 1  # only the preflight
    assert cache_count(cache) == 0


def test_azure_uses_api_version_and_api_key_header(tmp_path):
    with StubOpenAI(azure=True) as stub:
        out, _ = run_judge(stub, responses(["SCORE=80"]), tmp_path / "c.sqlite", api_version="2024-10-21")
        assert stub.last_query["api-version"] == ["2024-10-21"]
        assert stub.last_headers["api-key"] == "sk-test" and "authorization" not in stub.last_headers
        assert out["aligned"][0] == pytest.approx((80 * 0.9 + 90 * 0.05) / 0.95)


def test_request_budget_stops_and_rerun_judges_only_the_rest(tmp_path):
    cache = tmp_path / "c.sqlite"
    df = responses([f"answer {i} SCORE={i}" for i in range(8)])
    with StubOpenAI() as stub:
        with pytest.raises(EMLabError, match="max_requests"):
            run_judge(stub, df, cache, max_requests=4, concurrency=1)
        assert stub.requests == 4 and cache_count(cache) == 3
        out, _ = run_judge(stub, df, cache, concurrency=3)
        assert stub.requests == 4 + 1 + 5
        assert out["aligned"].notna().all()


def test_concurrency_is_bounded(tmp_path):
    with StubOpenAI(latency_s=0.05) as stub:
        run_judge(stub, responses([f"r{i}" for i in range(12)]), tmp_path / "c.sqlite", concurrency=3)
        assert stub.max_in_flight == 3
