"""The scripts' start-up (emlab.model.runner): a job declared torch-free never imports torch, and says so
clearly if it tries."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "workflow" / "src"

_JOB = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {src!r})
    from emlab.model.runner import run_script

    class Smk:
        log, threads = [], 1

    def main(_smk):
        import pandas  # a table job's own imports
        if {imports_torch}:
            import torch
        print("torch imported:", "torch" in sys.modules)

    run_script(Smk(), main, uses_torch={uses_torch})
    """
)


def _run(uses_torch: bool, imports_torch: bool) -> subprocess.CompletedProcess:
    code = _JOB.format(src=str(SRC), uses_torch=uses_torch, imports_torch=imports_torch)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_a_torch_free_job_skips_the_import_and_a_model_job_pins_threads():
    free = _run(uses_torch=False, imports_torch=False)
    assert free.returncode == 0, free.stderr
    assert "torch imported: False" in free.stdout
    model = _run(uses_torch=True, imports_torch=False)
    assert "torch imported: True" in model.stdout


def test_a_torch_free_job_that_imports_torch_fails_naming_the_fix():
    bad = _run(uses_torch=False, imports_torch=True)
    assert bad.returncode != 0
    assert "declared torch-free" in bad.stderr and "uses_torch=True" in bad.stderr


def test_the_guard_is_removed_after_an_in_process_run():
    from emlab.model.runner import _NoTorch, run_script

    class Smk:
        log, threads = [], 1

    run_script(Smk(), lambda _smk: None, uses_torch=False)
    assert not any(isinstance(f, _NoTorch) for f in sys.meta_path)
