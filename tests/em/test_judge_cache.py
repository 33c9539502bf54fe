"""The judge cache under parallel processes, and the judge script end to end."""

from __future__ import annotations

import math
import multiprocessing as mp
from pathlib import Path

import pandas as pd
import pytest
from emlab.em.judging.cache import CachedJudgment, CacheKey, JudgeCache, prompt_sha256
from emlab.em.judging.loopback import StubOpenAI

REPO = Path(__file__).resolve().parents[2]


def _writer(path: str, worker: int, n: int) -> None:
    with JudgeCache(path) as cache:
        for batch in range(n):
            items = [
                (
                    CacheKey("openai", "m", "aligned", "1", prompt_sha256(f"{worker}-{batch}-{i}")),
                    CachedJudgment(float(i), 0.5, "[]"),
                )
                for i in range(5)
            ]
            cache.put_many(items)
            cache.get_many([items[0][0]])


def test_parallel_processes_write_without_losing_rows(tmp_path):
    path = str(tmp_path / "cache.sqlite")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 20)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    with JudgeCache(path) as cache:
        assert cache.count() == 3 * 20 * 5
        assert cache._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_keys_separate_versions_and_models_and_nan_round_trips(tmp_path):
    with JudgeCache(tmp_path / "c.sqlite") as cache:
        k1 = CacheKey("hf", "model-a", "aligned", "1", prompt_sha256("p"))
        k2 = k1._replace(rubric_version="2")
        k3 = k1._replace(judge_model="model-b")
        cache.put_many([(k1, CachedJudgment(math.nan, 0.0, "[]")), (k2, CachedJudgment(42.0, 0.9, "[1]"))])
        got = cache.get_many([k1, k2, k3])
        assert math.isnan(got[k1].score) and got[k1].mass == 0.0
        assert got[k2] == CachedJudgment(42.0, 0.9, "[1]") and k3 not in got


def test_judge_script_writes_the_documented_columns(tmp_path, monkeypatch, rule_script):
    responses = pd.DataFrame(
        {
            "condition": "base",
            "model": "base",
            "intervention": "{}",
            "question_id": ["q1", "q2", "q3"],
            "sample_idx": [0, 1, 2],
            "question": ["Q?"] * 3,
            "system": None,
            "prompt": "p",
            "response": ["SCORE=90", "NONUMBER", "{answer} SCORE=10"],
            "n_response_tokens": 3,
            "finish_reason": "stop",
            "temperature": 1.0,
            "top_p": 1.0,
            "max_new_tokens": 8,
            "seed": 0,
        }
    )
    responses.to_parquet(tmp_path / "base.parquet")
    out = tmp_path / "judgments" / "base.parquet"
    monkeypatch.setenv("EMLAB_TEST_JUDGE_KEY", "sk-test")
    with StubOpenAI() as stub:
        params = {
            "backend": "openai",
            "metrics": ["aligned", "coherent"],
            "min_number_mass": 0.25,
            "cache": str(tmp_path / "cache.sqlite"),
            "openai": {
                "base_url": stub.base_url,
                "model": "judge-model",
                "api_key_env": "EMLAB_TEST_JUDGE_KEY",
                "api_version": None,
                "concurrency": 4,
                "timeout_s": 5,
                "max_retries": 1,
                "max_requests": None,
                "seed": 0,
            },
        }
        rule_script(
            "judge",
            tmp_path,
            input=dict(
                responses=str(tmp_path / "base.parquet"),
                rubrics=[str(REPO / "data/rubrics/aligned.yaml"), str(REPO / "data/rubrics/coherent.yaml")],
                judge_model=[],
            ),
            output=[str(out)],
            params=dict(judge=params, device="cpu"),
        )
        assert stub.requests == 1 + 6
    df = pd.read_parquet(out)
    assert list(df.columns) == [
        "condition",
        "question_id",
        "sample_idx",
        "aligned",
        "aligned_mass",
        "coherent",
        "coherent_mass",
        "judge_backend",
        "judge_model",
    ]
    assert df["aligned"].tolist()[0] == pytest.approx((90 * 0.9 + 100 * 0.05) / 0.95)
    assert math.isnan(df["aligned"][1]) and df["aligned"][2] == pytest.approx((10 * 0.9 + 20 * 0.05) / 0.95)
    assert (df["judge_backend"] == "openai").all() and (df["judge_model"] == "judge-model").all()
    assert df.dtypes["aligned"] == "float64" and df.dtypes["sample_idx"] == "int64"
    assert "sk-test" not in (tmp_path / "judge.log").read_text()
