"""A judging job killed with SIGKILL re-pays, on its rerun, only the requests that were in flight.

Each result must reach the SQLite cache as it arrives (issue 11.2): the job runs
as a subprocess against the loopback stub with concurrency 4 and is killed at
seeded random points, three times in a row, then run to completion. At each
kill, the prompts sent but not cached are at most the concurrency (the requests
in flight); every other answer is read back from the cache, so the endpoint's
request count exceeds the distinct prompts by at most that, plus one preflight
per run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from emlab.core.config import validate_config
from emlab.em.judging import JudgeCache
from emlab.em.judging.loopback import StubOpenAI
from emlab.em.judging.openai_backend import PREFLIGHT_PROMPT

REPO = Path(__file__).resolve().parents[2]
KEY_ENV = "EMLAB_TEST_CRASH_KEY"
CONCURRENCY = 4
N_PROMPTS = 48

# The judging job: the library's entry point with the openai backend, as workflow/scripts/judge.py calls it.
JOB = """
import json, sys
import pandas as pd
from emlab.em.judging import judge_responses, load_rubrics
from emlab.em.judging.backends import backend_factory, judge_model_id

params = json.loads(sys.argv[1])
responses = pd.read_parquet(sys.argv[2])
rubrics = load_rubrics(sys.argv[3:], params["metrics"])
out = judge_responses(responses, rubrics, backend_factory(params, device="cpu"), backend_name=params["backend"],
                      judge_model=judge_model_id(params, device="cpu"), cache_path=params["cache"],
                      min_number_mass=params["min_number_mass"], progress=False)
assert out["aligned"].notna().all()
"""


def judge_params(base_url: str, cache: Path) -> dict:
    """What rules/common.smk's judge_params passes: the schema's defaults, the openai backend, the seed."""
    judge = validate_config({})["judge"]
    openai = {
        **judge["openai"],
        "base_url": base_url,
        "model": "judge-model",
        "api_key_env": KEY_ENV,
        "concurrency": CONCURRENCY,
        "timeout_s": 10,
        "max_retries": 2,
        "seed": 0,
    }
    return {
        "backend": "openai",
        "metrics": ["aligned"],
        "min_number_mass": judge["min_number_mass"],
        "cache": str(cache),
        "openai": openai,
    }


def start_job(params: dict, responses: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow" / "src"), KEY_ENV: "sk-test"}
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            JOB,
            json.dumps(params),
            str(responses),
            str(REPO / "data" / "rubrics" / "aligned.yaml"),
        ],
        env=env,
        cwd=REPO,
    )


def requested_not_cached(stub: StubOpenAI, cache: Path) -> int:
    """Prompts the endpoint was sent (answered, or in flight at the kill) that are not in the cache."""
    time.sleep(0.1)  # let the stub finish reading what the killed job had already written
    requested = len(stub.by_prompt) - (1 if stub.by_prompt[PREFLIGHT_PROMPT] else 0)
    if not cache.exists():
        return requested
    with JudgeCache(cache) as c:
        return requested - c.count()


def test_killed_judging_job_repays_at_most_the_requests_in_flight(tmp_path):
    kill_after = random.Random(11).choices(range(2, 13), k=3)  # requests into each of three runs, seeded
    answers = [f"answer {i} SCORE={i}" for i in range(N_PROMPTS)]
    responses = tmp_path / "responses.parquet"
    pd.DataFrame(
        {
            "condition": "base",
            "question_id": [f"q{i % 4}" for i in range(N_PROMPTS)],
            "sample_idx": range(N_PROMPTS),
            "question": "What do you think?",
            "response": answers,
        }
    ).to_parquet(responses)
    cache = tmp_path / "cache.sqlite"
    lost = []
    with StubOpenAI(latency_s=0.02) as stub:
        params = judge_params(stub.base_url, cache)
        for n in kill_after:
            job = start_job(params, responses)
            target = stub.requests + n
            try:
                deadline = time.monotonic() + 45
                while stub.requests < target and job.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.002)
                assert job.poll() is None, f"the job ended (rc {job.returncode}) before it was killed"
            finally:
                job.send_signal(signal.SIGKILL)
                job.wait()
            lost.append(requested_not_cached(stub, cache))
        assert start_job(params, responses).wait(timeout=60) == 0  # the last run finishes
        preflights = stub.by_prompt[PREFLIGHT_PROMPT]
        distinct = len(stub.by_prompt) - 1
        # requests that reached the endpoint whole (a prompt the stub could read): a kill can also cut a request
        # off mid-body, which the stub counts in `requests` and answers 400 unread; nobody pays for that one
        total = sum(stub.by_prompt.values())
    runs = len(kill_after) + 1
    assert distinct == N_PROMPTS and preflights <= runs
    with JudgeCache(cache) as c:
        assert c.count() == N_PROMPTS
    # each kill loses at most the requests in flight, and nothing else is asked twice
    assert all(n <= CONCURRENCY for n in lost), f"kills after {kill_after} requests lost {lost} paid answers"
    assert total - distinct - preflights == sum(lost)
    assert total - distinct <= CONCURRENCY * len(kill_after) + runs
