"""Crashes cost nothing: SIGKILL the fine-tune, generate and judge jobs of the
tiny end-to-end workflow (tests/helpers/e2e/config.yaml) at seeded random points, and
check what a user relies on after a kill -9:

- every file the jobs had written is either absent or complete (outputs and
  checkpoints are written to a temporary sibling and renamed into place);
- `snakemake --unlock` and a rerun (with --rerun-incomplete, as
  profiles/local sets it) finish the work;
- the rerun's results equal an uninterrupted run's: the same generation and
  judgment tables, the same adapter weights (a fine-tune killed after a
  checkpoint resumes from it and must land on the same weights).

The target is one condition (med_r1x9: fine-tune, generate, judge) so the module
stays short. The kill points come from EMLAB_FAULT_SEED (default 0); each is a
fraction of that rule's duration in the uninterrupted run, counted from the
moment Snakemake starts the job.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

CONDITION = "med_r1x9"
TARGET = f"results/judgments/{CONDITION}.parquet"
KILLED_RULES = ("finetune", "generate", "judge")
# In DAG order, so each rerun passes the jobs killed before. "random": a seeded fraction of the rule's
# duration in the uninterrupted run; "checkpoint": as soon as the fine-tune has written its first checkpoint.
KILLS = (("finetune", "checkpoint"), ("finetune", "random"), ("generate", "random"), ("judge", "random"))
N_RESPONSES = 8 * 3  # questions x samples_per_question
SEED = int(os.environ.get("EMLAB_FAULT_SEED", "0"))
KILL_WINDOW = (0.1, 0.95)  # fractions of the rule's reference duration
JOB_TIMEOUT_S = 900
SMK_MARKER = ".snakemake_timestamp"  # Snakemake's own marker in a finished directory output

_JOB_START = re.compile(r"^(?:local)?rule (\w+):$")
_JOB_FINISHED = re.compile(r"Finished jobid: (\d+) \(Rule: (\w+)\)")


class SnakemakeProcess:
    """Snakemake in its own process group, its output read as it comes: when each rule's job starts and ends."""

    def __init__(self, cmd: list[str], env: dict[str, str]):
        self.t0 = time.monotonic()
        self.lines: list[str] = []
        self.started: dict[str, float] = {}  # rule -> seconds after launch its (first) job started
        self.finished: dict[str, float] = {}
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            now = time.monotonic() - self.t0
            self.lines.append(line)
            if m := _JOB_START.match(line.strip()):
                self.started.setdefault(m.group(1), now)
            elif m := _JOB_FINISHED.search(line):
                self.finished.setdefault(m.group(2), now)

    def output(self, last: int = 80) -> str:
        return "".join(self.lines[-last:])

    def wait_for_start(self, rule: str, timeout: float = JOB_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while rule not in self.started:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._reader.join(5)
                raise AssertionError(f"no {rule} job started (exit {self.proc.poll()}):\n{self.output()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the whole process group: Snakemake and the job it is running."""
        pgid = self.proc.pid  # start_new_session: the group is the leader's pid
        os.killpg(pgid, signal.SIGKILL)
        self.proc.wait(30)
        deadline = time.monotonic() + 30
        while True:  # the job's processes die with the group; wait until none is left
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            assert time.monotonic() < deadline, "processes of the killed group are still alive"
            time.sleep(0.05)
        self._reader.join(5)

    def wait(self, timeout: float = 3 * JOB_TIMEOUT_S) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc


def _complete_file(path: Path, reference: Path) -> str | None:
    """Why `path` (a file a killed job left) is not complete, or None when it is."""
    suffix = path.suffix
    try:
        if suffix == ".parquet":
            df = pd.read_parquet(path)
            expected = pd.read_parquet(reference) if reference.is_file() else None
            if expected is not None and (len(df) != len(expected) or list(df.columns) != list(expected.columns)):
                return (
                    f"{len(df)} rows x {list(df.columns)}; "
                    f"the uninterrupted run has {len(expected)} x {list(expected.columns)}"
                )
        elif suffix == ".json":
            json.loads(path.read_text())
        elif suffix == ".jsonl":
            for line in path.read_text().splitlines():
                json.loads(line)
        elif suffix in (".csv", ".tsv"):
            df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
            if reference.is_file() and len(df) != len(pd.read_csv(reference, sep="\t" if suffix == ".tsv" else ",")):
                return f"{len(df)} rows, the uninterrupted run has a different count"
        elif suffix == ".safetensors":
            load_file(str(path))
        elif suffix == ".pt":  # torch.save's zip container: check every member's CRC without unpickling anything
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
            if bad is not None:
                return f"member {bad} is corrupt"
        elif suffix == ".sqlite":
            with sqlite3.connect(path) as db:
                status = db.execute("PRAGMA integrity_check").fetchone()[0]
            if status != "ok":
                return f"integrity_check: {status}"
        elif path.stat().st_size == 0 and reference.is_file() and reference.stat().st_size > 0:
            return "empty"
    except Exception as exc:  # any reader failure is the finding
        return f"{type(exc).__name__}: {exc}"
    return None


def _finished_looking_entries(results: Path):
    """Every file under results/ a reader would take as finished: not a log, not inside a temporary (dot) sibling."""
    for path in sorted(results.rglob("*")):
        rel = path.relative_to(results)
        if rel.parts[0] == "logs" or any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        yield rel, path


def assert_absent_or_complete(results: Path, reference: Path, where: str) -> None:
    problems = []
    for rel, path in _finished_looking_entries(results):
        if rel.suffix == ".sqlite-journal" or rel.name.endswith(("-wal", "-shm")):
            continue  # SQLite's own recovery files
        why = _complete_file(path, reference / rel)
        if why:
            problems.append(f"{rel}: {why}")
    for folder in [*results.glob("finetunes/*/adapter"), *results.glob("finetunes/*/checkpoints/step-*")]:
        ref = reference / folder.relative_to(results)
        # Snakemake writes .snakemake_timestamp into a directory output after the job ends, so a job killed
        # after the folder was renamed into place lacks it; the job is then incomplete and is rerun.
        missing = (
            sorted(p.name for p in ref.iterdir() if not (folder / p.name).exists() and p.name != SMK_MARKER)
            if ref.is_dir()
            else []
        )
        if missing:
            problems.append(f"{folder.relative_to(results)}: looks finished but lacks {missing}")
    assert not problems, f"after killing {where}, files that look finished but are not:\n" + "\n".join(problems)


def _wait_for(condition, run: SnakemakeProcess, timeout: float = JOB_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert run.proc.poll() is None and time.monotonic() < deadline, f"condition never met:\n{run.output()}"
        time.sleep(0.02)


def _state(workdir: Path, rule: str) -> str:
    """What the killed job had reached: its log's last line, and which outputs and checkpoints exist."""
    res = workdir / "results"
    log = res / "logs" / rule / f"{CONDITION}.log"
    last = log.read_text().strip().splitlines()[-1:] if log.is_file() else []
    outputs = [
        f"finetunes/{CONDITION}/adapter",
        f"finetunes/{CONDITION}/summary.json",
        f"generations/{CONDITION}.parquet",
        f"judgments/{CONDITION}.parquet",
    ]
    present = [o for o in outputs if (res / o).exists()]
    ckpts = sorted(p.name for p in res.glob(f"finetunes/{CONDITION}/checkpoints/step-*"))
    return (f"log ends {last[0][-120:]!r}" if last else "no log yet") + f"; present {present}; checkpoints {ckpts}"


def _adapter(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def judge(e2e):
    with e2e.judge_stub() as stub:
        yield stub


def _prepare(workdir: Path, e2e, tiny_model_dir, judge) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    e2e.write_config(workdir, tiny_model_dir, judge.base_url)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, e2e, tiny_model_dir, judge):
    """One uninterrupted run of the target: its results and how long each rule's job took."""
    workdir = tmp_path_factory.mktemp("faults_reference")
    _prepare(workdir, e2e, tiny_model_dir, judge)
    run = SnakemakeProcess(e2e.command(workdir, TARGET), e2e.env)
    assert run.wait() == 0, run.output(200)
    durations = {rule: run.finished[rule] - run.started[rule] for rule in KILLED_RULES}
    return workdir, durations


def test_killed_jobs_leave_nothing_half_written_and_the_rerun_equals_an_uninterrupted_run(
    reference, tmp_path, e2e, tiny_model_dir, judge
):
    ref_dir, durations = reference
    workdir = tmp_path / "faulted"
    _prepare(workdir, e2e, tiny_model_dir, judge)
    # The datasets are the same files in both runs: start from the reference's (mtimes kept), skipping that job.
    shutil.copytree(ref_dir / "results" / "datasets", workdir / "results" / "datasets")
    rng = random.Random(SEED)
    kills = []
    for rule, at in KILLS:
        run = SnakemakeProcess(e2e.command(workdir, "--rerun-incomplete", TARGET), e2e.env)
        run.wait_for_start(rule)
        if at == "checkpoint":  # right after the first checkpoint: the rerun must resume from it
            _wait_for(lambda: any(workdir.glob(f"results/finetunes/{CONDITION}/checkpoints/step-*")), run)
            delay = time.monotonic() - run.t0 - run.started[rule]
        else:
            delay = rng.uniform(*KILL_WINDOW) * durations[rule]
            # at that point, or as soon as the job ends if it ends first (a resumed fine-tune is shorter than the
            # reference's): the kill then lands between this job and the next, which the next round starts again
            while time.monotonic() - run.t0 < run.started[rule] + delay and rule not in run.finished:
                if run.proc.poll() is not None:
                    break
                time.sleep(0.02)
        ended = run.proc.poll() is not None or rule in run.finished
        run.kill()
        where = f"{rule} {delay:.1f} s into its job ({at}; the uninterrupted job took {durations[rule]:.1f} s)"
        kills.append(where + (" - the job had already ended" if ended else "") + f": {_state(workdir, rule)}")
        assert_absent_or_complete(workdir / "results", ref_dir / "results", where)
        unlock = e2e.snakemake(workdir, "--unlock")
        assert unlock.returncode == 0, unlock.stdout + unlock.stderr

    final = SnakemakeProcess(e2e.command(workdir, "--rerun-incomplete", TARGET), e2e.env)
    assert final.wait() == 0, f"rerun after the kills ({'; '.join(kills)}) failed:\n{final.output(200)}"

    res, ref = workdir / "results", ref_dir / "results"
    for table in (f"generations/{CONDITION}.parquet", f"judgments/{CONDITION}.parquet"):
        got = pd.read_parquet(res / table)
        assert len(got) == N_RESPONSES, table
        pd.testing.assert_frame_equal(got, pd.read_parquet(ref / table), obj=f"{table} after {'; '.join(kills)}")
    adapter = _adapter(res / f"finetunes/{CONDITION}/adapter")
    expected = _adapter(ref / f"finetunes/{CONDITION}/adapter")
    assert adapter.keys() == expected.keys()
    for name in expected:
        assert torch.equal(adapter[name], expected[name]), f"adapter weight {name} differs after {'; '.join(kills)}"
    losses = [pd.read_csv(d / f"finetunes/{CONDITION}/train_log.csv")["loss"] for d in (res, ref)]
    pd.testing.assert_series_equal(*losses, obj=f"training losses after {'; '.join(kills)}")
    summary = json.loads((res / f"finetunes/{CONDITION}/summary.json").read_text())
    assert summary["resumed_from"], "the fine-tune killed after a checkpoint did not resume from one"
    print("kills:\n" + "\n".join(kills) + f"\nthe fine-tune resumed from {summary['resumed_from']}")
