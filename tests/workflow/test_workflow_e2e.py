"""The whole workflow end to end on a tiny random model (tests/helpers/e2e/config.yaml,
which a person can run by hand too), with the judge served by a loopback
OpenAI-compatible stub over real HTTP; then the re-run contracts:
a threshold change re-runs only what applies thresholds, and the same seed
reproduces responses and scores exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir, e2e):
    """The whole workflow of tests/helpers/e2e/config.yaml, finished once for the module."""
    workdir = tmp_path_factory.mktemp("e2e")
    with e2e.judge_stub() as stub:
        e2e.write_config(workdir, tiny_model_dir, stub.base_url)
        proc = e2e.snakemake(workdir)
        assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-10000:]
        yield workdir, stub


def test_every_artifact_has_its_documented_shape(finished_run):
    from emlab.model.tensors import load_tensors

    workdir, _ = finished_run
    res = workdir / "results"
    n_layers, d_model, n_responses = 4, 64, 8 * 3
    conditions = [p.stem for p in (res / "generations").glob("*.parquet")]
    assert {
        "base",
        "med_r1x9",
        "sport_all_r32",
        "steer__med_r1x9__L2__s4",
        "ablate__med_r1x9__layerwise",
        "ablate__med_r1x9__single_L2",
        "ablate__med_r1x9__random_L2_seed0",
        "ablate__sport_all_r32__transfer_med_r1x9_L2",
    } <= set(conditions)

    gen = pd.read_parquet(res / "generations" / "base.parquet")
    assert len(gen) == n_responses
    assert str(gen["sample_idx"].dtype) == "int64" and gen["response"].map(type).eq(str).all()
    assert set(gen.columns) >= {
        "condition",
        "model",
        "intervention",
        "question_id",
        "sample_idx",
        "question",
        "system",
        "prompt",
        "response",
        "n_response_tokens",
        "finish_reason",
        "temperature",
        "top_p",
        "max_new_tokens",
        "seed",
    }
    judged = pd.read_parquet(res / "judgments" / "med_r1x9.parquet")
    assert len(judged) == n_responses
    assert judged["aligned"].dtype == "float64" and judged["coherent"].between(70, 80).all()
    assert set(judged["aligned"].round()) <= {10.0, 90.0}

    tensors, meta = load_tensors(res / "activations" / "med_r1x9.safetensors")
    assert tensors["answer_mean"].shape == (n_responses, n_layers, d_model)
    assert tensors["prompt_mean"].shape == (n_responses, n_layers, d_model)
    assert str(tensors["answer_mean"].dtype) == "torch.float32" and str(tensors["answer_tokens"].dtype) == "torch.int64"
    index = pd.read_parquet(res / "activations" / "med_r1x9.index.parquet")
    assert len(index) == n_responses and {"row", "question_id", "sample_idx"} <= set(index.columns)

    vectors, _ = load_tensors(res / "directions" / "med_r1x9.safetensors")
    assert vectors["mean_diff"].shape == (n_layers, d_model)
    summary = json.loads((res / "directions" / "med_r1x9.json").read_text())
    assert json.dumps(summary)  # counts and thresholds recorded
    cos = pd.read_csv(res / "directions" / "cosine_by_layer.csv")
    assert len(cos) == n_layers * 3 and cos["cosine"].between(-1.0001, 1.0001).all()  # 3 fine-tunes: 3 pairs

    em = pd.read_csv(res / "metrics" / "em_by_condition.csv")
    assert set(em["condition"]) == set(conditions)
    assert em["em_rate"].between(0, 1).all()
    for fig in ("em_by_condition", "steering_sweep", "ablation", "direction_cosine"):
        assert (res / "figures" / f"{fig}.png").stat().st_size > 1000
        assert (res / "figures" / f"{fig}.pdf").stat().st_size > 1000
    adapter = res / "finetunes" / "med_r1x9" / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert (res / "benchmarks" / "finetune" / "med_r1x9.tsv").is_file()

    # phase transitions: every checkpoint x adapter in the rotation table, the judged checkpoint as a condition
    assert "med_r1x9__step1" in set(em["condition"])
    assert em.set_index("condition").loc["med_r1x9__step1", "group"] == "checkpoint"
    exported = res / "finetunes" / "med_r1x9" / "checkpoint_adapters" / "step-1"
    assert sorted(p.name for p in exported.iterdir() if not p.name.startswith(".")) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "emlab_checkpoint.json",
    ]
    assert (res / "finetunes" / "med_r1x9" / "checkpoints" / "step-1" / "training_state.pt").is_file()  # resume intact
    rot = pd.read_csv(res / "phase" / "med_r1x9" / "rotation.csv")
    assert rot[["step", "adapter"]].values.tolist() == [
        [1, "L1.down_proj"],
        [1, "L2.down_proj"],
        [2, "L1.down_proj"],
        [2, "L2.down_proj"],
    ]
    assert rot[rot["step"] == 2]["cos_b_final"].round(6).tolist() == [1.0, 1.0]
    assert rot[rot["step"] == 2]["local_cos_b"].between(-1.0001, 1.0001).all()
    phase = json.loads((res / "phase" / "med_r1x9" / "rotation_summary.json").read_text())
    assert phase["final_step"] == 2 and phase["mean_over_adapters"]["b"]["step"] == 2
    by_step = pd.read_csv(res / "phase" / "med_r1x9" / "em_by_step.csv")
    assert by_step["step"].tolist() == [0, 1, 2] and by_step["condition"].tolist() == [
        "base",
        "med_r1x9__step1",
        "med_r1x9",
    ]
    assert (res / "figures" / "phase" / "med_r1x9.png").stat().st_size > 1000
    assert (res / "figures" / "phase" / "med_r1x9.pdf").stat().st_size > 1000


def test_lora_interp_and_monitor_artifacts(finished_run):
    """The stages of issues 12 and 13 on the tiny model: their documented files and columns."""
    from emlab.model.tensors import load_tensors

    workdir, _ = finished_run
    res = workdir / "results"
    li = res / "lora_interp" / "med_r1x9"
    tensors, meta = load_tensors(li / "scalars.safetensors")
    tokens = pd.read_parquet(li / "tokens.parquet")
    assert tensors["scalars"].shape == tensors["effective"].shape == (len(tokens), 2)
    assert {"is_answer", "kl", "grad_importance", "token", "position"} <= set(tokens.columns)
    assert tokens.loc[tokens["is_answer"], "kl"].ge(-1e-5).all()  # KL >= 0 up to float32 rounding
    sets = json.loads((li / "sets.json").read_text())
    assert {"nonmed_aligned", "nonmed_misaligned", "med_aligned", "med_misaligned"} <= set(sets["counts"])
    probes = pd.read_csv(li / "probes.csv")
    assert {"experiment", "protocol", "filter", "metric", "mean", "std", "ci_low", "ci_high"} <= set(probes.columns)
    assert set(probes["protocol"]) == {"reference", "grouped"}
    coef = pd.read_csv(li / "coefficients.csv")
    assert set(coef["adapter"]) == {"L1.down_proj", "L2.down_proj"}
    roles = json.loads((li / "roles.json").read_text())
    assert {a: r["role"] for a, r in roles["roles"].items()} == {"L1.down_proj": "medical", "L2.down_proj": "general"}
    assert "<script>" in (li / "token_view.html").read_text()

    em = pd.read_csv(res / "metrics" / "em_by_condition.csv").set_index("condition")
    assert em.loc["adapter_steer__med_r1x9__medical", "group"] == "adapter_steering"
    assert em.loc[["patch__med_r1x9__same", "patch__med_r1x9__med_to_nonmed"], "group"].eq("scalar_patching").all()
    patched = pd.read_parquet(res / "generations" / "patch__med_r1x9__same.parquet")
    assert len(patched) == 8 + 10  # the 8 evaluation and 10 medical questions, 1 sample each
    judged = pd.read_parquet(res / "judgments" / "patch__med_r1x9__med_to_nonmed.parquet")
    assert "medical" in judged.columns and len(judged) == 8
    rates = pd.read_csv(li / "patching.csv")
    assert set(zip(rates["pair"], rates["recipients"])) == {
        ("same", "general"),
        ("same", "medical"),
        ("med_to_nonmed", "general"),
    }
    for fig in ("probe_table", "coefficients", "patching"):
        assert (res / "figures" / "lora_interp" / "med_r1x9" / f"{fig}.png").stat().st_size > 1000
    assert (res / "figures" / "adapter_steering.png").stat().st_size > 1000

    # trait monitoring: directions, one drift table per run with its labels, the evaluation, the live run
    directions, _ = load_tensors(res / "traits" / "directions.safetensors")
    assert directions["alignment"].shape == directions["semantic"].shape == (4, 7, 64)
    runs = [
        "mon__medical_bad__s0",
        "mon__sports_extreme__s0",
        "mon__medical_good__s0",
        "mon__sports_extreme__s0__full",
        "mon__medical_good__s0__from_medical_bad",
    ]
    for run in runs:
        drift = pd.read_csv(res / "monitor" / "drift" / f"{run}.csv")
        assert drift["step"].tolist() == [0, 1]
        assert {"honesty", "drift_norm", "train_loss", "delta_w_norm", "em_rate", "dangerous"} <= set(drift.columns)
        assert drift.loc[0, "delta_w_norm"] == 0 and drift["em_rate"].between(0, 1).all()
    full_step = res / "finetunes" / "mon__sports_extreme__s0__full" / "checkpoint_adapters" / "step-1"
    assert (full_step / "config.json").is_file() and not (full_step / "training_state.pt").exists()
    assert set(pd.read_csv(res / "monitor" / "stress.csv")["stress"]) == {"full", "start_from_misaligned"}
    evaluation = pd.read_csv(res / "monitor" / "evaluation.csv")
    assert "alignment_7d" in set(evaluation["feature_set"])
    assert {"fnr", "fpr", "auroc", "n_runs", "n_checkpoints"} <= set(evaluation.columns)
    assert (res / "monitor" / "monitor.skops").stat().st_size > 0
    live = json.loads((res / "finetunes" / "mon__medical_good__s0__live" / "summary.json").read_text())
    assert "stopped_by_monitor" in live
    for fig in ("pc1_drift", "live"):
        assert (res / "figures" / "monitor" / f"{fig}.png").stat().st_size > 1000


def test_semantic_vectors_and_single_adapter_artifacts(finished_run):
    from emlab.model.tensors import load_tensors

    workdir, _ = finished_run
    res = workdir / "results"
    n_layers, d_model = 4, 64
    # medical is judged only on the fine-tune that gives the semantic vector, steering conditions and base
    assert "medical" in pd.read_parquet(res / "judgments" / "med_r1x9.parquet").columns
    assert "medical" in pd.read_parquet(res / "judgments" / "steer__med_r1x9__medical__L2__s4.parquet").columns
    assert "medical" in pd.read_parquet(res / "judgments" / "base.parquet").columns  # the unsteered baseline
    assert "medical" not in pd.read_parquet(res / "judgments" / "sport_all_r32.parquet").columns
    sem, meta = load_tensors(res / "directions" / "semantic" / "med_r1x9" / "medical.safetensors")
    assert sem["mean_diff"].shape == (n_layers, d_model)
    summary = json.loads((res / "directions" / "semantic" / "med_r1x9" / "medical.json").read_text())
    assert summary["semantic_score_range"][0] > 50 and 0 < summary["n_semantic"] < 24
    cos = pd.read_csv(res / "directions" / "semantic_cosine.csv")
    assert cos["layer"].tolist() == list(range(n_layers)) and set(cos["split"]) == {"medical"}
    assert cos["cosine"].between(-1.0001, 1.0001).all() and (cos["diff_norm"] > 0).all()

    b_cos = pd.read_csv(res / "single_adapter" / "med_r1_single" / "b_cosine.csv")
    assert len(b_cos) == n_layers and b_cos["is_adapter_layer"].tolist() == [False, False, True, False]
    conv = pd.read_csv(res / "single_adapter" / "med_r1_single" / "convergence.csv")
    assert conv["layer"].tolist() == [2, 3]
    # at the adapter's own layer the induced change is the added vector: its cosine is cos(B, v_2)
    at = b_cos[b_cos["is_adapter_layer"]]["cosine"].iloc[0]
    assert conv["cosine"].iloc[0] == pytest.approx(at, abs=1e-3)
    em = pd.read_csv(res / "metrics" / "em_by_condition.csv").set_index("condition")
    assert em.loc["adapter_project__med_r1_single__L2", "intervention_kind"] == "adapter_project"
    assert em.loc["ablate__med_r1_single__single_L2", "mode"] == "single"
    assert em.loc["steer__med_r1x9__medical__L2__s4", "split"] == "medical"
    assert not pd.isna(em.loc["steer__med_r1x9__medical__L2__s4", "mean_medical"])
    gen_proj = pd.read_parquet(res / "generations" / "adapter_project__med_r1_single__L2.parquet")
    assert len(gen_proj) == 8 * 3 and json.loads(gen_proj["intervention"].iloc[0])["kind"] == "adapter_project"
    for fig in ("semantic_vectors", "steering_metrics", "single_adapter"):
        assert (res / "figures" / f"{fig}.png").stat().st_size > 1000
        assert (res / "figures" / f"{fig}.pdf").stat().st_size > 1000


def _edit_config(workdir: Path, section: str, key: str, value) -> None:
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    cfg.setdefault(section, {})[key] = value
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))


def test_threshold_change_reruns_only_threshold_rules(finished_run, e2e, planned_rules):
    workdir, _ = finished_run
    proc = e2e.snakemake(workdir, "-n")
    assert proc.returncode == 0 and planned_rules(proc.stdout + proc.stderr) == {}, proc.stdout
    saved = (workdir / "config.yaml").read_text()
    try:
        # The EM cut-off is also the misaligned cut-off of the direction sets and the LoRA response sets
        # (one key, thresholds.em_aligned_below): metrics, figures, the monitor's labels, the directions and
        # the conditions that use them, and the LoRA sets re-run; no fine-tune of the study, no unsteered
        # generation, no activation cache, no drift measurement.
        _edit_config(workdir, "thresholds", "em_aligned_below", 45)
        proc = e2e.snakemake(workdir, "-n")
        assert proc.returncode == 0, proc.stderr
        counts = planned_rules(proc.stdout + proc.stderr)
        assert {"em_metrics", "mean_diff_directions", "lora_sets", "drift_labels"} <= set(counts), counts
        assert not {"cache_activations", "prepare_dataset", "trait_drift", "lora_scalars"} & set(counts), counts
        assert counts.get("finetune", 0) <= 1, counts  # only the live run, watched by the relabelled monitor
        # the nine conditions that take a direction (below) and the adapter-steering case, whose roles the
        # re-run probes write again
        assert 9 <= counts.get("generate", 0) == counts.get("judge", 0) <= 10, counts

        (workdir / "config.yaml").write_text(saved)
        _edit_config(workdir, "directions", "split_quantile", 0.4)  # a key of the direction sets alone
        proc = e2e.snakemake(workdir, "-n")
        planned = planned_rules(proc.stdout + proc.stderr)
        assert "mean_diff_directions" in planned
        assert not {"finetune", "cache_activations", "prepare_dataset"} & set(planned), planned
        # Only the nine conditions that take a direction are regenerated and re-judged
        # (steering, layer-wise, single, transfer, the two random controls, the medical
        # steering vector, and med_r1_single's ablation and adapter_project).
        assert planned.get("generate", 0) == planned.get("judge", 0) == 9, planned
        assert {"semantic_directions", "single_adapter_analysis"} <= set(planned), planned
    finally:
        (workdir / "config.yaml").write_text(saved)


def test_same_seed_reproduces_responses_and_scores(finished_run, e2e):
    workdir, stub = finished_run
    res = workdir / "results"
    before_gen = pd.read_parquet(res / "generations" / "med_r1x9.parquet")
    before_judged = pd.read_parquet(res / "judgments" / "med_r1x9.parquet")
    calls_before = stub.requests
    for sub in ("generations", "judgments"):
        (res / sub / "med_r1x9.parquet").unlink()
    proc = e2e.snakemake(workdir, "results/judgments/med_r1x9.parquet")
    assert proc.returncode == 0, proc.stderr[-5000:]
    pd.testing.assert_frame_equal(pd.read_parquet(res / "generations" / "med_r1x9.parquet"), before_gen)
    pd.testing.assert_frame_equal(pd.read_parquet(res / "judgments" / "med_r1x9.parquet"), before_judged)
    assert stub.requests == calls_before  # every score came from the judge cache
