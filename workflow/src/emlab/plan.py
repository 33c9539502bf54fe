"""The study plan: every model condition the workflow generates and judges,
derived from the validated config and the base model's depth.

A condition id is a file-name-safe string; its spec says which model (base or
a fine-tune's adapter) and which intervention (see interventions.py).
"""

from __future__ import annotations

from .config import resolve_layer
from .phase import checkpoint_conditions


def _fmt_scale(x: float) -> str:
    return f"{x:g}".replace("-", "m")


def conditions(cfg: dict, n_layers: int) -> dict[str, dict]:
    """condition id -> {"model": "base"|<finetune>, "intervention": spec, "group": ...}."""
    out: dict[str, dict] = {"base": {"model": "base", "intervention": {"kind": "none"}, "group": "model"}}
    for ft in cfg["finetunes"]:
        out[ft] = {"model": ft, "intervention": {"kind": "none"}, "group": "model"}
    out.update(checkpoint_conditions(cfg))  # phase.eval_steps: <finetune>__step<N>, group "checkpoint"
    st = cfg["steering"]
    for vec in st["vectors"]:
        for lspec in st["layers"]:
            layer = resolve_layer(lspec, n_layers, "steering.layers")
            for scale in st["scales"]:
                cid = f"steer__{vec}__L{layer}__s{_fmt_scale(scale)}"
                out[cid] = {"model": "base", "group": "steering",
                            "intervention": {"kind": "steer", "vector": vec, "layer": layer, "scale": float(scale)}}
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
    return out


def direction_finetunes(cfg: dict) -> list[str]:
    """Fine-tunes whose mean-diff directions are needed (and so their activations)."""
    needed = set(cfg["steering"]["vectors"]) | set(cfg["ablation"]["targets"])
    needed |= {t["vector"] for t in cfg["ablation"]["transfer"]}
    # Cosine comparisons across fine-tunes want every fine-tune's direction.
    needed |= set(cfg["finetunes"])
    return sorted(needed)
