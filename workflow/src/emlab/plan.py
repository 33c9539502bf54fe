"""The study plan: every model condition the workflow generates and judges,
derived from the validated config and the base model's depth.

A condition id is a file-name-safe string; its spec says which model (base or
a fine-tune's adapter) and which intervention (see interventions.py).
"""

from __future__ import annotations

from .config import resolve_layer
from .monitor_plan import label_conditions
from .phase import checkpoint_conditions


def _fmt_scale(x: float) -> str:
    return f"{x:g}".replace("-", "m")


def conditions(cfg: dict, n_layers: int) -> dict[str, dict]:
    """condition id -> {"model": "base"|<finetune>, "intervention": spec, "group": ...}."""
    out: dict[str, dict] = {"base": {"model": "base", "intervention": {"kind": "none"}, "group": "model"}}
    for ft in cfg["finetunes"]:
        out[ft] = {"model": ft, "intervention": {"kind": "none"}, "group": "model"}
    out.update(checkpoint_conditions(cfg))  # phase.eval_steps: <finetune>__step<N>, group "checkpoint"
    out.update(label_conditions(cfg))  # monitor grid: mon__base, <run>__step<N>, group "monitor"
    st = cfg["steering"]
    semantic_layers = st.get("semantic_layers")
    for vec in st["vectors"]:
        for split in st.get("splits", ["general"]):
            use_semantic = split != "general" and semantic_layers is not None
            key = "steering.semantic_layers" if use_semantic else "steering.layers"
            for lspec in (semantic_layers if use_semantic else st["layers"]):
                layer = resolve_layer(lspec, n_layers, key)
                for scale in st["scales"]:
                    # The general vector keeps the short id; a semantic one names its split.
                    name = vec if split == "general" else f"{vec}__{split}"
                    cid = f"steer__{name}__L{layer}__s{_fmt_scale(scale)}"
                    iv = {"kind": "steer", "vector": vec, "layer": layer, "scale": float(scale)}
                    if split != "general":
                        iv["split"] = split
                    out[cid] = {"model": "base", "group": "steering", "intervention": iv}
    ab = cfg["ablation"]
    single = resolve_layer(ab["single_layer"], n_layers, "ablation.single_layer")
    for target in ab["targets"]:
        out[f"ablate__{target}__layerwise"] = {"model": target, "group": "ablation",
                                               "intervention": {"kind": "ablate", "vector": target, "mode": "layerwise"}}
        out[f"ablate__{target}__single_L{single}"] = {"model": target, "group": "ablation",
                                                      "intervention": {"kind": "ablate", "vector": target, "mode": "single", "layer": single}}
        for seed in ab["random_seeds"]:
            out[f"ablate__{target}__random_L{single}_seed{seed}"] = {
                "model": target, "group": "ablation",
                "intervention": {"kind": "ablate", "vector": target, "mode": "random", "layer": single, "seed": int(seed)}}
    for t in ab["transfer"]:
        out[f"ablate__{t['target']}__transfer_{t['vector']}_L{single}"] = {
            "model": t["target"], "group": "transfer",
            "intervention": {"kind": "ablate", "vector": t["vector"], "mode": "single", "layer": single}}
        for seed in ab["random_seeds"]:
            cid = f"ablate__{t['target']}__random_L{single}_seed{seed}"
            out.setdefault(cid, {"model": t["target"], "group": "ablation",
                                 "intervention": {"kind": "ablate", "vector": t["vector"], "mode": "random", "layer": single, "seed": int(seed)}})
    for ft in cfg.get("single_adapter", {}).get("finetunes", []):
        layer = single_adapter_layer(cfg, ft, n_layers)
        # (b) the mean-diff direction at the adapter's layer ablated from every layer of that model
        out.setdefault(f"ablate__{ft}__single_L{layer}", {
            "model": ft, "group": "ablation",
            "intervention": {"kind": "ablate", "vector": ft, "mode": "single", "layer": layer}})
        # (c) the same direction projected out of the adapter's B vector itself (weights, renormalised)
        out[f"adapter_project__{ft}__L{layer}"] = {
            "model": ft, "group": "ablation",
            "intervention": {"kind": "adapter_project", "vector": ft, "layer": layer}}
    return out


def single_adapter_layer(cfg: dict, finetune: str, n_layers: int) -> int:
    """The layer of a single-adapter fine-tune's one rank-1 down_proj adapter (an error otherwise)."""
    from .config import lora_layers
    from .errors import EMLabError

    lora = cfg["finetunes"][finetune].get("lora") or {}
    where = f"single_adapter.finetunes: '{finetune}'"
    layers = lora_layers(lora, n_layers, f"finetunes.{finetune}.lora.layers")
    if int(lora.get("rank", 1)) != 1 or list(lora.get("target_modules", ["down_proj"])) != ["down_proj"] \
            or len(layers) != 1:
        raise EMLabError(f"{where} needs exactly one rank-1 down_proj adapter (lora rank 1, target_modules "
                         f"[down_proj], one layer); it has rank {lora.get('rank')}, target_modules "
                         f"{lora.get('target_modules')}, layers {layers}")
    return int(layers[0])


def semantic_vectors(cfg: dict) -> list[tuple[str, str]]:
    """(fine-tune, split) of every semantic vector the study needs, sorted."""
    sem = cfg.get("semantic_directions", {})
    pairs = {(ft, split) for ft in sem.get("finetunes", []) for split in sem.get("splits", [])}
    st = cfg["steering"]
    pairs |= {(ft, split) for ft in st["vectors"] for split in st.get("splits", ["general"]) if split != "general"}
    return sorted(pairs)


def condition_metrics(cfg: dict, spec: dict) -> list[str]:
    """Judge metrics of one condition: judge.metrics, plus the semantic splits on the fine-tunes that give
    semantic vectors, and the semantic splits and steering.judge_metrics on the steering conditions and on
    the unsteered base model (their baseline).

    Judging a metric costs as much as any other, so the extra ones go only where a figure or vector uses them.
    """
    metrics = list(cfg["judge"]["metrics"])
    extra: list[str] = []
    splits = sorted({split for _, split in semantic_vectors(cfg)})
    if spec["group"] == "steering":
        extra = list(cfg["steering"].get("judge_metrics", [])) + splits
    elif spec["model"] == "base" and spec["intervention"]["kind"] == "none":
        # the unsteered baseline of the steering figures
        extra = list(cfg["steering"].get("judge_metrics", [])) + splits if cfg["steering"]["vectors"] else []
    elif spec["group"] == "model" and spec["intervention"]["kind"] == "none":
        extra = [split for ft, split in semantic_vectors(cfg) if ft == spec["model"]]
    return metrics + [m for m in dict.fromkeys(extra) if m not in metrics]


def direction_finetunes(cfg: dict) -> list[str]:
    """Fine-tunes whose mean-diff directions are needed (and so their activations)."""
    needed = set(cfg["steering"]["vectors"]) | set(cfg["ablation"]["targets"])
    needed |= {t["vector"] for t in cfg["ablation"]["transfer"]}
    # Cosine comparisons across fine-tunes want every fine-tune's direction.
    needed |= set(cfg["finetunes"])
    return sorted(needed)
