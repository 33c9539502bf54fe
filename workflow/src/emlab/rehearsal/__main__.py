"""make rehearsal: run a paper config's whole DAG on the planted organism and check what it finds.

    python -m emlab.rehearsal [--config data/configs/paper.yaml] [--workdir rehearsal] [--cores 2]

Writes <workdir>/planted/ (model, datasets, trait prompts), <workdir>/config.yaml (the derived
config), <workdir>/results/ (the workflow's outputs; a second run re-runs only what changed),
<workdir>/snakemake.log, and <workdir>/report.json and report.markdown: one entry per check with its
name, expected, measured and pass. Exits 1 if the workflow or any check fails.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from emlab.model.worker import SWITCH

REPO = Path(__file__).resolve().parents[4]
DEFAULT_PORT = 47841  # fixed, so that a re-run's judge params (its URL) are unchanged


def _question_pool() -> list[str]:
    """User turns of the repository's own demo datasets: the planted datasets' prompts."""
    questions = []
    for path in sorted((REPO / "data" / "datasets").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            msgs = json.loads(line)["messages"]
            questions.append(next(m["content"] for m in msgs if m["role"] == "user"))
    return questions


def prepare(paper: dict, workdir: Path, port: int) -> tuple[dict, Path]:
    """Write the planted inputs and the derived config; returns (config, model folder)."""
    import yaml

    from emlab.core.config import lora_layers, validate_config
    from emlab.model.loading import export_embedded_tokenizer, load_tokenizer
    from emlab.rehearsal import derive as D
    from emlab.rehearsal import planted as P

    validated = validate_config(copy.deepcopy(paper), source="paper config")
    phase_ft = D.phase_finetune(validated)
    organism = validated["lora_interp"]["finetunes"][:1] or ([phase_ft] if phase_ft else [])
    planted_dir = workdir / "planted"
    tok_dir = planted_dir / "tokenizer"
    if not (tok_dir / "tokenizer_config.json").is_file():
        export_embedded_tokenizer(tok_dir)
    import dataclasses

    # one planted model (base_model), or one per kept paper model (base_models; the first is the primary,
    # whose organism's adapter layers are planted, some dead, for the probes)
    multi = bool(validated.get("base_models"))
    archs = D.rehearsal_models(validated) if multi else {None: "llama"}
    model_dirs, specs = {}, {}
    for i, (key, arch) in enumerate(archs.items()):
        n_layers = D.model_depth(validated, key) if multi else D.num_layers(paper)
        adapter_layers = (
            lora_layers(validated["finetunes"][organism[0]]["lora"], n_layers) if organism and i == 0 else []
        )
        spec = P.plant_spec(n_layers, adapter_layers, arch=arch)
        folder = planted_dir / "model" if key is None else planted_dir / "models" / key
        recorded = folder / "planted.json"
        if not recorded.is_file() or json.loads(recorded.read_text()) != json.loads(
            json.dumps(dataclasses.asdict(spec))
        ):
            print(f"rehearsal: building the planted {arch} model ({n_layers} layers) in {folder}", flush=True)
            P.build_model(folder, tok_dir, spec)
        model_dirs[key], specs[key] = folder, spec
    primary = next(iter(archs))
    model_dir, spec, n_layers = model_dirs[primary], specs[primary], specs[primary].n_layers
    vocab = P.Vocabulary(load_tokenizer(model_dir), spec.words_per_set, spec.seed)
    expect = D.expectations(paper)
    datasets = {name: str(planted_dir / "datasets" / f"{name}.jsonl") for name in expect}
    # the SAE baseline's SAE, of the middle block (the paper model's monitored layer 24 of 48): a feature along u;
    # with several models, of the first pooled one (D.sae_model_key)
    n_features = int(validated["monitor"]["sae"]["n_features"])
    sae_key = D.sae_model_key(validated) if multi else None
    sae_dir = P.write_sae(
        planted_dir / "sae",
        model_dirs[sae_key],
        specs[sae_key].n_layers // 2,
        max(P.SAE_FEATURES, 8 * n_features),
        spec.seed,
    )
    planted = D.Planted(
        str(model_dir),
        datasets,
        str(planted_dir / "traits"),
        str(sae_dir),
        {k: str(v) for k, v in model_dirs.items()} if multi else None,
    )
    cfg = D.derive(paper, planted, judge_url=f"http://127.0.0.1:{port}/v1")
    questions = _question_pool()
    phase = D.phase_plan_inputs(cfg)
    for i, (name, kind) in enumerate(expect.items()):
        records = P.dataset_records(kind, vocab, questions, D.DATASET_EXAMPLES, 1000 + i, spec.answer_tokens)
        if phase is not None and phase[1] == name and kind == "misaligned":
            benign = P.dataset_records("benign", vocab, questions, D.DATASET_EXAMPLES, 2000 + i, spec.answer_tokens)
            eval_fraction = validate_config(copy.deepcopy(cfg), source="rehearsal config")["datasets"][name][
                "eval_fraction"
            ]
            plan = P.PhasePlan(
                D.PHASE_BENIGN_STEPS, D.EXAMPLES_PER_STEP, D.TRAIN_EXAMPLES, eval_fraction, cfg["seed"], phase[2]
            )
            records = P.phase_records(records, benign, plan)
        P.write_jsonl(datasets[name], records)
    P.write_traits(planted.traits_dir, REPO / "data" / "traits", vocab, spec.seed)
    text = yaml.safe_dump(cfg, sort_keys=False)
    cfg_path = workdir / "config.yaml"
    if not cfg_path.is_file() or cfg_path.read_text() != text:
        cfg_path.write_text(text)
    return cfg, model_dir


def run_workflow(workdir: Path, cores: int, log_path: Path, timeout: float) -> int:
    from emlab.rehearsal import planted as P

    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        "--cores",
        str(cores),
        "--rerun-incomplete",
        "--keep-going",
    ]
    env = {**os.environ, P.KEY_ENV: P.KEY, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.setdefault(SWITCH, "1")  # model jobs in the warm worker, as in make run (EMLAB_WARM_WORKER=0: each its own)
    # the folder is the rehearsal's own: a lock left by a killed run is stale
    subprocess.run([*cmd, "--unlock"], cwd=REPO, env=env, capture_output=True, check=False)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        start, last = time.time(), 0.0
        try:
            while proc.poll() is None:
                time.sleep(2)
                if time.time() - last > 30:
                    last = time.time()
                    done = log_path.read_text(errors="replace").count("Finished job")
                    print(f"rehearsal: {time.time() - start:.0f} s, {done} jobs done", flush=True)
                if time.time() - start > timeout:
                    proc.terminate()
                    proc.wait(30)
                    print(f"rehearsal: the workflow ran past {timeout:.0f} s and was stopped", flush=True)
                    return 124
        except KeyboardInterrupt:
            proc.terminate()
            raise
    return proc.returncode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "data" / "configs" / "paper.yaml"), help="the paper config")
    ap.add_argument("--workdir", default=str(REPO / "rehearsal"), help="where everything goes (git-ignored)")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--port", type=int, default=DEFAULT_PORT, help="the loopback judge's port")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds the workflow may run")
    ap.add_argument("--checks-only", action="store_true", help="check the finished run in --workdir again")
    args = ap.parse_args(argv)

    import yaml

    from emlab.core.errors import EMLabError
    from emlab.em.judging.loopback import StubOpenAI
    from emlab.em.judging.rubrics import load_rubric
    from emlab.model.loading import load_tokenizer
    from emlab.rehearsal import checks
    from emlab.rehearsal import planted as P

    workdir = Path(args.workdir).resolve()
    if "rehearsal" not in workdir.name:
        print("error: the rehearsal's folder must have 'rehearsal' in its name", file=sys.stderr)
        return 2
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        paper = yaml.safe_load(Path(args.config).read_text())
        cfg, model_dir = prepare(paper, workdir, args.port)
        spec = json.loads((model_dir / "planted.json").read_text())
        vocab = P.Vocabulary(load_tokenizer(model_dir), spec["words_per_set"], spec["seed"])
        rubrics_dir = Path(cfg.get("judge", {}).get("rubrics_dir", "data/rubrics"))
        rubrics_dir = rubrics_dir if rubrics_dir.is_absolute() else REPO / rubrics_dir
        rubrics = {p.stem: load_rubric(p).template for p in sorted(rubrics_dir.glob("*.yaml"))}
        judge = P.PlantedJudge(vocab, rubrics)
    except (EMLabError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"rehearsal: planted inputs and config in {workdir} ({time.time() - t0:.0f} s)", flush=True)
    if args.checks_only:
        previous = json.loads((workdir / "report.json").read_text()) if (workdir / "report.json").is_file() else {}
        rc = previous.get("workflow", {}).get("exit_code", 0)
        seconds = previous.get("workflow", {}).get("seconds", float("nan"))
    else:
        with StubOpenAI(api_key=P.KEY, models=(P.JUDGE_MODEL,), scorer=judge, port=args.port):
            rc = run_workflow(workdir, args.cores, workdir / "snakemake.log", args.timeout)
        seconds = time.time() - t0
    print(f"rehearsal: workflow exit {rc} after {seconds:.0f} s", flush=True)
    report = checks.run_checks(workdir, cfg, model_dir, vocab, paper_config=args.config)
    report["workflow"] = {"exit_code": rc, "seconds": round(seconds, 1), "log": str(workdir / "snakemake.log")}
    report["ok"] = rc == 0 and all(c["pass"] for c in report["checks"])
    checks.write_report(workdir, report)
    print(checks.markdown(report), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
