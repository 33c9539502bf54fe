"""The warm worker (emlab.model.worker), through real Snakemake script jobs: jobs run in forks of one worker,
with their own log, folder, environment, threads and exit status; a failure is the job's; a stopped job's
child is stopped too; another import-time environment gets another worker; the results equal those of a job
run in its own process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from emlab.model import worker

SRC = Path(__file__).resolve().parents[2] / "workflow" / "src"

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the warm worker forks: Linux only")

_SNAKEFILE = textwrap.dedent(
    """
    rule job:
        output: "out/{name}.json"
        log: "logs/{name}.log"
        threads: 1
        script: "job.py"
    """
)

_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {src!r})
    from emlab.model.runner import run_script


    def main(smk):
        import json, logging, os, time
        import torch
        from emlab.core.errors import EMLabError

        name = smk.wildcards.name
        if name.startswith("sleep"):
            open("sleeping.pid", "w").write(str(os.getpid()))
            time.sleep(120)
        if name.startswith("fail"):
            raise EMLabError("planted failure in " + name)
        logging.getLogger("emlab.test").info("job %s ran", name)
        print("stdout of", name)
        torch.manual_seed(0)
        x = torch.randn(64, 64, dtype=torch.float64)
        record = {{
            "pid": os.getpid(),
            "ppid": os.getppid(),
            "cwd": os.getcwd(),
            "in_worker": os.environ.get("EMLAB_WORKER_CHILD") == "1",
            "marker": os.environ.get("JOB_MARKER"),
            "threads": torch.get_num_threads(),
            "value": float((x @ x).sum()),
        }}
        with open(smk.output[0], "w") as f:
            json.dump(record, f)


    run_script(snakemake, main)
    """
)


@pytest.fixture
def workflow(tmp_path):
    (tmp_path / "Snakefile").write_text(_SNAKEFILE)
    (tmp_path / "job.py").write_text(_SCRIPT.format(src=str(SRC)))
    sockets = tmp_path / "workers"
    yield tmp_path, sockets
    if sockets.exists():
        worker.stop_workers(sockets)


def _env(sockets: Path, on: bool = True, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (worker.SWITCH, worker.IN_CHILD)}
    env.update({worker.DIR_ENV: str(sockets), worker.IDLE_ENV: "60", "JOB_MARKER": "from-the-job", **extra})
    if on:
        env[worker.SWITCH] = "1"
    return env


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _snakemake(workdir: Path, env: dict, *targets: str, popen: bool = False):
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", *targets]
    if popen:
        # A session of its own, as a terminal's foreground job, with Ctrl-C's default action: a test run
        # started in the background (`make test &`, nohup) has SIGINT ignored, and that is inherited.
        return subprocess.Popen(
            cmd,
            cwd=workdir,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_default_sigint,
        )
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)


def _record(workdir: Path, name: str) -> dict:
    return json.loads((workdir / "out" / f"{name}.json").read_text())


def test_jobs_run_in_forks_of_one_worker_with_their_own_log_environment_and_threads(workflow):
    workdir, sockets = workflow
    done = _snakemake(workdir, _env(sockets), "out/a.json", "out/b.json")
    assert done.returncode == 0, done.stdout + done.stderr
    a, b = _record(workdir, "a"), _record(workdir, "b")
    assert a["in_worker"] and b["in_worker"]
    assert a["ppid"] == b["ppid"] and a["pid"] != b["pid"]  # two children of one worker
    assert a["cwd"] == str(workdir) and a["marker"] == "from-the-job"
    assert a["threads"] == 1  # the rule's threads, set by run_script in the child
    assert "job a ran" in (workdir / "logs" / "a.log").read_text()
    assert len(list(sockets.glob("*.sock"))) == 1

    alone = _snakemake(workdir, _env(sockets, on=False), "out/c.json")  # the same job in its own process
    assert alone.returncode == 0, alone.stdout + alone.stderr
    c = _record(workdir, "c")
    assert not c["in_worker"] and c["ppid"] != a["ppid"]
    assert c["value"] == a["value"] == b["value"]


def test_a_failing_job_fails_with_its_message_and_leaves_no_output(workflow):
    workdir, sockets = workflow
    failed = _snakemake(workdir, _env(sockets), "out/fail.json")
    assert failed.returncode != 0
    assert "planted failure in fail" in (workdir / "logs" / "fail.log").read_text()
    assert not (workdir / "out" / "fail.json").exists()
    again = _snakemake(workdir, _env(sockets), "out/d.json")  # the worker still serves the next job
    assert again.returncode == 0, again.stdout + again.stderr
    assert _record(workdir, "d")["in_worker"]


def test_another_import_time_environment_gets_another_worker(workflow):
    workdir, sockets = workflow
    assert _snakemake(workdir, _env(sockets), "out/e.json").returncode == 0
    assert _snakemake(workdir, _env(sockets, HF_EMLAB_TEST="other"), "out/f.json").returncode == 0
    assert _record(workdir, "e")["ppid"] != _record(workdir, "f")["ppid"]
    assert len(list(sockets.glob("*.sock"))) == 2


def test_stopping_snakemake_stops_the_job_running_in_the_worker(workflow):
    workdir, sockets = workflow
    proc = _snakemake(workdir, _env(sockets), "out/sleep.json", popen=True)
    pid_file = workdir / "sleeping.pid"
    deadline = time.monotonic() + 120
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pid_file.exists(), "the sleeping job never started"
    child = int(pid_file.read_text())
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: to Snakemake and its jobs (the worker's child is not among them)
    proc.wait(timeout=60)
    deadline = time.monotonic() + 30
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(child), "the job's child kept running after its job was stopped"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_a_folder_others_can_write_to_is_refused(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    monkeypatch.setenv(worker.DIR_ENV, str(shared))
    with pytest.raises(worker.WorkerUnavailable, match="not private"):
        worker.worker_dir()


def test_the_worker_is_used_only_when_switched_on_for_a_snakemake_script(monkeypatch):
    monkeypatch.delenv(worker.SWITCH, raising=False)
    assert worker.hand_off(object()) is None
    monkeypatch.setenv(worker.SWITCH, "1")
    assert worker.hand_off(object()) is None  # not the `snakemake` of a script Snakemake generated
