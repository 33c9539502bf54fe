"""The behaviour-preservation check hashes table content, not file metadata."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("hash_artifacts", REPO / "tools" / "hash_artifacts.py")
hash_artifacts = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hash_artifacts)


def _write(path: Path, df: pd.DataFrame, meta: dict | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df, preserve_index=False)
    if meta:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
    pq.write_table(table, path)


def test_metadata_ignored_values_and_dtypes_count(tmp_path, capsys):
    df = pd.DataFrame({"response": ["a", "b"], "score": [1.0, float("nan")]})
    _write(tmp_path / "a" / "generations" / "x.parquet", df)
    _write(tmp_path / "b" / "generations" / "x.parquet", df, {b"emlab": b'{"threads": 1}'})
    _write(tmp_path / "c" / "generations" / "x.parquet", df.assign(score=[1.0, 2.0]))
    _write(tmp_path / "d" / "generations" / "x.parquet", df.assign(score=[1, 2]))
    h = {k: hash_artifacts.hash_results(tmp_path / k)["generations/x.parquet"] for k in "abcd"}
    assert h["a"] == h["b"]
    assert len({h["a"], h["c"], h["d"]}) == 3
    (tmp_path / "before.json").write_text(json.dumps({"generations/x.parquet": h["a"]}))
    (tmp_path / "after.json").write_text(json.dumps({"generations/x.parquet": h["c"]}))
    assert hash_artifacts.main(["--compare", str(tmp_path / "before.json"), str(tmp_path / "before.json")]) == 0
    assert hash_artifacts.main(["--compare", str(tmp_path / "before.json"), str(tmp_path / "after.json")]) == 1
    assert "different: generations/x.parquet" in capsys.readouterr().out
