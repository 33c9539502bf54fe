"""Fine-tune presets by name (r1x9, r1_single, all_r32, full), their precedence
against explicit lora/training keys, and layers given as fractions of depth."""

from __future__ import annotations

import pytest
from emlab.core.config import ALL_PROJECTIONS, is_full_finetune, lora_layers, training_settings, validate_config
from emlab.core.errors import EMLabError


def config(finetunes: dict, training_defaults: dict | None = None) -> dict:
    cfg = {"datasets": {"d": {"path": "data/datasets/bad_medical_advice.jsonl"}}, "finetunes": finetunes}
    if training_defaults is not None:
        cfg["training_defaults"] = training_defaults
    return validate_config(cfg)


def test_presets_follow_the_reference_settings():
    cfg = config({name: {"dataset": "d", "preset": name} for name in ("r1x9", "r1_single", "all_r32", "full")})
    r1x9, single, r32 = (cfg["finetunes"][n]["lora"] for n in ("r1x9", "r1_single", "all_r32"))
    assert (r1x9["rank"], r1x9["alpha"], r1x9["rslora"], r1x9["target_modules"]) == (1, 256, True, ["down_proj"])
    assert lora_layers(r1x9, 48) == [15, 16, 17, 21, 22, 23, 27, 28, 29]
    assert lora_layers(r1x9, 30) == [9, 10, 11, 13, 14, 15, 17, 18, 19]  # scaled block-wise
    assert lora_layers(single, 48) == [24] and lora_layers(single, 30) == [15]
    assert (single["rank"], single["alpha"], single["target_modules"]) == (1, 256, ["down_proj"])
    assert (r32["rank"], r32["alpha"], r32["rslora"], r32["target_modules"]) == (32, 64, True, ALL_PROJECTIONS)
    assert lora_layers(r32, 30) == list(range(30))
    assert is_full_finetune(cfg["finetunes"]["full"]) and lora_layers(cfg["finetunes"]["full"]["lora"], 4) == [
        0,
        1,
        2,
        3,
    ]
    lrs = {n: training_settings(cfg, n)["learning_rate"] for n in cfg["finetunes"]}
    assert lrs == {"r1x9": 2e-5, "r1_single": 2e-5, "all_r32": 1e-5, "full": 1e-5}
    rest = training_settings(cfg, "r1x9")  # the other reference settings are the schema's defaults
    assert (
        rest["per_device_batch_size"],
        rest["gradient_accumulation_steps"],
        rest["warmup_steps"],
        rest["weight_decay"],
        rest["epochs"],
        rest["max_length"],
    ) == (2, 8, 5, 0.01, 1, 2048)


def test_explicit_keys_override_the_preset():
    cfg = config(
        {
            "a": {"dataset": "d", "preset": "r1x9", "lora": {"alpha": 64}, "training": {"learning_rate": 1e-4}},
            "b": {"dataset": "d", "preset": "r1_single", "lora": {"layers": [3]}},  # this model's index, not of 48
            "c": {"dataset": "d", "preset": "all_r32"},
        },
        training_defaults={"learning_rate": 3e-3},
    )
    a = cfg["finetunes"]["a"]
    assert a["lora"]["alpha"] == 64 and a["lora"]["rank"] == 1
    assert training_settings(cfg, "a")["learning_rate"] == 1e-4  # the fine-tune's own training wins
    assert lora_layers(cfg["finetunes"]["b"]["lora"], 30) == [3]
    assert training_settings(cfg, "c")["learning_rate"] == 3e-3  # an explicit training_defaults beats the preset


def test_old_explicit_lora_form_still_works():
    cfg = config({"x": {"dataset": "d", "lora": {"rank": 4, "target_modules": ["q_proj"], "layers": [1, 2]}}})
    assert cfg["finetunes"]["x"]["preset"] is None
    assert lora_layers(cfg["finetunes"]["x"]["lora"], 4) == [1, 2]
    assert training_settings(cfg, "x")["learning_rate"] == 2e-5


def test_layers_as_fractions_of_depth():
    cfg = config({"x": {"dataset": "d", "lora": {"layers": [0.5, 0.25, 2]}}})
    assert lora_layers(cfg["finetunes"]["x"]["lora"], 48) == [2, 12, 24]
    assert lora_layers(cfg["finetunes"]["x"]["lora"], 8) == [2, 4]
    with pytest.raises(EMLabError, match="layer 2 is out of range"):
        lora_layers(cfg["finetunes"]["x"]["lora"], 2)


@pytest.mark.parametrize(
    "ft, expected",
    [
        (
            {"dataset": "d"},
            r"finetunes.x needs a `preset` \(r1x9, r1_single, all_r32, full, trait_r16\) or a `lora:` section",
        ),
        ({"dataset": "d", "preset": "full", "lora": {"rank": 2}}, "preset 'full' trains every weight"),
        ({"dataset": "d", "preset": "r2x9"}, "finetunes.x.preset"),
        ({"dataset": "d", "lora": {"layers": [1.5]}}, "finetunes.x.lora.layers"),
    ],
)
def test_bad_presets_name_the_key(ft, expected):
    with pytest.raises(EMLabError, match=expected):
        config({"x": ft})
