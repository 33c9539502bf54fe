"""Reproducible sampling: the same condition generated in fresh processes with the same
threads is identical; generation.threads pins the thread count whatever the job's cores;
every generations parquet records seed, device, dtype, threads and library versions as
schema metadata (the table data stays the same)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from emlab.core.atomic import write_parquet
from emlab.core.provenance import read_metadata
from emlab.model.runtime import judgment_metadata, pinned_threads, run_metadata

REPO = Path(__file__).resolve().parents[2]

# A fresh process running the generate script as Snakemake would, with the job's threads from argv.
DRIVER = """
import json, runpy, sys
from types import SimpleNamespace
args = json.loads(sys.argv[1])

class Names(list):
    def __init__(self, **named):
        super().__init__(named.values())
        self.__dict__.update(named)

smk = SimpleNamespace(
    input=Names(questions=args["questions"], base_model=[]), output=Names(out=args["out"]),
    params=SimpleNamespace(condition="base", spec={"model": "base", "group": "model", "intervention": {"kind": "none"}},
                           base_model=args["model"], generation=args["generation"], seed=0, device="cpu",
                           dtype="float32"),
    log=[args["out"] + ".log"], threads=args["job_threads"], scriptdir=args["scripts"])
runpy.run_path(args["scripts"] + "/generate.py", init_globals={"snakemake": smk})
"""


def generate_in_fresh_process(tiny_model_dir, out: Path, job_threads: int, threads: int | None) -> pd.DataFrame:
    generation = {
        "samples_per_question": 2,
        "max_new_tokens": 8,
        "temperature": 1.0,
        "top_p": 1.0,
        "batch_size": 4,
        "backend": "hf",
        "threads": threads,
    }
    args = {
        "questions": str(REPO / "data" / "questions" / "first_plot_questions.yaml"),
        "out": str(out),
        "model": str(tiny_model_dir),
        "generation": generation,
        "job_threads": job_threads,
        "scripts": str(REPO / "workflow" / "scripts"),
    }
    subprocess.run([sys.executable, "-c", DRIVER, json.dumps(args)], check=True, capture_output=True, timeout=600)
    return pd.read_parquet(out)


@pytest.mark.slow  # four fresh processes: minutes on a shared 2-core machine
def test_same_threads_same_responses_and_the_metadata_records_the_threads(tiny_model_dir, tmp_path):
    a = generate_in_fresh_process(tiny_model_dir, tmp_path / "a.parquet", job_threads=2, threads=None)
    b = generate_in_fresh_process(tiny_model_dir, tmp_path / "b.parquet", job_threads=2, threads=None)
    pd.testing.assert_frame_equal(a, b)
    meta_a, meta_b = read_metadata(tmp_path / "a.parquet"), read_metadata(tmp_path / "b.parquet")
    assert meta_a == meta_b
    assert meta_a["torch_threads"] == 2 and meta_a["seed"] == 0
    assert (meta_a["device"], meta_a["dtype"], meta_a["backend"]) == ("cpu", "float32", "hf")
    assert {"python_version", "torch_version", "transformers_version", "peft_version"} <= set(meta_a)

    # generation.threads pins the count whatever cores the job got: same responses, same metadata
    c = generate_in_fresh_process(tiny_model_dir, tmp_path / "c.parquet", job_threads=1, threads=2)
    pd.testing.assert_frame_equal(a, c)
    assert read_metadata(tmp_path / "c.parquet") == meta_a

    # another thread count is visible in the metadata
    generate_in_fresh_process(tiny_model_dir, tmp_path / "d.parquet", job_threads=2, threads=1)
    meta_d = read_metadata(tmp_path / "d.parquet")
    assert meta_d["torch_threads"] == 1 and meta_d != meta_a
    assert {k: v for k, v in meta_d.items() if k != "torch_threads"} == {
        k: v for k, v in meta_a.items() if k != "torch_threads"
    }


def test_metadata_leaves_the_table_data_unchanged(tmp_path):
    import pyarrow.parquet as pq

    df = pd.DataFrame({"a": [1, 2], "b": ["x", None], "c": [0.5, float("nan")]}).astype({"b": "string"})
    write_parquet(tmp_path / "plain.parquet", df)
    write_parquet(tmp_path / "meta.parquet", df, metadata=run_metadata(7, "cpu", "float32"))
    plain, meta = pq.read_table(tmp_path / "plain.parquet"), pq.read_table(tmp_path / "meta.parquet")
    assert plain.equals(meta) and plain.schema.metadata[b"pandas"] == meta.schema.metadata[b"pandas"]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "meta.parquet"), df)
    assert read_metadata(tmp_path / "plain.parquet") == {}
    got = read_metadata(tmp_path / "meta.parquet")
    assert (got["seed"], got["device"], got["dtype"]) == (7, "cpu", "float32")


def test_pinned_threads_sets_and_restores():
    import torch

    before = torch.get_num_threads()
    with pinned_threads(None) as n:
        assert n == before
    with pinned_threads(1) as n:
        assert n == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before


def test_judgment_metadata_carries_the_responses_seed(tmp_path):
    write_parquet(tmp_path / "gen.parquet", pd.DataFrame({"x": [1]}), metadata=run_metadata(3, "cpu", "float32"))
    hf = judgment_metadata(tmp_path / "gen.parquet", {"backend": "hf", "hf": {"dtype": "auto"}}, "cpu")
    assert hf["emlab.seed"] == "3" and hf["emlab.device"] == "cpu" and hf["emlab.dtype"] == "float32"
    pd.DataFrame({"x": [1]}).to_parquet(tmp_path / "old.parquet")  # written before provenance existed
    api = judgment_metadata(tmp_path / "old.parquet", {"backend": "openai"}, "cpu")
    assert api["emlab.seed"] == "null" and api["emlab.device"] == "remote" and api["emlab.backend"] == "openai"


def test_schema_default_threads_is_the_jobs():
    from emlab.core.config import validate_config
    from emlab.core.errors import EMLabError

    assert validate_config({}, source="test")["generation"]["threads"] is None
    assert validate_config({"generation": {"threads": 4}}, source="test")["generation"]["threads"] == 4
    with pytest.raises(EMLabError):
        validate_config({"generation": {"threads": 0}}, source="test")
