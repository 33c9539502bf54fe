"""The model axis of a study (config `base_model` or `base_models`, docs/cross-model.md).

A config names one base model (`base_model:`, the short form, key `default`) or several
(`base_models: {key: {...}}`). Each model's study is planned on its own: `model_view`
gives the config as that model sees it (its `base_model`, the fine-tunes that name it,
the study sections' lists cut to those fine-tunes), and the single-model planners run on
it unchanged, so a layer given as a depth fraction or a preset's reference blocks resolve
per model. Each model's files live under its own root: `results/` for the short form,
`results/models/<key>/` for the long form, so adding a model leaves every other model's
files (and jobs) as they were.

A condition that would mix models (model A's direction in model B) is refused here: every
list that pairs fine-tunes must find both in one model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from emlab.core.errors import EMLabError

DEFAULT_KEY = "default"  # the key of the short form's one model
MODEL_ID = "base_model"  # the column / JSON key a per-model result carries to name its model
RESULTS = "results"


@dataclass(frozen=True)
class BaseModel:
    key: str
    source: str
    num_layers: int | None
    family: str | None
    size_b: float | None
    memory_gb: float | None
    root: str  # the folder of its files: results (short form) or results/models/<key>

    @property
    def config_key(self) -> str:
        """Where the model is set in the config, for error messages: base_model or base_models.<key>."""
        return "base_model" if self.root == RESULTS else f"base_models.{self.key}"

    def to_params(self) -> dict:
        return {"source": self.source, "family": self.family, "size_b": self.size_b, "root": self.root}


def is_multi(cfg: dict) -> bool:
    """Whether the config uses the long form (base_models), whatever its number of models."""
    return bool(cfg.get("base_models"))


def base_models(cfg: dict) -> dict[str, BaseModel]:
    """Every base model of the config by key, in config order."""
    if not is_multi(cfg):
        bm = cfg["base_model"]
        return {DEFAULT_KEY: BaseModel(DEFAULT_KEY, bm["source"], bm.get("num_layers"), None, None, None, RESULTS)}
    return {
        key: BaseModel(
            key,
            m["source"],
            m.get("num_layers"),
            m.get("family"),
            m.get("size_b"),
            m.get("memory_gb"),
            f"{RESULTS}/models/{key}",
        )
        for key, m in cfg["base_models"].items()
    }


def finetune_models(cfg: dict, name: str) -> list[str]:
    """The keys of the models fine-tune `name` runs on; errors name the key."""
    keys = list(base_models(cfg))
    spec = cfg["finetunes"][name].get("models")
    if not is_multi(cfg):
        if spec is not None:
            raise EMLabError(
                f"finetunes.{name}.models is set, but the config names one model with base_model; "
                "remove it, or list the models under base_models"
            )
        return keys
    if spec is None:
        if len(keys) > 1:
            raise EMLabError(
                f"finetunes.{name} names no model, and base_models has {len(keys)} ({', '.join(keys)}); "
                f"set finetunes.{name}.models to a list of them or to all"
            )
        return keys
    if spec == "all":
        return keys
    if isinstance(spec, str):
        spec = [spec]
    unknown = [k for k in spec if k not in keys]
    if unknown:
        raise EMLabError(f"finetunes.{name}.models names {unknown}, not a key of base_models ({', '.join(keys)})")
    if not spec:
        raise EMLabError(f"finetunes.{name}.models is empty; name at least one model")
    return list(dict.fromkeys(spec))


def check_models(cfg: dict) -> dict[str, BaseModel]:
    """Every cross-model reference of the config: fine-tunes' models, the judge's model, the monitor's models."""
    models = base_models(cfg)
    for name in cfg["finetunes"]:
        finetune_models(cfg, name)
    if is_multi(cfg):
        judge = cfg["judge"]
        if judge["backend"] == "hf" and judge["hf"]["model"] == "base" and len(models) > 1:
            raise EMLabError(
                f"judge.hf.model is base, but base_models has {len(models)} models; name the judge: one "
                f"of {', '.join(models)}, or an HF id / local folder"
            )
        mon = cfg["monitor"]
        for where, keys in (
            ("analysis_models", cfg.get("analysis_models") or []),
            ("monitor.models", mon.get("models") or []),
            ("monitor.stress_models", mon["stress_models"]),
        ):
            unknown = [k for k in keys if k not in models]
            if unknown:
                raise EMLabError(f"{where} names {unknown}, not a key of base_models ({', '.join(models)})")
        both = sorted(set(mon.get("models") or []) & set(mon["stress_models"]))
        if both:
            raise EMLabError(
                f"{both} are in both monitor.models and monitor.stress_models; a stress model is never fitted on"
            )
        sae = cfg["monitor"]["sae"]
        if sae["path"] and sae["model"] is None and len(monitor_models(cfg)) > 1:
            raise EMLabError(
                f"monitor.sae.path is set and the monitor pools {len(monitor_models(cfg))} models; an SAE belongs "
                f"to one model's residual stream: name it with monitor.sae.model (one of "
                f"{', '.join(monitor_models(cfg))})"
            )
        if sae["model"] is not None and sae["model"] not in monitor_models(cfg):
            raise EMLabError(
                f"monitor.sae.model {sae['model']!r} is not one of the monitor's models ({', '.join(monitor_models(cfg))})"
            )
    else:
        mon = cfg["monitor"]
        if mon.get("models") or mon["stress_models"] or mon["sae"]["model"] or cfg.get("analysis_models"):
            raise EMLabError(
                "analysis_models / monitor.models / monitor.stress_models / monitor.sae.model need base_models (the long form); with base_model "
                "the monitor runs on that one model"
            )
    return models


def monitor_models(cfg: dict) -> list[str]:
    """The models the monitor is fitted and evaluated on (not the stress arm)."""
    keys = list(base_models(cfg))
    if not is_multi(cfg):
        return keys
    mon = cfg["monitor"]
    if mon.get("models"):
        return list(mon["models"])
    return [k for k in keys if k not in mon["stress_models"]]


def sae_model(cfg: dict) -> str | None:
    """The model whose SAE the monitor's SAE baseline reads (monitor.sae), or None without an SAE."""
    sae = cfg["monitor"]["sae"]
    if not sae["path"]:
        return None
    return sae["model"] or monitor_models(cfg)[0]


def monitor_role(cfg: dict, key: str) -> str | None:
    """`fit` (the model's runs calibrate and are evaluated), `stress` (evaluated only) or None."""
    if key in monitor_models(cfg):
        return "fit"
    if is_multi(cfg) and key in cfg["monitor"]["stress_models"]:
        return "stress"
    return None


# study sections whose lists name fine-tunes: cut to the model's own
_FINETUNE_LISTS = (
    ("steering", "vectors"),
    ("ablation", "targets"),
    ("semantic_directions", "finetunes"),
    ("single_adapter", "finetunes"),
    ("lora_interp", "finetunes"),
)


def model_view(cfg: dict, key: str) -> dict:
    """The config as model `key` sees it: a single-model config the study planners take unchanged."""
    models = base_models(cfg)
    model = models[key]
    if not is_multi(cfg):
        return cfg
    view = copy.deepcopy(cfg)
    view.pop("base_models")
    view["base_model"] = {"source": model.source, "num_layers": model.num_layers}
    mine = {n for n in cfg["finetunes"] if key in finetune_models(cfg, n)}
    owners = {n: set(finetune_models(cfg, n)) for n in cfg["finetunes"]}
    view["finetunes"] = {n: ft for n, ft in view["finetunes"].items() if n in mine}
    analysed = cfg.get("analysis_models") is None or key in cfg["analysis_models"]
    for section, field in _FINETUNE_LISTS:
        view[section][field] = [n for n in cfg[section][field] if n in mine and analysed]
    kept = []
    for i, t in enumerate(cfg["ablation"]["transfer"]):
        if not owners[t["vector"]] & owners[t["target"]]:
            raise EMLabError(
                f"ablation.transfer[{i}] applies {t['vector']}'s direction to {t['target']}, but they share "
                f"no base model ({t['vector']}: {sorted(owners[t['vector']])}; {t['target']}: "
                f"{sorted(owners[t['target']])}); a direction lives in one model's residual stream"
            )
        if t["vector"] in mine and t["target"] in mine and analysed:
            kept.append(t)
    view["ablation"]["transfer"] = kept
    ref = (cfg["single_adapter"].get("reference_vector") or {}).get("finetune")
    if ref is not None:
        for ft in cfg["single_adapter"]["finetunes"]:
            if not owners[ft] <= owners[ref]:
                raise EMLabError(
                    f"single_adapter.reference_vector.finetune {ref} runs on {sorted(owners[ref])}, but "
                    f"single_adapter.finetunes names {ft}, which runs on {sorted(owners[ft])}; the reference "
                    "direction must come from the same base model"
                )
    role = monitor_role(cfg, key)
    mon = view["monitor"]
    if role is None:
        mon["calibration"], mon["held_out"] = [], []
    elif role == "stress":
        # every perturbation is unseen by the fit: the grid's runs are all scored only
        mon["held_out"] = [*mon["calibration"], *mon["held_out"]]
        mon["calibration"] = []
        mon["stress"] = dict(mon["stress"], longer=[], full=[], start_from_misaligned=[])
        mon["live"] = None
    if role is not None and key != monitor_models(cfg)[0]:
        mon["live"] = None  # the live run watches the first fitted model
    if cfg["judge"]["backend"] == "hf" and cfg["judge"]["hf"]["model"] in models:
        view["judge"]["hf"]["model"] = cfg["judge"]["hf"]["model"]  # resolved to its folder by the workflow
    return view


def run_qualifier(cfg: dict, key: str) -> str | None:
    """The model part of the monitor's run names (mon__<model>__...), None in the short form."""
    return key if is_multi(cfg) else None
