"""Each base model's trait-direction metadata (directions.json), read by the model key it carries: torch-free,
so that the monitor's table-only scripts (the drift-geometry analyses, the figures) can read it too."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from emlab.core.errors import EMLabError


def model_key_of(smk) -> str:
    """A per-model rule's `params.model_key`: the config's key of its base model (`default` when the rule
    predates the model axis and passes none)."""
    from emlab.plan.models import DEFAULT_KEY

    key = getattr(smk.params, "model_key", None)
    return DEFAULT_KEY if key is None else str(key)


def meta_inputs(inputs) -> list:
    """A rule's directions.json inputs: `metas` (every model's, a list) or, from a rule of one model, `meta`."""
    metas = getattr(inputs, "metas", None)
    if metas:
        return [metas] if isinstance(metas, str) else list(metas)
    return [inputs.meta]


def read_metas(paths, models: Mapping[str, Mapping] | None = None) -> dict[str, dict]:
    """Each model's directions.json, keyed by the `model_key` it carries (never by list position); `models`
    (params.models: key -> {source, family, size_b}) names the keys expected and each model's source, which
    must be the directions' `model_id`. A file without `model_key` (written before the model axis) is taken as
    the one model's only when there is one model."""
    return {key: meta for key, (_path, meta) in metas_by_key(paths, models).items()}


def metas_by_key(paths, models: Mapping[str, Mapping] | None = None) -> dict[str, tuple[str, dict]]:
    """read_metas, each with its file: key -> (path, directions.json's content)."""
    import json
    import os

    from emlab.core.keyed import add_keyed, check_ids
    from emlab.plan.models import DEFAULT_KEY

    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    keys = None if models is None else [str(k) for k in models]
    out: dict[str, tuple[str, dict]] = {}
    where: dict[str, str] = {}
    for path in paths:
        meta = json.loads(Path(path).read_text())
        key = meta.get("model_key")
        if key is None:
            if len(paths) > 1 or (keys is not None and len(keys) != 1):
                raise EMLabError(
                    f"{path} names no model_key (it was written before studies of several base models), and the "
                    f"monitor reads {max(len(paths), len(keys or []))} models' directions; re-run trait_directions"
                )
            key = keys[0] if keys else DEFAULT_KEY
        key = str(key)
        add_keyed(where, key, str(path), "trait directions (directions.json)")
        out[key] = (str(path), meta)
    check_ids(where, keys, "trait directions (directions.json) of the monitor's base models")
    for key, (path, meta) in out.items():
        source = (models or {}).get(key, {}).get("source")
        if source is not None and meta.get("model_id") != source:
            raise EMLabError(
                f"trait directions {path} (model {key}) were extracted from `{meta.get('model_id')}`, the "
                f"config's base model {key} is `{source}`; re-run trait_directions"
            )
    return out


def model_table(metas: Mapping[str, dict], models: Mapping[str, Mapping] | None = None) -> dict[str, dict]:
    """key -> {source, family, size_b, layer}: params.models (or, without it, the directions' model ids) with
    each model's monitored layer from its directions.json."""
    out = {}
    for key, meta in metas.items():
        spec = dict((models or {}).get(key) or {})
        out[key] = {
            "source": spec.get("source", meta.get("model_id")),
            "family": spec.get("family"),
            "size_b": spec.get("size_b"),
            "layer": int(meta["layer"]),
        }
    return out


def pooled_traits(metas: Mapping[str, dict]) -> tuple[list[str], str | None]:
    """(alignment trait names, trait version) shared by every model's directions: a pooled monitor reads one
    trait space, so the models must share the trait names and trait files (their layers and widths may differ)."""
    if not metas:
        raise EMLabError("monitor: no trait directions given")
    names = {k: list(m["alignment_traits"]) for k, m in metas.items()}
    versions = {k: m.get("trait_version") for k, m in metas.items()}
    first = next(iter(metas))
    if any(v != names[first] for v in names.values()):
        raise EMLabError(
            "monitor: the base models' trait directions have different alignment traits ("
            + "; ".join(f"{k}: {', '.join(v)}" for k, v in names.items())
            + "); re-run trait_directions for every model with the same trait files"
        )
    if len(set(versions.values())) > 1:
        raise EMLabError(
            "monitor: the base models' trait directions come from different trait files ("
            + "; ".join(f"{k}: {v}" for k, v in versions.items())
            + "); re-run trait_directions for every model"
        )
    return names[first], versions[first]
