"""An SAE saved in SAELens' format, read and checked when the workflow is planned (the trait monitor's SAE
baseline, emlab.monitor.sae): cfg.json and the safetensors header only, no weights, no torch, no sae-lens."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from emlab.core.errors import EMLabError

SAE_CFG_FILENAME = "cfg.json"  # SAELens' sae_lens.constants names
SAE_WEIGHTS_FILENAME = "sae_weights.safetensors"


@dataclass(frozen=True)
class SAEFolder:
    """What an SAE folder declares, checked: its width, dictionary size and the block it reads."""

    path: str
    d_in: int
    d_sae: int
    hook_name: str
    layer: int  # the block whose output (residual stream) the SAE reads, 0-based
    architecture: str


def hook_layer(hook_name: str, where: str) -> int:
    """The block whose output a hook reads: blocks.L.hook_resid_post -> L, blocks.L.hook_resid_pre -> L - 1,
    a Hugging Face decoder layer (model.layers.L) -> L. Any other hook does not read the residual stream
    the monitor measures, and is an error."""
    name = str(hook_name).strip()
    m = re.fullmatch(r"blocks\.(\d+)\.hook_resid_(post|pre)", name)
    if m:
        layer = int(m.group(1)) - (m.group(2) == "pre")
        if layer < 0:
            raise EMLabError(f"{where}: hook `{name}` reads the embeddings, not a block's output")
        return layer
    m = re.fullmatch(r"(?:model\.)?layers\.(\d+)", name)
    if m:
        return int(m.group(1))
    raise EMLabError(
        f"{where}: hook `{name}` is not the residual stream after a block (blocks.<L>.hook_resid_post, "
        "blocks.<L>.hook_resid_pre or model.layers.<L>); the monitor's drift is read there, so an SAE of "
        "another activation cannot serve as its baseline"
    )


def _positive_int(cfg: dict, key: str, where: str) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EMLabError(f"{where}: `{key}` must be a positive integer (got {value!r})")
    return value


def read_sae(
    path, n_layers: int | None = None, hidden_size: int | None = None, where: str = "monitor.sae.path"
) -> SAEFolder:
    """An SAE folder's cfg.json and weight shapes, checked against the model where its depth and width are
    known. Reads no weights (the safetensors header only) and imports no torch: the plan calls it."""
    from safetensors import safe_open

    folder = Path(path)
    if not folder.is_dir():
        raise EMLabError(
            f"{where}: {folder} is not a folder; point it at an SAE saved in SAELens' format "
            f"({SAE_CFG_FILENAME} + {SAE_WEIGHTS_FILENAME}), or set it null for no SAE baseline"
        )
    cfg_path, weights_path = folder / SAE_CFG_FILENAME, folder / SAE_WEIGHTS_FILENAME
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise EMLabError(f"{where}: {folder} has no {p.name}; an SAE in SAELens' format has {SAE_CFG_FILENAME} "
                             f"and {SAE_WEIGHTS_FILENAME}")  # fmt: skip
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EMLabError(f"{where}: {cfg_path} is not valid JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise EMLabError(f"{where}: {cfg_path} must hold a JSON object")
    here = f"{where} ({cfg_path})"
    d_in, d_sae = _positive_int(cfg, "d_in", here), _positive_int(cfg, "d_sae", here)
    meta = cfg["metadata"] if isinstance(cfg.get("metadata"), dict) else {}
    hook = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    if not hook:
        raise EMLabError(
            f"{here}: no hook named (metadata.hook_name, or hook_name before SAELens 6, e.g. "
            "blocks.24.hook_resid_post); the baseline must know which layer the SAE reads"
        )
    layer = hook_layer(hook, f"{here}: metadata.hook_name")
    if n_layers is not None and not 0 <= layer < int(n_layers):
        raise EMLabError(
            f"{here}: hook `{hook}` reads block {layer}, but the base model has {n_layers} layers "
            f"(0..{int(n_layers) - 1}); this SAE belongs to another model"
        )
    if hidden_size is not None and d_in != int(hidden_size):
        raise EMLabError(
            f"{here}: d_in is {d_in}, the base model's hidden size is {hidden_size}; this SAE belongs to another model"
        )
    try:
        with safe_open(str(weights_path), framework="numpy") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types for a damaged file
        raise EMLabError(f"{where}: {weights_path} is not a readable safetensors file: {exc}") from None
    expected = {"W_dec": (d_sae, d_in), "W_enc": (d_in, d_sae)}
    if "W_dec" not in shapes:
        raise EMLabError(f"{where}: {weights_path} has no W_dec (tensors: {sorted(shapes)})")
    for key, shape in expected.items():
        if key in shapes and shapes[key] != shape:
            raise EMLabError(
                f"{where}: {weights_path} holds {key} of shape {list(shapes[key])}, but cfg.json's d_in {d_in} and "
                f"d_sae {d_sae} make it {list(shape)}"
            )
    return SAEFolder(str(folder), d_in, d_sae, str(hook), layer, str(cfg.get("architecture") or "standard"))
