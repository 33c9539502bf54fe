"""The study plan's semantic-steering, single-adapter and adapter_project
conditions, the per-condition judge metrics, and their config errors."""

from __future__ import annotations

import pytest
from emlab.core.config import validate_config
from emlab.core.errors import EMLabError
from emlab.plan.study import condition_metrics, conditions, semantic_vectors, single_adapter_layer

N_LAYERS = 30


def study(**over):
    cfg = {
        "datasets": {"med": {"path": "x.jsonl"}},
        "finetunes": {
            "med_r1x9": {
                "dataset": "med",
                "lora": {"rank": 1, "layers": [15, 16, 17, 21, 22, 23, 27, 28, 29], "layers_reference_depth": 48},
            },
            "med_r1_l24": {
                "dataset": "med",
                "lora": {
                    "rank": 1,
                    "alpha": 256,
                    "target_modules": ["down_proj"],
                    "layers": [24],
                    "layers_reference_depth": 48,
                },
            },
        },
        "judge": {"metrics": ["aligned", "coherent"]},
        "steering": {
            "vectors": ["med_r1x9"],
            "layers": [0.5],
            "scales": [4.0],
            "splits": ["general", "medical"],
            "judge_metrics": ["bad_stuff"],
        },
        "semantic_directions": {"finetunes": ["med_r1x9"], "splits": ["medical"]},
        "single_adapter": {"finetunes": ["med_r1_l24"]},
    }
    cfg.update(over)
    return validate_config(cfg)


def test_semantic_steering_and_single_adapter_conditions():
    cfg = study()
    plan = conditions(cfg, N_LAYERS)
    assert plan["steer__med_r1x9__L15__s4"]["intervention"] == {
        "kind": "steer",
        "vector": "med_r1x9",
        "layer": 15,
        "scale": 4.0,
    }
    assert plan["steer__med_r1x9__medical__L15__s4"]["intervention"]["split"] == "medical"
    layer = single_adapter_layer(cfg, "med_r1_l24", N_LAYERS)
    assert layer == 15  # 24 of 48 -> 15 of 30
    assert plan[f"ablate__med_r1_l24__single_L{layer}"] == {
        "model": "med_r1_l24",
        "group": "ablation",
        "intervention": {"kind": "ablate", "vector": "med_r1_l24", "mode": "single", "layer": layer},
    }
    assert plan[f"adapter_project__med_r1_l24__L{layer}"]["intervention"] == {
        "kind": "adapter_project",
        "vector": "med_r1_l24",
        "layer": layer,
    }
    assert semantic_vectors(cfg) == [("med_r1x9", "medical")]


def test_extra_judge_metrics_only_where_used():
    cfg = study()
    plan = conditions(cfg, N_LAYERS)
    assert condition_metrics(cfg, plan["base"]) == ["aligned", "coherent", "bad_stuff", "medical"]
    no_steer = study(steering={"vectors": []})
    assert condition_metrics(no_steer, conditions(no_steer, N_LAYERS)["base"]) == ["aligned", "coherent"]
    assert condition_metrics(cfg, plan["med_r1_l24"]) == ["aligned", "coherent"]
    assert condition_metrics(cfg, plan["med_r1x9"]) == ["aligned", "coherent", "medical"]
    for cid, spec in plan.items():
        if spec["group"] == "steering":
            assert condition_metrics(cfg, spec) == ["aligned", "coherent", "bad_stuff", "medical"], cid
    # a metric already in judge.metrics is not repeated
    cfg2 = study(judge={"metrics": ["aligned", "coherent", "medical"]})
    assert condition_metrics(cfg2, conditions(cfg2, N_LAYERS)["med_r1x9"]) == ["aligned", "coherent", "medical"]


def test_config_errors_name_the_key():
    with pytest.raises(EMLabError, match="steering.splits names 'gender'"):
        study(steering={"vectors": ["med_r1x9"], "splits": ["gender"]})
    with pytest.raises(EMLabError, match="semantic_directions.finetunes names 'nope'"):
        study(semantic_directions={"finetunes": ["nope"], "splits": ["medical"]})
    with pytest.raises(EMLabError, match="single_adapter.finetunes names 'nope'"):
        study(single_adapter={"finetunes": ["nope"]})
    with pytest.raises(EMLabError):
        study(semantic_directions={"splits": ["aligned"]})  # not a semantic judge
    cfg = study(single_adapter={"finetunes": ["med_r1x9"]})
    with pytest.raises(EMLabError, match="exactly one rank-1 down_proj adapter"):
        conditions(cfg, N_LAYERS)


def test_semantic_layers_restrict_only_the_semantic_splits():
    cfg = study(
        steering={
            "vectors": ["med_r1x9"],
            "layers": [10, 15],
            "scales": [2.0, 4.0],
            "splits": ["general", "medical"],
            "semantic_layers": [0.5],
        }
    )
    steer = sorted(cid for cid, s in conditions(cfg, N_LAYERS).items() if s["group"] == "steering")
    assert steer == [
        "steer__med_r1x9__L10__s2",
        "steer__med_r1x9__L10__s4",
        "steer__med_r1x9__L15__s2",
        "steer__med_r1x9__L15__s4",
        "steer__med_r1x9__medical__L15__s2",
        "steer__med_r1x9__medical__L15__s4",
    ]


# --- the typed condition model (emlab.interventions) ------------------------------------------------


def default_plan():
    from pathlib import Path

    import yaml
    from emlab.plan.study import condition_plan

    repo = Path(__file__).resolve().parents[2]
    cfg = validate_config(yaml.safe_load((repo / "config.yaml").read_text()))
    return condition_plan(cfg, N_LAYERS)


def test_every_planned_condition_round_trips_through_its_id_and_params():
    import json

    from emlab.core.settings import canonical
    from emlab.plan.conditions import RandomAblation, from_params, parse_condition_id

    plan = default_plan()
    assert len({type(c) for c in plan.values()}) == 11  # every kind the default config has (scalar patching included)
    for cid, condition in plan.items():
        parsed = parse_condition_id(cid)
        assert type(parsed) is type(condition) and parsed.condition_id == cid
        if not isinstance(condition, RandomAblation):  # its id does not name the norm's fine-tune
            assert parsed == condition, cid
        # params are canonical (4.0 -> 4); the condition restores the spec, so the generation tables'
        # `intervention` column stays byte-identical
        back = from_params(canonical(condition.to_params()))
        assert back == condition, cid
        assert json.dumps(back.intervention(), sort_keys=True) == json.dumps(condition.intervention(), sort_keys=True)
    steer = plan["steer__med_r1x9__L15__s4"]
    assert json.dumps(steer.intervention(), sort_keys=True) == (
        '{"kind": "steer", "layer": 15, "scale": 4.0, "vector": "med_r1x9"}'
    )
    transfer_random = plan["ablate__sport_all_r32__random_L15_seed0"]
    assert transfer_random.vector == "med_r1x9"  # the transfer vector's norm


def test_conditions_name_themselves_for_tables_and_figures():
    from emlab.plan.conditions import parse_condition_id

    labels = {
        cid: parse_condition_id(cid).label
        for cid in [
            "med",
            "ablate__med__layerwise",
            "ablate__med__single_L3",
            "ablate__med__random_L3_seed1",
            "ablate__sport__transfer_med_L3",
            "adapter_project__med__L3",
            "med__step4",
        ]
    }
    assert labels == {
        "med": ("unablated", "unablated"),
        "ablate__med__layerwise": ("layer-wise", "layer-wise"),
        "ablate__med__single_L3": ("single L3", "single"),
        "ablate__med__random_L3_seed1": ("random L3\nseed 1", "random"),
        "ablate__sport__transfer_med_L3": ("transfer:\nmed L3", "transfer"),
        "adapter_project__med__L3": ("v L3 projected\nout of B", "B projected"),
        "med__step4": ("step 4", "unablated"),
    }
    columns = parse_condition_id("steer__med__medical__L3__s2.5").columns()
    assert columns == {
        "group": "steering",
        "model": "base",
        "intervention_kind": "steer",
        "vector": "med",
        "layer": 3,
        "scale": 2.5,
        "mode": None,
        "seed": None,
        "split": "medical",
    }
    assert parse_condition_id("steer__med__L3__sm2").scale == -2.0
    assert parse_condition_id("base").columns()["split"] is None


def test_bad_specs_and_ids_are_clear_errors():
    from emlab.interventions import edits
    from emlab.plan.conditions import as_condition, parse_condition_id

    with pytest.raises(EMLabError, match="unknown intervention kind 'patch'"):
        as_condition({"kind": "patch"})
    with pytest.raises(EMLabError, match="unknown ablation mode 'half'"):
        as_condition({"kind": "ablate", "vector": "x", "mode": "half", "layer": 1})
    with pytest.raises(EMLabError, match="is not the id of any condition kind"):
        parse_condition_id("ablate__x__sideways")
    with pytest.raises(EMLabError, match="needs a direction file"):
        edits(as_condition({"kind": "steer", "vector": "x", "layer": 1, "scale": 2.0}), None, 4)
    # two config values that give one id are an error, not a silently dropped condition
    with pytest.raises(EMLabError, match="share the id 'steer__med_r1x9__L15__s1'"):
        conditions(
            study(steering={"vectors": ["med_r1x9"], "layers": [0.5], "scales": [1.0000001, 1.0000002]}), N_LAYERS
        )
