"""A model job's start-up, each in a process of its own vs in the warm worker (emlab.model.worker), side by side.

A throwaway workflow of --jobs Snakemake script jobs, each loading the model (results/base_model or --model)
and its tokenizer and running one short forward, is run twice from empty, one job at a time: with
EMLAB_WARM_WORKER=0 and with 1 (the worker's own start, its imports, counted in the second run). Reports
the seconds per job (Snakemake's elapsed time / jobs) and the ratio.

    .venv/bin/python benchmarks/bench_worker.py             # 8 jobs each way, about 1 minute on 2 cores
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from _common import REPO, default_model
from emlab.model.worker import stop_workers  # _common put workflow/src on the path

SNAKEFILE = textwrap.dedent(
    """
    rule all:
        input: expand("out/{{i}}.txt", i=range({jobs}))

    rule job:
        output: "out/{{i}}.txt"
        threads: {threads}
        script: "job.py"
    """
)
SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {src!r})
    from emlab.model.runner import run_script


    def main(smk):
        import torch
        from emlab.model.loading import load_model, load_tokenizer

        model, tokenizer = load_model({model!r}, device="cpu", dtype="float32"), load_tokenizer({model!r})
        ids = tokenizer("How are you today?", return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            logits = model(input_ids=ids).logits
        open(smk.output[0], "w").write(str(float(logits[0, -1].max())))


    run_script(snakemake, main)
    """
)


def run(workdir: Path, warm: bool) -> float:
    shutil.rmtree(workdir / "out", ignore_errors=True)
    env = dict(os.environ, EMLAB_WARM_WORKER="1" if warm else "0", EMLAB_WORKER_DIR=str(workdir / "workers"))
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--jobs", "1", "--quiet", "all"],
        cwd=workdir,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    model = args.model or default_model()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "Snakefile").write_text(SNAKEFILE.format(jobs=args.jobs, threads=args.threads))
        (workdir / "job.py").write_text(SCRIPT.format(src=str(REPO / "workflow" / "src"), model=str(model)))
        own = run(workdir, warm=False)
        warm = run(workdir, warm=True)
        values = {p.read_text() for p in (workdir / "out").glob("*.txt")}
        stop_workers(workdir / "workers")
    print(f"{args.jobs} model jobs one at a time (load {Path(model).name}, one forward), Snakemake's whole run:")
    print(f"  each in its own process: {own:6.1f} s  ({own / args.jobs:.2f} s per job)")
    print(f"  in the warm worker:      {warm:6.1f} s  ({warm / args.jobs:.2f} s per job, the worker's start included)")
    print(f"  warm / own: {warm / own:.0%}; the jobs' results agree: {len(values) == 1}")


if __name__ == "__main__":
    main()
