"""profiles/slurm on a real (single-node) SLURM cluster: the model jobs go
through the Snakemake SLURM executor plugin as sbatch jobs that request a GPU,
and a non-model job does not. `.ci/start_slurm.sh` (as root) starts such a
cluster with two fake GPUs; without one this test is skipped, unless
EMLAB_REQUIRE_SLURM=1, where a missing cluster is a failure."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "profiles" / "slurm"
FINETUNE = "med_r1x9"
DATASET = "medical_bad"
TARGET = f"results/finetunes/{FINETUNE}/adapter"
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: ([^)]*)\)")

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _no_cluster(reason: str):
    if os.environ.get("EMLAB_REQUIRE_SLURM") == "1":
        pytest.fail(f"EMLAB_REQUIRE_SLURM=1 but {reason}", pytrace=False)
    pytest.skip(f"{reason} (run .ci/start_slurm.sh as root to start a test cluster)")


@pytest.fixture(scope="session")  # session scope: checked before the (session) tiny model is built
def slurm_cluster() -> None:
    """A SLURM controller that answers and at least one idle node, else skip (or fail)."""
    for tool in ("sinfo", "sbatch", "squeue", "scontrol"):
        if shutil.which(tool) is None:
            _no_cluster(f"`{tool}` is not available")
    try:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t %G"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        _no_cluster("`sinfo` timed out")
    if proc.returncode != 0:
        _no_cluster(f"`sinfo` failed: {proc.stderr.strip()}")
    nodes = [line.split() for line in proc.stdout.splitlines() if line.strip()]
    if not any(state.rstrip("*~#") in ("idle", "mix") for _, state, *_ in nodes):
        _no_cluster(f"no idle SLURM node (sinfo: {proc.stdout.strip() or 'no nodes'})")


def scontrol_job(jobid: str) -> dict[str, str]:
    """`scontrol -d show job` as a dict (needs MinJobAge long enough that finished jobs are still known)."""
    proc = subprocess.run(["scontrol", "-d", "-o", "show", "job", jobid], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"scontrol show job {jobid}: {proc.stderr}"
    fields = {}
    # Values may contain spaces (Command=..., Comment=...): split on " Key=" boundaries.
    for part in re.split(r" (?=[A-Za-z_:/]+=)", proc.stdout.strip()):
        key, _, value = part.partition("=")
        fields[key.strip()] = value.strip()
    return fields


def requested_gpus(job: dict[str, str]) -> int:
    """GPUs SLURM recorded for the job: --gpus gives TresPerJob=gres/gpu:N (gres:gpu:N on older SLURM);
    --gres gives TresPerNode; allocated ones show as gres/gpu=N in AllocTRES/TRES."""
    text = " ".join(job.get(k, "") for k in ("TresPerJob", "TresPerNode", "TresPerTask", "TRES", "AllocTRES"))
    counts = [int(n) for n in re.findall(r"gres[:/]gpu(?::[\w.-]+)?[:=](\d+)", text)]
    return max(counts, default=0)


def allocated_gpus(job: dict[str, str]) -> int:
    """GPUs SLURM gave the job: `scontrol -d` shows JOB_GRES=gpu:<type>:N (or gpu:N)."""
    counts = [int(n) for n in re.findall(r"gpu(?::[\w.-]+)?:(\d+)", job.get("JOB_GRES", ""))]
    return max(counts, default=0)


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, tmp_path_factory, tiny_model_dir, e2e):
    workdir = tmp_path_factory.mktemp("slurm")
    e2e.write_config(
        workdir,
        tiny_model_dir,
        "http://127.0.0.1:9/v1",  # the judge is not part of this target
        resources={"gpu": 1, "mem_mb": 1000, "runtime": 10, "finetune_runtime": 10},
    )
    env = {**e2e.env, "EMLAB_WARM_WORKER": "0"}  # a cluster's jobs each start on their own (the worker is local)
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--profile",
        str(PROFILE),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        # Test-friendly overrides; everything else (executor, status command, resources) is the profile's.
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--slurm-logdir",
        str(workdir / "slurm_logs"),
        "--slurm-keep-successful-logs",
        "--slurm-no-account",
        "--latency-wait",
        "10",
        TARGET,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    (workdir / "snakemake.out").write_text(proc.stdout + proc.stderr)
    return workdir, proc


def _submitted(proc) -> dict[str, list[str]]:
    """SLURM comment (rule_<rule>_wildcards_<values>, set by the plugin) -> SLURM job ids, for the
    job ids in the plugin's 'has been submitted' lines."""
    out: dict[str, list[str]] = {}
    for _, slurm_id, _log in SUBMITTED.findall(proc.stdout + proc.stderr):
        rule = scontrol_job(slurm_id).get("Comment", "")
        out.setdefault(rule, []).append(slurm_id)
    return out


def test_profile_does_not_cap_gpus():
    """`--resources gpu=...` in the SLURM profile would throttle submissions and rewrite --gpus."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert not any("gpu" in str(r) for r in profile.get("resources", []) or []), profile.get("resources")
    assert not any("gpu" in str(r) for r in profile.get("default-resources", []) or [])


def test_model_jobs_run_as_slurm_jobs_with_a_gpu(slurm_run):
    workdir, proc = slurm_run
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-8000:]
    adapter = workdir / TARGET
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()

    jobs = _submitted(proc)
    # The plugin's comment lists the wildcard values in order: finetune's are {mroot} (the model's
    # results root, `results` for a one-model config) and {name}.
    finetune_ids = jobs.get(f"rule_finetune_wildcards_results_{FINETUNE}", [])
    prepare_ids = jobs.get(f"rule_prepare_dataset_wildcards_{DATASET}", [])
    assert len(finetune_ids) == 1 and len(prepare_ids) == 1, (jobs, log[-5000:])

    # The model job: a real SLURM job of this run that finished, with the GPU and limits from config.resources.
    ft = scontrol_job(finetune_ids[0])
    assert ft["JobState"] == "COMPLETED" and ft["ExitCode"] == "0:0", ft
    assert requested_gpus(ft) == 1, ft  # resources.gpu -> --gpus=1
    assert allocated_gpus(ft) == 1, ft  # and SLURM allocated one of the node's GPUs to it
    assert ft["TimeLimit"] == "00:10:00", ft  # resources.finetune_runtime -> -t
    assert "mem=1000M" in ft.get("ReqTRES", "") or ft.get("MinMemoryNode") == "1000M", ft  # resources.mem_mb -> --mem
    # The SLURM job ran the rule through the plugin's job step (log kept by --slurm-keep-successful-logs).
    assert "--executor slurm-jobstep" in Path(ft["StdOut"]).read_text(), ft["StdOut"]

    # The non-model job ran under SLURM too, without a GPU.
    prep = scontrol_job(prepare_ids[0])
    assert prep["JobState"] == "COMPLETED" and prep["ExitCode"] == "0:0", prep
    assert requested_gpus(prep) == 0 and allocated_gpus(prep) == 0, prep

    # Both jobs carry this run's id as their job name (how the plugin finds its jobs again).
    assert ft["JobName"] == prep["JobName"] and ft["JobName"], (ft["JobName"], prep["JobName"])
    # Nothing ran locally: every job of the plan was a SLURM submission.
    assert len(SUBMITTED.findall(log)) == 2, log[-5000:]
