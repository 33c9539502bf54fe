"""A study across two base models of different families, end to end: a tiny random Llama (4 layers,
64 wide) and a tiny random Qwen2 (6 layers, 96 wide), one config (`base_models`), the loopback judge.

Checks that every model's files are under its own root, that layers given as a depth fraction resolve
per model, that the cross-model tables and the pooled monitor read both models, and that adding a third
model re-runs nothing already computed for the first two. Bad model references fail at DAG build."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.slow


def two_model_config(e2e, llama: Path, qwen: Path, base_url: str) -> dict:
    """The e2e config cut to a small study, on two models: med_r1x9 (checkpointed, steered at depth 0.5) on
    both, sport_all_r32 on the Llama only, and a monitor grid of 2 calibration + 1 held-out perturbation per
    model, pooled."""
    cfg = e2e.config(llama, base_url)
    del cfg["base_model"]
    cfg["base_models"] = {
        "llama": {"source": str(llama), "family": "llama", "size_b": 0.0001},
        "qwen": {"source": str(qwen), "family": "qwen", "size_b": 0.0002},
    }
    fts = cfg["finetunes"]
    cfg["finetunes"] = {
        "med_r1x9": dict(fts["med_r1x9"], models="all"),
        "sport_all_r32": dict(fts["sport_all_r32"], models=["llama"]),
    }
    cfg["steering"] = {"vectors": ["med_r1x9"], "layers": [0.5], "scales": [4.0], "splits": ["general"]}
    cfg["semantic_directions"] = {"finetunes": [], "splits": []}
    cfg["single_adapter"] = {"finetunes": []}
    cfg["ablation"] = {"targets": [], "transfer": [], "random_seeds": []}
    cfg["lora_interp"] = {"finetunes": []}
    cfg["monitor"] = dict(
        cfg["monitor"],
        calibration=["medical_bad", "sports_extreme"],
        held_out=["medical_good"],
        stress={"longer": [], "full": [], "start_from_misaligned": []},
        live=None,
    )
    return cfg


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, tiny_model_dir, tiny_qwen_model_dir, e2e):
    workdir = tmp_path_factory.mktemp("two_models")
    with e2e.judge_stub() as stub:
        cfg = two_model_config(e2e, tiny_model_dir, tiny_qwen_model_dir, stub.base_url)
        (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
        proc = e2e.snakemake(workdir)
        assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-10000:]
        yield workdir, cfg, stub


def test_each_model_has_its_own_files(two_models):
    workdir, _, _ = two_models
    res = workdir / "results"
    assert not (res / "finetunes").exists() and not (res / "generations").exists()  # nothing unkeyed
    for key, n_layers, width in (("llama", 4, 64), ("qwen", 6, 96)):
        root = res / "models" / key
        assert (root / "finetunes" / "med_r1x9" / "adapter" / "adapter_config.json").is_file()
        # steering.layers 0.5 resolves per model: block 2 of 4, block 3 of 6
        steer = f"steer__med_r1x9__L{n_layers // 2}__s4"
        assert (root / "judgments" / f"{steer}.parquet").is_file(), sorted(
            p.name for p in (root / "judgments").iterdir()
        )
        em = pd.read_csv(root / "metrics" / "em_by_condition.csv")
        assert {"base", "med_r1x9", steer} <= set(em["condition"])
        # each per-model table the cross-model tables read names its model (matched by it, not by folder)
        assert set(em["base_model"]) == {key}
        assert json.loads((root / "phase" / "med_r1x9" / "rotation_summary.json").read_text())["base_model"] == key
        assert set(pd.read_csv(root / "phase" / "med_r1x9" / "em_by_step.csv")["base_model"]) == {key}
        meta = json.loads((root / "traits" / "directions.json").read_text())
        assert meta["model_key"] == key
        from emlab.model.tensors import load_tensors

        tensors, _ = load_tensors(root / "directions" / "med_r1x9.safetensors")
        assert next(iter(tensors.values())).shape[-1] == width
        for table in (root / "monitor" / "drift").glob("*.csv"):
            if not table.name.endswith(".features.csv"):
                assert set(pd.read_csv(table)["model"]) == {key}, table
    assert (res / "models" / "llama" / "finetunes" / "sport_all_r32" / "adapter").is_dir()
    assert not (res / "models" / "qwen" / "finetunes" / "sport_all_r32").exists()


def test_cross_model_tables_and_pooled_monitor(two_models):
    workdir, _, _ = two_models
    res = workdir / "results"
    em = pd.read_csv(res / "cross_model" / "em_by_model.csv")
    pairs = set(zip(em["recipe"], em["model"]))
    assert {("med_r1x9", "llama"), ("med_r1x9", "qwen"), ("sport_all_r32", "llama")} <= pairs
    assert ("sport_all_r32", "qwen") not in pairs
    assert set(em.loc[em["model"] == "qwen", "family"]) == {"qwen"}
    phase = pd.read_csv(res / "cross_model" / "phase_steps.csv")
    assert set(zip(phase["recipe"], phase["model"])) == {("med_r1x9", "llama"), ("med_r1x9", "qwen")}
    assert (res / "figures" / "cross_model" / "em_by_size.png").stat().st_size > 0
    # the monitor: fitted on both models' calibration runs, LOPO per (model, perturbation)
    pc1 = json.loads((res / "monitor" / "pc1.json").read_text())
    assert sorted(pc1["models"]) == ["llama", "qwen"]
    lopo = pd.read_csv(res / "monitor" / "lopo.csv")
    if len(lopo):
        assert set(lopo["model"]) <= {"llama", "qwen"}
    by_model = pd.read_csv(res / "monitor" / "evaluation_by_model.csv")
    assert {"pooled", "single:llama", "single:qwen"} <= set(by_model["monitor"])
    predictions = pd.read_csv(res / "monitor" / "predictions.csv")
    runs = set(predictions["run"])
    assert any(r.startswith("mon__llama__") for r in runs) and any(r.startswith("mon__qwen__") for r in runs)


def _planned_outputs(text: str) -> list[str]:
    """The output files of every job a dry run plans."""
    out = []
    for line in text.splitlines():
        m = re.match(r"\s*output: (.*)", line)
        if m:
            out += [p.strip() for p in m.group(1).split(",")]
    return out


def test_adding_a_model_reruns_nothing_of_the_others(two_models, e2e, tiny_model_dir):
    workdir, cfg, stub = two_models
    saved = (workdir / "config.yaml").read_text()
    try:
        more = copy.deepcopy(cfg)
        # a third model (the Llama again, under another key) as the monitor's stress arm
        more["base_models"]["llama_b"] = {"source": str(tiny_model_dir), "family": "llama", "size_b": 0.0001}
        more["monitor"]["models"] = ["llama", "qwen"]
        more["monitor"]["stress_models"] = ["llama_b"]
        (workdir / "config.yaml").write_text(yaml.safe_dump(more))
        proc = e2e.snakemake(workdir, "-n")
        assert proc.returncode == 0, proc.stderr[-5000:]
        outputs = _planned_outputs(proc.stdout + proc.stderr)
        assert any(o.startswith("results/models/llama_b/") for o in outputs)
        touched = [o for o in outputs if o.startswith(("results/models/llama/", "results/models/qwen/"))]
        assert not touched, touched
        # what reads every model is all that may re-run beside the new model's own jobs
        others = {o for o in outputs if not o.startswith("results/models/llama_b/")}
        assert all(o.startswith(("results/monitor/", "results/cross_model/", "results/figures/")) for o in others), (
            others
        )
    finally:
        (workdir / "config.yaml").write_text(saved)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["finetunes"]["med_r1x9"].update(models=["gemma"]), "finetunes.med_r1x9.models names ['gemma']"),
        (lambda c: c["finetunes"]["sport_all_r32"].pop("models"), "finetunes.sport_all_r32 names no model"),
        (lambda c: c["steering"].update(layers=[5]), "while planning base_models.llama"),
        (lambda c: c["monitor"].update(stress_models=["mistral"]), "monitor.stress_models names ['mistral']"),
        (
            lambda c: (
                c["ablation"].update(targets=[], transfer=[{"vector": "med_r1x9", "target": "sport_all_r32"}])
                or c["finetunes"]["med_r1x9"].update(models=["qwen"])
            ),
            "share no base model",
        ),
    ],
    ids=["unknown_model", "no_model", "layer_beyond_one_model", "unknown_stress_model", "mixed_models"],
)
def test_bad_model_references_fail_at_dag_build(tmp_path, e2e, tiny_model_dir, tiny_qwen_model_dir, edit, message):
    cfg = two_model_config(e2e, tiny_model_dir, tiny_qwen_model_dir, "http://127.0.0.1:9/v1")
    edit(cfg)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = e2e.snakemake(tmp_path, "-n", timeout=300)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]
    assert not (tmp_path / "results").exists()
