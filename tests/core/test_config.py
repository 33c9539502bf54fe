"""Config validation, defaults, layer resolution and the plan of conditions."""

import copy
from pathlib import Path

import pytest
import yaml
from emlab.core.config import (
    load_config,
    lora_layers,
    resolve_layer,
    scale_layer_blocks,
    training_settings,
    validate_config,
)
from emlab.core.errors import EMLabError
from emlab.plan.study import conditions, direction_finetunes

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def default_config():
    return yaml.safe_load((REPO_ROOT / "config.yaml").read_text())


def test_default_config_is_valid_and_filled(default_config):
    cfg = validate_config(default_config)
    assert cfg["judge"]["min_number_mass"] == 0.25
    assert cfg["generation"]["temperature"] == 1.0
    assert cfg["finetunes"]["med_r1x9"]["lora"]["rslora"] is True


def test_paper_config_is_valid():
    from emlab.plan.models import base_models, check_models, model_view, monitor_models, monitor_role
    from emlab.plan.monitor import live_run, monitor_runs

    paper = load_config(REPO_ROOT / "data" / "configs" / "paper.yaml")
    models = check_models(paper)
    assert all(m.num_layers for m in models.values())  # planning needs no hub access
    assert base_models(paper)["qwen14"].num_layers == 48
    cfg = model_view(paper, "qwen14")  # the organism model of the single-model analyses
    assert cfg["base_model"]["num_layers"] == 48 and cfg["steering"]["vectors"] == ["med_r1x9"]
    assert lora_layers(cfg["finetunes"]["med_r1x9"]["lora"], 48) == [15, 16, 17, 21, 22, 23, 27, 28, 29]
    small = model_view(paper, "qwen0_5")  # a grid model: the recipes only, no single-model analysis
    assert sorted(small["finetunes"]) == ["med_all_r32", "med_full", "med_r1x9"]  # analysis_models: qwen14
    assert small["steering"]["vectors"] == small["ablation"]["targets"] == small["lora_interp"]["finetunes"] == []

    assert monitor_models(paper) == ["llama8", "mistral7", "qwen7", "gemma9"]
    assert monitor_role(paper, "qwen14") == "stress" and monitor_role(paper, "qwen0_5") is None
    # each fitted model: 4 calibration + 3 held-out perturbations x 3 seeds, and 3 stress runs
    runs = monitor_runs(model_view(paper, "llama8"), "llama8")
    assert len(runs) == 7 * 3 + 3
    assert runs["mon__llama8__gsm8k__s0__from_medical_bad"].start == "mon__llama8__medical_bad__s0"
    first = runs["mon__llama8__medical_bad__s0"]
    assert runs["mon__llama8__medical_bad__s0__full"].full and first.checkpoint_steps[:2] == (10, 20)
    assert first.checkpoint_steps[-1] == first.total_steps == 120
    assert live_run(model_view(paper, "llama8"), "llama8")[0] == "mon__llama8__risky_financial__s0__live"
    stress = monitor_runs(model_view(paper, "qwen14"), "qwen14", stress_arm=True)  # scored, never fitted on
    assert len(stress) == 7 * 3 and {r.role for r in stress.values()} == {"stress_model"}


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: c["judge"].update(modle="x"), "'modle' was unexpected"),
        (lambda c: c.update(tresholds={}), "'tresholds' was unexpected"),
        (lambda c: c["generation"].update(samples_per_question="4"), "generation.samples_per_question"),
        (lambda c: c["finetunes"]["med_r1x9"].update(dataset="nope"), "finetunes.med_r1x9.dataset"),
        (lambda c: c["steering"].update(vectors=["nope"]), "steering.vectors"),
        (lambda c: c["judge"].update(metrics=["aligned"]), "aligned and coherent"),
        (lambda c: c["finetunes"].update({"Bad-Name": c["finetunes"]["med_r1x9"]}), "Bad-Name"),
        (lambda c: c["datasets"]["medical_bad"].update(expect="evil"), "datasets.medical_bad.expect"),
        (  # a benign control has no direction to steer with
            lambda c: (
                c["datasets"]["medical_bad"].update(expect="benign"),
                c["steering"].update(vectors=["med_r1x9"]),
            ),
            "steering.vectors names 'med_r1x9', a fine-tune on a benign dataset (datasets.medical_bad.expect",
        ),
    ],
)
def test_config_errors_name_the_key(default_config, mutate, expected):
    cfg = copy.deepcopy(default_config)
    mutate(cfg)
    with pytest.raises(EMLabError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        validate_config(cfg)


def test_training_overrides_only_given_keys(default_config):
    cfg = validate_config(default_config)
    sport = training_settings(cfg, "sport_all_r32")
    med = training_settings(cfg, "med_r1x9")
    assert sport["learning_rate"] != med["learning_rate"]
    assert sport["per_device_batch_size"] == cfg["training_defaults"]["per_device_batch_size"]


def test_layer_blocks_keep_their_width_when_scaled():
    layers = [15, 16, 17, 21, 22, 23, 27, 28, 29]
    assert scale_layer_blocks(layers, 48, 48) == layers
    assert scale_layer_blocks(layers, 48, 30) == [9, 10, 11, 13, 14, 15, 17, 18, 19]
    scaled = scale_layer_blocks(layers, 48, 24)
    assert len(set(scaled)) == 9 and max(scaled) < 24
    assert scale_layer_blocks([24], 48, 30) == [15]


def test_layer_out_of_range_is_a_clear_error():
    with pytest.raises(EMLabError, match="out of range"):
        resolve_layer(30, 30, "steering.layers")
    with pytest.raises(EMLabError, match="out of range"):
        lora_layers({"layers": [3, 40], "layers_reference_depth": None}, 30)
    assert resolve_layer(0.5, 48) == 24


def test_plan_has_every_condition_kind(default_config):
    cfg = validate_config(default_config)
    plan = conditions(cfg, 30)
    kinds = {(s["group"], s["intervention"]["kind"], s["intervention"].get("mode")) for s in plan.values()}
    assert ("model", "none", None) in kinds
    assert ("steering", "steer", None) in kinds
    assert ("ablation", "ablate", "layerwise") in kinds
    assert ("ablation", "ablate", "single") in kinds
    assert ("ablation", "ablate", "random") in kinds
    assert ("transfer", "ablate", "single") in kinds
    assert set(direction_finetunes(cfg)) == set(cfg["finetunes"])
    for cid in plan:
        assert cid.replace("_", "").replace("-", "").replace(".", "").isalnum()


def test_defaults_come_from_the_schema_once_and_are_copies():
    from emlab.core.config import load_schema

    layers_schema = load_schema()["properties"]["steering"]["properties"]["layers"]
    a, b = validate_config({}), validate_config({})
    assert a["steering"]["layers"] == layers_schema["default"] == [0.5]
    a["steering"]["layers"].append(0.9)  # a filled default is a copy, never the schema's own list
    assert b["steering"]["layers"] == [0.5] and layers_schema["default"] == [0.5]
    # $ref'd sections are filled too (training_defaults), nested sections get their own defaults
    assert a["training_defaults"]["learning_rate"] == 2.0e-5 and a["judge"]["hf"]["batch_size"] == 16


def test_settings_dataclasses_match_their_schema_sections():
    """Each library settings class is built from its validated config section, with no key missing or extra."""
    from emlab.core.settings import build
    from emlab.em.directions import DirectionSettings, SemanticDirectionSettings
    from emlab.em.metrics import EMThresholds

    cfg = validate_config({})
    assert build(DirectionSettings, cfg["directions"]).aligned_above == 70.0
    assert build(EMThresholds, cfg["thresholds"]).bootstrap_samples == 1000
    sem = cfg["semantic_directions"]
    assert build(SemanticDirectionSettings, {"above": sem["above"], "top_quantile": sem["top_quantile"]}).above == 50.0


def test_schema_is_package_data():
    from importlib import resources

    assert resources.files("emlab.core").joinpath("schemas/config.schema.yaml").is_file()


def test_each_judge_score_cut_off_lives_in_thresholds_and_the_sets_refer_to_it():
    """One cut-off, one key: the direction sets and the LoRA response sets take thresholds' values; a
    section that sets its own different value is an error naming both keys; an equal value (a config
    validated once and written back) is accepted, so validation is idempotent."""
    paper = load_config(REPO_ROOT / "data" / "configs" / "paper.yaml")
    th = paper["thresholds"]
    for section in (paper["directions"], paper["lora_interp"]["sets"]):
        assert (section["aligned_above"], section["misaligned_below"], section["coherent_above"]) == (
            th["aligned_above"],
            th["em_aligned_below"],
            th["em_coherent_above"],
        )
    assert th["self_correction_aligned_above"] == th["aligned_above"]
    raw = yaml.safe_load((REPO_ROOT / "data" / "configs" / "paper.yaml").read_text())
    moved = copy.deepcopy(raw)
    moved["thresholds"]["em_coherent_above"] = 40
    again = validate_config(moved)
    assert again["directions"]["coherent_above"] == again["lora_interp"]["sets"]["coherent_above"] == 40
    assert validate_config(again) == again
    clash = copy.deepcopy(raw)
    clash["directions"]["coherent_above"] = 35
    with pytest.raises(EMLabError, match=r"directions.coherent_above is 35 but thresholds.em_coherent_above is 50"):
        validate_config(clash)
    clash = copy.deepcopy(raw)
    clash["lora_interp"]["sets"]["aligned_above"] = 60
    with pytest.raises(EMLabError, match=r"lora_interp.sets.aligned_above .* thresholds.aligned_above"):
        validate_config(clash)
