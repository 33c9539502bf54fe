"""`benchmarks/gpu_check.py --dry` on the CPU: the prepared GPU check is not broken
(tiny shapes, one iteration each, pytest --collect-only -m gpu) and its report has its keys."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


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
    assert set(report["steps"]) == {"env", "pytest", "bench", "paper", "e2e"}
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
    # the paper-shape probe at tiny shapes: ours unsteered and steered beside plain generate, caching, and
    # gpu_plan's estimate per stage (memory is not measured on a CPU, so no stage can pass or fail on it)
    assert report["steps"]["paper"]["status"] == "ok", report["steps"]["paper"]["detail"]
    paper = report["paper"]
    assert {(r["stage"], r["impl"]) for r in paper["rows"]} == {
        ("generation", "emlab"),
        ("generation", "emlab + steering hook"),
        ("generation", "plain generate"),
        ("activation caching", "emlab"),
    }
    assert all(r["rate"] > 0 and r["fraction_of_peak"] > 0 for r in paper["rows"])
    assert isinstance(paper["steering_overhead"], float)
    assert [m["stage"] for m in paper["memory"]] == ["weights", "generate", "cache_activations"]
    for m in paper["memory"]:
        assert m["estimate_gib"] > 0 and m["measured_gib"] is None and m["ok"] is None
    table = (tmp_path / "gpu_check.markdown").read_text()
    assert "| generation | emlab |" in table and "% of matmul peak" in table
    assert "Paper-shape probe" in table and "| generate | not measured |" in table


def test_memory_row_fails_an_estimate_off_by_more_than_a_quarter():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from emlab.plan.gpu import StageEstimate
    from gpu_check import memory_row

    est = StageEstimate("generate", 28.0, 3.0, 1.0, "")
    assert memory_row("generate", est, 30.0)["ok"] is True  # +6.7 %
    off = memory_row("generate", est, 44.0)  # -27 %
    assert off["ok"] is False and off["error"] == round((32.0 - 44.0) / 44.0, 4)
    assert memory_row("generate", est, None)["ok"] is None
