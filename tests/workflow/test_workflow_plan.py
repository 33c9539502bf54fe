"""The workflow as Snakemake sees it: dry run plans every stage, lint is
clean, bad config fails with a message naming the key."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

ALL_RULES = {
    "convert_base_model",
    "prepare_dataset",
    "finetune",
    "generate",
    "judge",
    "cache_activations",
    "mean_diff_directions",
    "direction_cosines",
    "em_metrics",
    "figure_em_by_condition",
    "figure_steering_sweep",
    "figure_ablation",
    "figure_direction_cosine",
    "all",
    # issue 5: semantic vectors, single-adapter analyses and their figures
    "semantic_directions",
    "semantic_cosines",
    "single_adapter_analysis",
    "figure_steering_metrics",
    "figure_semantic_vectors",
    "figure_single_adapter",
    "single_adapter_comparison",  # issue 22: the own and the reference vector beside their EM
    # issue 3: checkpoint export, phase-transition rotation and figure
    "export_checkpoint",
    "phase_rotation",
    "figure_phase_transition",
    # issue 13: trait directions, drift of the monitor grid, the monitor and its figures
    "trait_directions",
    "trait_drift",
    "drift_labels",
    "monitor_train_evaluate",
    "monitor_analyses",
    "figure_monitor",
    "figure_live_monitor",
    # issue 12: rank-1 adapter scalars, response sets, probes and roles
    "lora_scalars",
    "lora_sets",
    "lora_probes",
    "figure_lora_interp",
    "lora_token_view",
    "figure_adapter_steering",
    "figure_scalar_patching",
}


def run_snakemake(*args, cwd=REPO, env=None, check=False):
    proc = subprocess.run(
        SNAKEMAKE + ["--snakefile", str(REPO / "Snakefile"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_dry_run_of_default_config_plans_every_stage(planned_rules):
    proc = run_snakemake("-n", "--forceall", check=True)
    rules = planned_rules(proc.stdout + proc.stderr)
    assert set(rules) == ALL_RULES | {"monitor_labels__<run>"}, rules  # a label rule per monitor run, counted as one
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    n_monitor_runs = (len(cfg["monitor"]["calibration"]) + len(cfg["monitor"]["held_out"])) * len(
        cfg["monitor"]["seeds"]
    )
    n_live = 1 if cfg["monitor"].get("live") else 0  # monitor.live: one run trained under the fitted monitor
    assert rules["finetune"] == len(cfg["finetunes"]) + n_monitor_runs + n_live
    assert rules["trait_drift"] == rules["drift_labels"] == rules["monitor_labels__<run>"] == n_monitor_runs
    assert rules["generate"] == rules["judge"] >= 8


def test_each_table_has_one_job_and_a_runs_labels_share_one(tmp_path):
    """Every generations and judgments parquet is the output of exactly one planned job. A monitor run's
    checkpoint labels (mon__<...>__step<N>) are its monitor_labels__<run> job's; mon__base, every run's step 0,
    stays with rules generate and judge."""
    proc = run_snakemake("-n", "--forceall", "--printshellcmds", check=True)
    out = proc.stdout + proc.stderr
    producer: dict[str, list[str]] = {}
    for block in re.split(r"\n(?=\[\w{3} \w{3} )", out):
        rule = re.search(r"^(?:local)?rule (\S+):$", block, re.M)
        outputs = re.search(r"^    output: (.+)$", block, re.M)
        if rule and outputs:
            for path in outputs.group(1).split(", "):
                producer.setdefault(path, []).append(rule.group(1))
    tables = {p: r for p, r in producer.items() if re.match(r"results/(generations|judgments)/", p)}
    assert tables and all(len(r) == 1 for r in tables.values()), {p: r for p, r in tables.items() if len(r) != 1}
    labels = {p: r[0] for p, r in tables.items() if re.search(r"/mon__.+__step\d+\.parquet$", p)}
    assert labels and all(rule == f"monitor_labels__{re.search(r'/(mon__.+)__step', p).group(1)}"
                          for p, rule in labels.items()), labels  # fmt: skip
    assert tables["results/generations/mon__base.parquet"] == ["generate"]
    assert tables["results/judgments/mon__base.parquet"] == ["judge"]


def test_lint_is_clean():
    proc = run_snakemake("--lint")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations" in proc.stdout + proc.stderr


def _write_config(tmp_path, mutate):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    mutate(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c["judge"].update(backnd="hf"), "'backnd' was unexpected"),
        (lambda c: c["generation"].update(max_new_tokens="many"), "generation.max_new_tokens"),
        (lambda c: c["steering"].update(layers=[99]), "layer 99 is out of range"),
        (lambda c: c["finetunes"]["med_r1x9"].update(lora={"layers": [3, 31]}), "layer 31 is out of range"),
        (lambda c: c["traits"].update(layer=99), "traits.layer 99 is out of range"),  # not in trait_directions
        # PyYAML reads 1e-4 (no dot) as text: one error saying how to write the number
        (lambda c: c["training_defaults"].update(learning_rate="1e-4"), "write it 1.0e-4 or 0.0001"),
        # issue 12: only rank-1 fine-tunes have per-token scalars; every role layer needs an adapter
        (
            lambda c: c["lora_interp"].update(finetunes=["sport_all_r32"]),
            "lora_interp.finetunes: 'sport_all_r32' has rank-32 adapters",
        ),
        (lambda c: c["lora_interp"].update(finetunes=["nope"]), "lora_interp.finetunes names 'nope'"),
        (
            lambda c: c["lora_interp"].update(roles={"medical_layers": [40]}),
            "lora_interp.roles.medical_layers: layer 40",
        ),
        (lambda c: c["lora_interp"].update(patching={"pairs": ["med_to_med"]}), "lacks same"),
        (
            lambda c: c["lora_interp"].update(patching={"medical_questions": "data/questions/nope.yaml"}),
            "nope.yaml",
        ),
        # issue 22: the single adapter's reference vector must exist, at a layer of the model
        (
            lambda c: c["single_adapter"].update(reference_vector={"finetune": "nope"}),
            "single_adapter.reference_vector.finetune names 'nope'",
        ),
        (
            lambda c: c["single_adapter"].update(reference_vector={"finetune": "med_r1x9", "layer": 40}),
            "single_adapter.reference_vector.layer: layer 40 is out of range",
        ),
    ],
)
def test_bad_config_fails_before_any_job(tmp_path, mutate, message):
    path = _write_config(tmp_path, mutate)
    proc = run_snakemake("-n", "--configfile", str(path))
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


def test_openai_judge_without_key_fails_naming_the_variable(tmp_path):
    path = _write_config(
        tmp_path, lambda c: c["judge"].update(backend="openai", openai={"api_key_env": "EMLAB_TEST_KEY"})
    )
    env = {k: v for k, v in os.environ.items() if k != "EMLAB_TEST_KEY"}
    proc = subprocess.run(
        SNAKEMAKE + ["-n", "--configfile", str(path)], cwd=REPO, capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode != 0
    assert "EMLAB_TEST_KEY" in proc.stdout + proc.stderr


def test_gpu_config_declares_gpu_resources_for_model_jobs(tmp_path):
    path = _write_config(
        tmp_path, lambda c: c.update(resources={"gpu": 1, "gpu_model": "a100", "mem_mb": 64000, "runtime": 90})
    )
    proc = run_snakemake("-n", "--forceall", "--configfile", str(path), check=True)
    out = proc.stdout + proc.stderr
    blocks = re.split(r"\n(?=\[\w{3} \w{3} )", out)  # one block per planned job, each starting with its timestamp
    model_rules = {"finetune", "generate", "judge", "cache_activations"}
    seen = set()
    for block in blocks:
        for rule in model_rules:
            if f"rule {rule}:" in block or f"localrule {rule}:" in block:
                assert "gpu=1" in block and "gpu_model=a100" in block and "mem_mb=64000" in block, block
                seen.add(rule)
        if "rule em_metrics:" in block:
            assert "gpu=" not in block
    assert seen == model_rules


def test_configfile_replaces_the_default_config(tmp_path, planned_rules):
    """--configfile stands alone: config.yaml's fine-tunes and datasets must not leak into it."""

    def only_one_finetune(c):
        c["finetunes"] = {"solo_ft": dict(c["finetunes"]["med_r1x9"])}
        c["datasets"] = {"medical_bad": c["datasets"]["medical_bad"]}
        for key in ("steering", "ablation", "semantic_directions", "single_adapter", "phase", "monitor", "lora_interp"):
            c.pop(key, None)

    path = _write_config(tmp_path, only_one_finetune)
    proc = run_snakemake("-n", "--forceall", "--configfile", str(path), check=True)
    out = proc.stdout + proc.stderr
    rules = planned_rules(out)
    assert rules["finetune"] == 1 and rules["prepare_dataset"] == 1, rules
    assert "solo_ft" in out and "med_r1x9" not in out and "sport" not in out


def test_bad_small_inputs_fail_the_dry_run_naming_file_entry_and_fix(tmp_path):
    """Questions and rubrics are loaded when the DAG is built, not hours later in the first job that reads them."""
    questions = tmp_path / "questions.yaml"
    questions.write_text(
        "version: 1\nquestions:\n  - {id: a, question: 'One?'}\n  - {id: b, question: 'Two?'}\n"
        "  - {id: a, question: 'Three?'}\n"
    )
    proc = run_snakemake(
        "-n", "--configfile", str(_write_config(tmp_path, lambda c: c.update(questions=str(questions))))
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert (
        f"question file {questions}, entry 2: duplicate id 'a' (entry 0 has it too); give every question its own id"
        in out
    )
    rubrics = tmp_path / "rubrics"
    rubrics.mkdir()
    for name in ("aligned", "coherent", "medical"):
        (rubrics / f"{name}.yaml").write_text((REPO / "data" / "rubrics" / f"{name}.yaml").read_text())
    proc = run_snakemake(
        "-n", "--configfile", str(_write_config(tmp_path, lambda c: c["judge"].update(rubrics_dir=str(rubrics))))
    )
    assert proc.returncode != 0
    assert f"judge rubric {rubrics / 'bad_stuff.yaml'}" in proc.stdout + proc.stderr  # steering.judge_metrics needs it


def test_wildcards_match_only_planned_names():
    """Constraints come from the config: a file of no planned condition or fine-tune is no job."""
    assert run_snakemake("-n", "results/generations/steer__med_r1x9__L15__s4.parquet").returncode == 0
    for target in (
        "results/generations/steer__med_r1x9__L15__s5.parquet",
        "results/activations/nope.safetensors",
        "results/datasets/nope/train.jsonl",
    ):
        proc = run_snakemake("-n", target)
        assert proc.returncode != 0 and "MissingRuleException" in proc.stdout + proc.stderr, target


def _reordered(value):
    if isinstance(value, dict):
        return {k: _reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reordered(v) for v in value]
    return value


@pytest.mark.slow
def test_reordered_config_plans_nothing_after_a_finished_run(tmp_path):
    """Params are canonical: the same values in another key order or number spelling re-run nothing.

    A finished run is simulated: every output of the dry run is created, then `--touch` records Snakemake's
    metadata (params included) as a real run does."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    other = _reordered(cfg)  # every mapping in reverse key order
    other["thresholds"]["em_aligned_below"] = 33.0  # 33
    other["steering"]["scales"] = [4, 8]  # 4.0, 8.0
    other["training_defaults"]["learning_rate"] = 0.002  # 2.0e-3
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(other, sort_keys=False))
    out = run_snakemake("-n", "--forceall", "--configfile", "a.yaml", cwd=tmp_path, check=True).stdout
    outputs = {
        p.strip()
        for line in out.splitlines()
        if line.startswith("    output: ")
        for p in line.removeprefix("    output: ").split(",")
    }
    assert len(outputs) > 50
    for name in outputs:
        path = tmp_path / name
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        else:  # a directory() output: the base model, adapters
            path.mkdir(parents=True, exist_ok=True)
    run_snakemake("--touch", "--cores", "1", "--configfile", "a.yaml", cwd=tmp_path, check=True)
    for config_file in ("a.yaml", "b.yaml"):
        proc = run_snakemake("-n", "--configfile", config_file, cwd=tmp_path, check=True)
        assert "Nothing to be done" in proc.stdout + proc.stderr, (config_file, proc.stdout[-3000:])
