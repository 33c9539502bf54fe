"""`benchmarks/gpu_check.py --dry` on the CPU: the prepared GPU check is not broken
(tiny shapes, one iteration each, pytest --collect-only -m gpu) and its report has its keys."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_dry_run_writes_the_report(tmp_path, tokenizer_dir):
    env_tok = {"EMLAB_TOKENIZER_DIR": str(tokenizer_dir)}
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "gpu_check.py"),
            "--dry",
            "--out",
            str(tmp_path),
            "--e2e-config",
            str(tmp_path / "absent.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, **env_tok},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(report) >= {"mode", "ok", "started_utc", "seconds", "env", "steps", "bench"}
    assert report["mode"] == "dry" and report["ok"] is True
    assert set(report["steps"]) == {"env", "pytest", "bench", "e2e"}
    assert report["steps"]["pytest"]["status"] == "ok" and "collected" in report["steps"]["pytest"]["detail"]
    assert report["steps"]["e2e"]["status"] == "skipped" and "no e2e config" in report["steps"]["e2e"]["detail"]
    bench = report["bench"]
    assert set(bench) >= {"peak_tflops", "dtype", "model_shape", "rows"} and bench["dtype"] == "float32"
    stages = {(r["stage"], r["impl"].split(" ")[0]) for r in bench["rows"]}
    assert stages == {
        ("generation", "emlab"),
        ("generation", "plain"),
        ("activation caching", "emlab"),
        ("activation caching", "output_hidden_states"),
        ("hf judge", "emlab"),
        ("training", "emlab"),
    }
    for r in bench["rows"]:
        assert set(r) >= {"rate", "unit", "fraction_of_peak", "seconds", "work"} and r["rate"] > 0
    table = (tmp_path / "gpu_check.markdown").read_text()
    assert "| generation | emlab |" in table and "% of matmul peak" in table
