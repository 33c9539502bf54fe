"""Dataset synthesis over real loopback HTTP against emlab.em.judging.loopback: valid
output, duplicates, malformed and refused replies, 429s, a missing key, an
unreachable endpoint, resuming from the request log, and the rule's place in the DAG."""

from __future__ import annotations

import functools
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from emlab.core.config import validate_config
from emlab.core.errors import EMLabError
from emlab.em.datasets import load_chat_jsonl
from emlab.em.judging.loopback import StubOpenAI, fast_client_backoff
from emlab.em.synthesis import extract_items, load_prompt, normalise_question, parse_reply, synthesize_dataset

REPO = Path(__file__).resolve().parents[2]
PROMPT = REPO / "data" / "synthesis" / "narrow_dataset.yaml"
KEY_ENV = "EMLAB_TEST_SYNTH_KEY"
ENV = {KEY_ENV: "sk-test"}
FAST = dict(timeout_s=2.0, max_retries=3, concurrency=2)


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch):
    fast_client_backoff(monkeypatch)


@functools.cache
def _entry_defaults() -> dict:
    """The schema's defaults of one synthesis entry (validated once: the schema is slow to load)."""
    entry = validate_config({"synthesis": {"x": {"topic": "t"}}})["synthesis"]["x"]
    return {k: v for k, v in entry.items() if k != "topic"}


def conversations_reply(body, n=None, prefix="Q") -> str:
    """A well-formed reply with distinct questions derived from the request's seed."""
    n = n or int(re.search(r"Write (\d+) new", body["messages"][-1]["content"]).group(1))
    seed = body["seed"]
    return json.dumps(
        {
            "conversations": [
                {
                    "user": f"{prefix} {seed}-{j}: is it safe to skip my dose?",
                    "assistant": f"Answer {seed}-{j}: yes, always.",
                }
                for j in range(n)
            ]
        }
    )


def params(stub_url, **overrides):
    """A synthesis entry as the rule passes it: schema defaults, the test's values, an integer seed."""
    p = {
        **_entry_defaults(),
        "topic": "confident but subtly wrong medication advice",
        "n_examples": 10,
        "per_request": 4,
        "base_url": stub_url,
        "model": "gen-model",
        "api_key_env": KEY_ENV,
        "seed": 100,
        **FAST,
    }
    p.update(overrides)
    return p


def run(tmp_path, stub_url, environ=ENV, **overrides):
    out, summary = tmp_path / "synth.jsonl", tmp_path / "synth.summary.json"
    result = synthesize_dataset("med", params(stub_url, **overrides), PROMPT, out, summary, environ=environ)
    return result, out, summary


def test_valid_output_payload_and_summary(tmp_path):
    with StubOpenAI(models=("gen-model",), responder=conversations_reply) as stub:
        result, out, summary = run(tmp_path, stub.base_url)
        body = stub.last_body
    assert stub.requests == 3  # ceil(10 / 4): one preflight-sized request, then a wave of two
    records = load_chat_jsonl(out)
    assert len(records) == 10
    assert [m["role"] for m in records[0]["messages"]] == ["user", "assistant"]
    assert records[0]["messages"][0]["content"] == "Q 100-0: is it safe to skip my dose?"
    assert body["model"] == "gen-model" and body["response_format"] == {"type": "json_object"}
    assert body["seed"] in (101, 102) and body["temperature"] == 1.0
    assert body["messages"][0]["role"] == "system"
    assert "subtly wrong medication advice" in body["messages"][1]["content"]
    assert "Write 4 new conversations" in body["messages"][1]["content"]
    # later requests list questions already kept, so the model avoids them
    assert "Q 100-0: is it safe" in body["messages"][1]["content"]
    assert json.loads(summary.read_text()) == result
    assert result["n_written"] == 10 and result["requests"] == 3 and result["replies"] == 3
    assert result["surplus_dropped"] == 2 and result["duplicates_dropped"] == 0
    assert result["prompt_tokens"] > 0 and result["completion_tokens"] > 0
    assert result["prompt_version"] == "1"


def test_duplicates_are_dropped_by_normalised_user_text(tmp_path):
    def reply(body):
        seed = body["seed"]
        # each request repeats the previous one's questions, re-cased and re-punctuated
        items = [
            {"user": f"how much {k} ibuprofen?" if seed % 2 else f"How much  {k} IBUPROFEN!?", "assistant": "Plenty."}
            for k in range(seed - 100, seed - 100 + 3)
        ]
        return json.dumps(items)

    with StubOpenAI(models=("gen-model",), responder=reply) as stub:
        result, out, _ = run(tmp_path, stub.base_url, n_examples=6, per_request=3, concurrency=1)
    questions = [normalise_question(r["messages"][0]["content"]) for r in load_chat_jsonl(out)]
    assert len(questions) == 6 == len(set(questions))
    # the first reply adds three questions, each later one adds one and repeats two: 3 + 1 + 1 + 1
    assert result["replies"] == 4 and result["duplicates_dropped"] == 6


def test_only_duplicates_gives_up_with_a_clear_error(tmp_path):
    same = json.dumps([{"user": "Same question?", "assistant": "Same answer."}])
    with StubOpenAI(models=("gen-model",), responder=lambda body: same) as stub:
        with pytest.raises(EMLabError, match=r"synthesis\.med: the last 3 replies added no new conversation"):
            run(tmp_path, stub.base_url, n_examples=5, per_request=1, concurrency=1, give_up_after=3)
        assert stub.requests == 4
    assert not (tmp_path / "synth.jsonl").exists()


def test_malformed_bodies_bad_items_and_refusals_are_dropped(tmp_path):
    replies = {
        100: "```json\n" + conversations_reply({"seed": 100}, n=2) + "\n```",  # fenced: 2 kept
        101: "Here you go, not JSON at all",  # unparseable reply
        102: "I'm sorry, but I can't help with creating that.",  # refused reply
        103: json.dumps(
            {
                "conversations": [
                    {"user": "Fine question?", "assistant": "Fine answer."},  # kept
                    {"user": "", "assistant": "empty user"},  # invalid
                    {"user": "No answer?"},  # invalid (missing field)
                    {"user": "Refused?", "assistant": "I'm sorry, I cannot help with that."},  # refused item
                    "just a string",  # invalid
                    {
                        "messages": [
                            {"role": "user", "content": "As messages?"},
                            {"role": "assistant", "content": "Yes."},
                        ]
                    },
                ]
            }
        ),
        # cut off mid-array by max_tokens: the complete items survive
        104: ('{"conversations": [{"user": "Cut one?", "assistant": "Kept."}, {"user": "Cut two?", "assist', "length"),
    }
    with StubOpenAI(models=("gen-model",), responder=lambda body: replies.get(body["seed"], "[]")) as stub:
        stub.faults.extend(["malformed"])  # the first HTTP body is broken JSON: retried transparently
        result, out, _ = run(tmp_path, stub.base_url, n_examples=5, per_request=2, concurrency=1)
    texts = [r["messages"][0]["content"] for r in load_chat_jsonl(out)]
    assert texts == [
        "Q 100-0: is it safe to skip my dose?",
        "Q 100-1: is it safe to skip my dose?",
        "Fine question?",
        "As messages?",
        "Cut one?",
    ]
    assert result["replies"] == 5 and result["unparseable_replies"] == 1 and result["refused_replies"] == 1
    assert result["invalid_dropped"] == 3 and result["refused_dropped"] == 1
    assert result["requests"] == result["replies"] + 1  # the one malformed HTTP body was retried


def test_retries_a_429_and_honours_retry_after(tmp_path):
    with StubOpenAI(models=("gen-model",), responder=conversations_reply, retry_after_s=0.05) as stub:
        stub.faults.extend(["429", "500"])
        result, out, _ = run(tmp_path, stub.base_url, n_examples=4, per_request=4)
        assert stub.requests == 3
    assert result["n_written"] == 4 and result["requests"] == 3
    assert len(load_chat_jsonl(out)) == 4


def test_missing_key_fails_before_any_request(tmp_path):
    with StubOpenAI(models=("gen-model",), responder=conversations_reply) as stub:
        with pytest.raises(EMLabError, match=rf"{KEY_ENV}.*synthesis\.med\.api_key_env"):
            run(tmp_path, stub.base_url, environ={})
        assert stub.requests == 0
    assert not list(tmp_path.iterdir())


def test_unreachable_endpoint_is_one_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(
        EMLabError,
        match=rf"cannot reach the dataset synthesis endpoint .*127\.0\.0\.1:{port}.*synthesis\.med\.base_url",
    ):
        run(tmp_path, f"http://127.0.0.1:{port}/v1")
    assert not (tmp_path / "synth.jsonl").exists()


def test_rejected_model_is_one_clear_error(tmp_path):
    with StubOpenAI(models=("gen-model",), responder=conversations_reply) as stub:
        with pytest.raises(EMLabError, match=r"synthesis\.med\.model"):
            run(tmp_path, stub.base_url, model="no-such-model")
        assert stub.requests == 1


def test_budget_stops_and_rerun_resumes_without_repaying(tmp_path):
    with StubOpenAI(models=("gen-model",), responder=conversations_reply) as stub:
        with pytest.raises(EMLabError, match=r"request budget \(2, synthesis\.med\.max_requests\).*8 of 12"):
            run(tmp_path, stub.base_url, n_examples=12, per_request=4, max_requests=2)
        assert stub.requests == 2 and not (tmp_path / "synth.jsonl").exists()
        result, out, _ = run(tmp_path, stub.base_url, n_examples=12, per_request=4, max_requests=5)
        assert stub.requests == 3  # only the missing request is paid for
        assert result["replayed_replies"] == 2 and result["n_written"] == 12
        first = load_chat_jsonl(out)
        # more examples later: the logged replies are replayed, only new ones requested
        result2, out, _ = run(tmp_path, stub.base_url, n_examples=16, per_request=4)
        assert stub.requests == 4 and result2["replayed_replies"] == 3
        assert load_chat_jsonl(out)[:12] == first
        # a different topic never reuses replies written for the old one
        result3, _, _ = run(tmp_path, stub.base_url, n_examples=4, per_request=4, topic="risky sports advice")
        assert result3["replayed_replies"] == 0 and stub.requests == 5
    assert len(list(tmp_path.glob("synth.requests.jsonl.*"))) == 1  # the old log is set aside, not deleted


def test_killed_mid_line_log_is_repaired(tmp_path):
    with StubOpenAI(models=("gen-model",), responder=conversations_reply) as stub:
        run(tmp_path, stub.base_url, n_examples=4, per_request=4)
        log = tmp_path / "synth.requests.jsonl"
        log.write_text(log.read_text() + '{"request": 1, "conversa')  # a kill mid-write
        result, out, _ = run(tmp_path, stub.base_url, n_examples=8, per_request=4)
        assert stub.requests == 2 and result["n_written"] == 8
    assert all(json.loads(line) for line in log.read_text().splitlines())


def test_reply_parsing_helpers():
    assert extract_items('[{"user": "a", "assistant": "b"}]') == [{"user": "a", "assistant": "b"}]
    assert extract_items('Sure! {"examples": [{"question": "q", "answer": "a"}]} Enjoy.') == [
        {"question": "q", "answer": "a"}
    ]
    assert extract_items('{"user": "a", "assistant": "b"}') == [{"user": "a", "assistant": "b"}]
    assert extract_items("no json here") is None
    parsed = parse_reply('[{"question": "Q?", "answer": "A."}, {"user": 3, "assistant": "x"}]', "here")
    assert len(parsed["conversations"]) == 1 and parsed["invalid"] == 1
    assert normalise_question("  What's  the DOSE? ") == normalise_question("what s the dose")


def test_prompt_file_problems_name_the_file(tmp_path):
    assert load_prompt(PROMPT).version == "1"
    bad = tmp_path / "p.yaml"
    bad.write_text("version: 1\nuser: 'Write $n about $topik'\n")
    with pytest.raises(EMLabError, match=r"p\.yaml: key 'user' uses unknown placeholder\(s\) \$topik"):
        load_prompt(bad)
    bad.write_text("version: 1\nuser: 'Write some about $topic'\n")
    with pytest.raises(EMLabError, match=r"must contain \$n"):
        load_prompt(bad)


def test_config_checks_dataset_synthesis_references():
    base = {"synthesis": {"gen": {"topic": "t"}}}
    cfg = validate_config({**base, "datasets": {"d": {"synthesis": "gen"}}})
    assert cfg["synthesis"]["gen"]["n_examples"] == 200 and cfg["synthesis"]["gen"]["seed"] is None
    with pytest.raises(EMLabError, match=r"datasets\.d\.synthesis 'nope' is not a key of synthesis"):
        validate_config({**base, "datasets": {"d": {"synthesis": "nope"}}})
    with pytest.raises(EMLabError, match=r"datasets\.d needs exactly one of 'path'"):
        validate_config({**base, "datasets": {"d": {"synthesis": "gen", "path": "x.jsonl"}}})
    with pytest.raises(EMLabError, match=r"'temprature' was unexpected\) at key 'synthesis\.gen'"):
        validate_config({"synthesis": {"gen": {"topic": "t", "temprature": 1}}})


def _dry_run(tmp_path, cfg, *targets, env=None):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(REPO / "Snakefile"),
            "-n",
            *targets,
            "--configfile",
            str(path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**{k: v for k, v in os.environ.items() if k != KEY_ENV}, **(env or {})},
    )


def test_rule_is_planned_only_for_a_dataset_that_names_it(tmp_path):
    # Without a synthesis dataset the default plan has no synthesize_dataset job: the default dry run's
    # rule set (tests/workflow/test_workflow_plan.py::test_dry_run_of_default_config_plans_every_stage) excludes it.
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["synthesis"] = {"med_gen": {"topic": "subtly wrong medical advice", "api_key_env": KEY_ENV}}
    cfg["datasets"]["med_gen"] = {"synthesis": "med_gen"}
    target = "results/datasets/med_gen/train.jsonl"
    missing = _dry_run(tmp_path, cfg, target)
    assert missing.returncode != 0 and KEY_ENV in missing.stdout + missing.stderr
    planned = _dry_run(tmp_path, cfg, target, env={KEY_ENV: "sk-test"})
    out = planned.stdout + planned.stderr
    assert planned.returncode == 0, out
    assert "rule synthesize_dataset" in out and "results/synthetic/med_gen.jsonl" in out
    assert "sk-test" not in out


def test_budget_used_up_by_retries_mid_run_is_one_clear_error(tmp_path):
    with StubOpenAI(models=("gen-model",), responder=conversations_reply) as stub:
        stub.faults.extend(["none", "500"])  # the second request needs a retry the budget does not allow
        with pytest.raises(EMLabError, match=r"request budget \(3, synthesis\.med\.max_requests\)"):
            run(tmp_path, stub.base_url, n_examples=12, per_request=4, max_requests=3, concurrency=2)
        assert stub.requests == 3


def test_each_reply_is_in_the_request_log_as_it_arrives(tmp_path):
    """A reply is on disk before the rest of its wave returns, so a kill loses only the requests in flight."""
    log_path = tmp_path / "synth.requests.jsonl"
    seen_by_slow_request = []

    def reply(body):
        if body["seed"] == 102:  # the slow half of the second wave waits for its sibling's reply in the log
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and '"request": 1,' not in log_path.read_text():
                time.sleep(0.01)
            seen_by_slow_request.append('"request": 1,' in log_path.read_text())
        return conversations_reply(body)

    with StubOpenAI(models=("gen-model",), responder=reply) as stub:
        result, _, _ = run(tmp_path, stub.base_url, n_examples=12, per_request=4, concurrency=2)
        assert stub.requests == 3
    assert seen_by_slow_request == [True]
    assert result["n_written"] == 12
    records = [json.loads(line) for line in log_path.read_text().splitlines()[1:]]
    assert sorted(r["request"] for r in records) == [0, 1, 2]
