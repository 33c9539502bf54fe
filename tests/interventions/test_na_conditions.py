"""A direction that cannot be formed (0 misaligned answers) does not stop the study: a condition that
needs it records n/a and why, through generation, judging and the metrics, without loading a model or
calling a judge; an empty response set without such a reason is still an error."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from emlab.core.provenance import read_metadata
from emlab.core.settings import build
from emlab.em import generation
from emlab.em.directions import write_directions
from emlab.plan.conditions import Steer


def _na_direction(tmp_path):
    summary = {
        "finetune": "ctrl",
        "split": "finance",
        "status": "n/a",
        "reason": "0 misaligned",
        "thresholds": {},
        "seed": 0,
        "counts": {"aligned": {"available": 9, "used": 0}, "misaligned": {"available": 0, "used": 0}},
        "n_layers": 4,
        "d_model": 64,
    }
    write_directions(tmp_path / "v.safetensors", tmp_path / "v.json", {}, summary)
    return tmp_path / "v.safetensors"


def test_a_condition_whose_direction_is_na_is_recorded_as_na(tiny_model_dir, tmp_path, rule_script, monkeypatch):
    vectors = _na_direction(tmp_path)
    questions = tmp_path / "q.yaml"
    questions.write_text(yaml.safe_dump({"version": 1, "questions": [{"id": "q0", "question": "Hello?"}]}))
    settings = build(
        generation.GenerationSettings,
        dict(
            samples_per_question=2, max_new_tokens=3, temperature=1.0, top_p=1.0, batch_size=2, backend="hf", threads=1
        ),
        "generation",
    )
    cond = Steer("ctrl", 2, 4.0, "finance")
    from emlab.interventions import generate as condition_generation

    def no_model(*a, **k):
        raise AssertionError("an n/a condition loads no model")

    monkeypatch.setattr(condition_generation, "load_model", no_model)
    table, meta = condition_generation.generate_condition(
        cond.condition_id,
        cond.to_params(),
        questions,
        tiny_model_dir,
        None,
        vectors,
        settings,
        seed=0,
        device="cpu",
        dtype="float32",
        scratch_dir=tmp_path / "scratch",
    )
    assert table.empty and list(table.columns) == condition_generation.GENERATION_COLUMNS
    from emlab.core.atomic import write_parquet

    write_parquet(tmp_path / "gen.parquet", table, metadata=meta)
    reason = read_metadata(tmp_path / "gen.parquet")["na_reason"]
    assert reason == "n/a (direction of ctrl (finance): 0 misaligned)"

    from pathlib import Path

    from emlab.core.config import validate_config

    repo = Path(__file__).resolve().parents[2]
    cfg = yaml.safe_load((repo / "config.yaml").read_text())
    cfg["judge"] = {"backend": "openai", "openai": {"base_url": "http://127.0.0.1:9/v1", "api_key_env": "NO_KEY_ENV"}}
    j = validate_config(cfg, source="test")["judge"]
    judge = {k: j[k] for k in ("backend", "metrics", "min_number_mass")}
    judge.update(cache=str(tmp_path / "cache.sqlite"), openai=dict(j["openai"], seed=0))
    rubrics = [str(repo / "data" / "rubrics" / f"{m}.yaml") for m in judge["metrics"]]
    # an n/a condition is judged without a judge: no key, no endpoint (port 9 would refuse)
    rule_script(
        "judge",
        tmp_path,
        input=dict(responses=str(tmp_path / "gen.parquet"), rubrics=rubrics),
        output=[str(tmp_path / "judged.parquet")],
        params=dict(judge=judge, device="cpu"),
    )
    judged = pd.read_parquet(tmp_path / "judged.parquet")
    assert judged.empty and {"aligned", "coherent"} <= set(judged.columns)
    assert read_metadata(tmp_path / "judged.parquet")["na_reason"] == reason

    # an empty response set without a reason is bad input: one clear error
    write_parquet(tmp_path / "empty.parquet", table)
    with pytest.raises(SystemExit):
        rule_script(
            "judge",
            tmp_path,
            input=dict(responses=str(tmp_path / "empty.parquet"), rubrics=rubrics),
            output=[str(tmp_path / "never.parquet")],
            params=dict(judge=judge, device="cpu"),
        )
    assert "holds no responses" in (tmp_path / "judge.log").read_text()
    assert not (tmp_path / "never.parquet").exists()

    from emlab.em.metrics import EMThresholds, write_em_tables

    base = tmp_path / "base.parquet"
    pd.DataFrame(
        {
            "condition": "base",
            "question_id": ["q0", "q0"],
            "sample_idx": [0, 1],
            "aligned": [90.0, 10.0],
            "coherent": [80.0, 80.0],
        }
    ).to_parquet(base)
    conditions = {"base": {"model": "base", "intervention": {"kind": "none"}}, cond.condition_id: cond.to_params()}
    th = build(EMThresholds, validate_config(cfg, source="test")["thresholds"], "thresholds")
    by_cond, _ = write_em_tables(
        [base, tmp_path / "judged.parquet"], conditions, th, 0, tmp_path / "c.csv", tmp_path / "q.csv"
    )
    row = by_cond.set_index("condition").loc[cond.condition_id]
    assert row["n"] == 0 and pd.isna(row["em_rate"]) and row["note"] == reason
    assert by_cond.set_index("condition").loc["base", "note"] == "" and by_cond.loc[0, "em_rate"] == 0.5
