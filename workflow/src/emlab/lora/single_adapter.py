"""Rank-1 single-adapter analyses (docs/linear-directions.md, "The single rank-1 adapter").

A fine-tune with ONE rank-1 LoRA adapter on the down_proj of block l adds
scale * (A x) * B to the residual stream inside block l, so B lives where the
mean-diff vector v_l of layer l lives (the residual stream after block l).
This module:
  - reads that adapter's B vector and scale (b_vector on a loaded model,
    read_rank_one_adapter from the adapter folder);
  - tabulates the cosine of B with v_k at every layer k (b_cosine_table);
  - projects v_l out of B itself, renormalised to B's norm (project_out_of_b,
    apply_adapter_projection: the `adapter_project` intervention, applied to
    the weights at model-load time);
  - measures downstream convergence: on the base model, add B (norm-matched to
    v_l) or v_l after block l, and compare the two induced activation changes
    at every later layer (downstream_convergence);
  - does each of these with the fine-tune's own v_l and with a reference vector
    (config single_adapter.reference_vector; the paper's is the 9-adapter
    organism's v_24), every row naming its vector (analyse_single_adapter), and
    tabulates both against the EM of the ablation and projection conditions
    (emlab.lora.single_adapter_comparison, which needs no torch).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from emlab.core.errors import EMLabError
from emlab.model import hooks

log = logging.getLogger(__name__)


@dataclass
class RankOneAdapter:
    layer: int  # decoder block whose down_proj carries the adapter
    module: str  # e.g. "L15.down_proj"
    b: torch.Tensor  # [d_model] float32, the B column
    a: torch.Tensor  # [d_in] float32, the A row
    scale: float  # peft scaling (alpha / sqrt(r) with rsLoRA, alpha / r without)
    b_param: torch.nn.Parameter | None  # the live [d_model, 1] weight, for in-place edits (None: read from disk)


def _the_rank_one_adapter(adapters: dict, where: str) -> tuple[str, int, dict]:
    """(key, layer, {'A', 'B'}) of the one rank-1 down_proj adapter in `adapters` (an error for anything else)."""
    if len(adapters) != 1:
        raise EMLabError(
            f"a single-adapter analysis needs exactly one LoRA adapter; {where} has {len(adapters)} "
            f"({', '.join(list(adapters)[:6])}). List only single rank-1 down_proj fine-tunes in "
            "config `single_adapter.finetunes`."
        )
    ((key, ab),) = adapters.items()
    layer_s, module = key.split(".", 1)
    if module != "down_proj" or ab["B"].shape[1] != 1:
        raise EMLabError(
            f"adapter {key} in {where} has rank {ab['B'].shape[1]} on {module}; the single-adapter "
            "analyses need rank 1 on down_proj (its B vector is added to the residual stream)"
        )
    return key, int(layer_s[1:]), ab


def b_vector(model) -> RankOneAdapter:
    """The one rank-1 down_proj adapter of a peft model (an error for anything else)."""
    from emlab.em.finetune import adapter_weights

    key, layer, ab = _the_rank_one_adapter(adapter_weights(model), "this model")
    scale = None
    for mod in model.modules():  # the LoRA layer that owns this B parameter
        for adapter_name, lin in getattr(mod, "lora_B", {}).items():
            if lin.weight is ab["B"]:
                scale = float(mod.scaling[adapter_name])
    if scale is None:
        raise EMLabError(f"cannot find the LoRA scaling of adapter {key}")
    return RankOneAdapter(
        layer=layer,
        module=key,
        b=ab["B"].detach().float().reshape(-1).cpu(),
        a=ab["A"].detach().float().reshape(-1).cpu(),
        scale=scale,
        b_param=ab["B"],
    )


def read_rank_one_adapter(adapter_dir) -> RankOneAdapter:
    """The same as b_vector, read from a saved peft adapter folder without loading any model.

    (At paper scale the base model is 14B parameters: reading B must not load it.)
    Scale as peft computes it: alpha / sqrt(r) with rsLoRA, alpha / r without.
    """
    import json
    import math
    from pathlib import Path

    from emlab.em.finetune import saved_adapter_weights

    folder = Path(adapter_dir)
    cfg_path, weights_path = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not cfg_path.is_file() or not weights_path.is_file():
        raise EMLabError(
            f"{folder} is not a peft adapter folder (needs adapter_config.json and "
            "adapter_model.safetensors); the single-adapter analyses need a LoRA fine-tune"
        )
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise EMLabError(f"{cfg_path}: per-module rank/alpha patterns are not supported by the single-adapter analyses")
    key, layer, ab = _the_rank_one_adapter(saved_adapter_weights(folder), str(folder))
    r, alpha = int(cfg.get("r", 1)), float(cfg.get("lora_alpha", 1))
    scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    return RankOneAdapter(
        layer=layer, module=key, b=ab["B"].reshape(-1), a=ab["A"].reshape(-1), scale=scale, b_param=None
    )


def project_out_of_b(b: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """B - (B . v_hat) v_hat, rescaled to the norm of B (weights edit, not an activation edit)."""
    b64, v64 = b.double().reshape(-1), direction.double().reshape(-1)
    if v64.norm() == 0:
        raise EMLabError("the mean-diff direction at the adapter's layer is zero; nothing to project out of B")
    if b64.norm() == 0:
        raise EMLabError("the adapter's B vector is zero (an untrained adapter?): there is nothing to project")
    unit = v64 / v64.norm()
    rest = b64 - (b64 @ unit) * unit
    if rest.norm() <= 1e-6 * float(b64.norm()):  # float32 inputs: parallel up to rounding
        raise EMLabError("B is parallel to the mean-diff direction: projecting it out leaves nothing to renormalise")
    return (rest * (b64.norm() / rest.norm())).to(b.dtype).reshape(b.shape)


def apply_adapter_projection(model, vectors: torch.Tensor, layer: int) -> None:
    """Edit the peft model in place: B <- B with v_layer projected out, same norm (before merging).

    `vectors` [L, d] may be another fine-tune's and `layer` another than the adapter's (the reference vector of
    single_adapter.reference_vector): B is added to the residual stream, where every v_k lives.
    """
    adapter = b_vector(model)
    if not 0 <= layer < vectors.shape[0]:
        raise EMLabError(f"adapter_project asks for layer {layer}; the direction file has {vectors.shape[0]} layers")
    new_b = project_out_of_b(adapter.b, vectors[layer].float())
    with torch.no_grad():
        adapter.b_param.copy_(new_b.reshape(adapter.b_param.shape).to(adapter.b_param.dtype))
    log.info(
        "projected v_%d out of %s (block %d): cos(B, v) %.4f -> %.2e, |B| %.4f kept",
        layer,
        adapter.module,
        adapter.layer,
        float(torch.nn.functional.cosine_similarity(adapter.b, vectors[layer].float(), dim=0)),
        float(torch.nn.functional.cosine_similarity(new_b, vectors[layer].float(), dim=0)),
        float(adapter.b.norm()),
    )


def b_cosine_table(adapter: RankOneAdapter, vectors: torch.Tensor) -> pd.DataFrame:
    """Cosine of B with v_k at every layer k (the adapter's own layer flagged): layer, cosine, norm_v,
    norm_b, norm_b_scaled (scale * |B|), is_adapter_layer."""
    from emlab.em.directions import cosine_by_layer

    n_layers = vectors.shape[0]
    cos = cosine_by_layer(adapter.b.expand(n_layers, -1).contiguous(), vectors.float())
    return pd.DataFrame(
        {
            "layer": np.arange(n_layers, dtype=np.int64),
            "cosine": cos.double().numpy(),
            "norm_v": vectors.double().norm(dim=-1).numpy(),
            "norm_b": float(adapter.b.norm()),
            "norm_b_scaled": float(adapter.scale * adapter.b.norm()),
            "is_adapter_layer": np.arange(n_layers) == adapter.layer,
        }
    )


def downstream_convergence(
    model,
    tokenizer,
    records: list[dict],
    layer: int,
    b: torch.Tensor,
    v: torch.Tensor,
    batch_size: int = 16,
    progress: bool = False,
) -> pd.DataFrame:
    """Cosine, at every layer k >= `layer`, between the activation changes from adding B and from adding v.

    On `model` (the base model), over the prompt + response of each record:
    delta_X[k] = answer-token mean of the residual after block k with X added after
    block `layer`, minus the same without. B is norm-matched to v (B_hat * |v|),
    so the comparison is of directions at equal strength; at k = layer the
    cosine equals cos(B, v). Columns: layer, cosine (of the response-averaged
    deltas), mean_response_cosine (per-response cosines averaged), norm_delta_b,
    norm_delta_v, n_responses.
    """
    return downstream_convergence_by_vector(model, tokenizer, records, layer, b, {"v": v}, batch_size, progress)["v"]


def downstream_convergence_by_vector(
    model,
    tokenizer,
    records: list[dict],
    layer: int,
    b: torch.Tensor,
    vectors: dict[str, torch.Tensor],
    batch_size: int = 16,
    progress: bool = False,
) -> dict[str, pd.DataFrame]:
    """downstream_convergence for each of several vectors v ({name: [d]}), B and v added after block `layer`;
    the pass without any edit is shared."""
    from emlab.em.activations import cache_answer_means
    from emlab.model.loading import num_layers

    n_layers = num_layers(model)
    if not 0 <= layer < n_layers:
        raise EMLabError(f"convergence layer {layer} is out of range for a {n_layers}-layer model")
    if b.norm() == 0 or any(v.norm() == 0 for v in vectors.values()):
        raise EMLabError("downstream convergence needs non-zero B and mean-diff vectors")

    def means(edit: torch.Tensor | None) -> torch.Tensor:
        if edit is None:
            return cache_answer_means(model, tokenizer, records, batch_size, progress)[0]
        with hooks.steer(model, {layer: edit}):
            return cache_answer_means(model, tokenizer, records, batch_size, progress)[0]

    base = means(None)  # [n, L, d]
    out = {}
    for name, v in vectors.items():
        b_added = (b.float() / b.float().norm()) * v.float().norm()  # [d], norm-matched to v
        delta_b = (means(b_added) - base)[:, layer:].double()  # [n, L - layer, d]
        delta_v = (means(v.float()) - base)[:, layer:].double()
        keep = torch.isfinite(delta_b).all(-1).all(-1) & torch.isfinite(delta_v).all(-1).all(-1)  # [n]
        if not bool(keep.any()):
            raise EMLabError("downstream convergence: no response has answer tokens")
        delta_b, delta_v = delta_b[keep], delta_v[keep]
        mean_b, mean_v = delta_b.mean(0), delta_v.mean(0)  # [L - layer, d]
        per_response = torch.nn.functional.cosine_similarity(delta_b, delta_v, dim=-1)  # [n, L - layer]
        out[name] = pd.DataFrame(
            {
                "layer": np.arange(layer, n_layers, dtype=np.int64),
                "cosine": torch.nn.functional.cosine_similarity(mean_b, mean_v, dim=-1).numpy(),
                "mean_response_cosine": per_response.mean(0).numpy(),
                "norm_delta_b": mean_b.norm(dim=-1).numpy(),
                "norm_delta_v": mean_v.norm(dim=-1).numpy(),
                "n_responses": int(keep.sum()),
            }
        )
    return out


def convergence_records(generations: pd.DataFrame, max_responses: int | None) -> list[dict]:
    """The fine-tune's own prompt/response records, in (question_id, sample_idx) order, at most max_responses."""
    for col in ("question_id", "sample_idx", "question", "response"):
        if col not in generations.columns:
            raise EMLabError(f"the generations table lacks column {col!r}; re-run the generate rule")
    df = generations.sort_values(["question_id", "sample_idx"], kind="mergesort")
    if max_responses is not None:
        df = df.head(int(max_responses))
    cols = [c for c in ("question", "system", "response") if c in df.columns]
    return df[cols].to_dict("records")


def load_vectors_of(path, finetune: str) -> torch.Tensor:
    """The [L, d] mean-diff vectors of a direction file, checked to be `finetune`'s by the id it carries."""
    from emlab.core.keyed import tensors_by_id
    from emlab.em.directions import mean_diff_of
    from emlab.model.tensors import load_tensors

    tensors, meta = tensors_by_id([path], "finetune", [finetune], f"the direction file of '{finetune}'", load_tensors)[
        finetune
    ]
    return mean_diff_of(tensors, meta, path)  # (an n/a direction raises DirectionUnavailable)


def analyse_single_adapter(
    base_model,
    adapter_dir,
    vectors_path,
    generations_path,
    finetune: str,
    max_responses: int | None,
    batch_size: int,
    device: str,
    dtype: str,
    device_map=None,
    reference: dict | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(b_cosine table, convergence table, summary) of one single-adapter fine-tune.

    Every result is given for the fine-tune's own vectors (role "own", v_l at the adapter's layer l) and, with
    `reference` ({"finetune", "layer", "path"}: single_adapter.reference_vector), for that fine-tune's vectors
    (role "reference", its v_layer). Each row names its vector: role, vector (the fine-tune whose mean-diff
    vectors it is) and vector_layer. Convergence always adds B and v after the adapter's own block.
    """
    from emlab.model.loading import load_model, load_tokenizer

    adapter = read_rank_one_adapter(adapter_dir)
    compared = [("own", finetune, adapter.layer, vectors_path)]
    if reference is not None:
        compared.append(("reference", str(reference["finetune"]), int(reference["layer"]), reference["path"]))
    loaded = {}
    for role, source, layer, path in compared:
        vectors = load_vectors_of(path, source)  # [L, d]
        if vectors.shape[0] <= max(layer, adapter.layer):
            raise EMLabError(
                f"{path} has {vectors.shape[0]} layers; the {role} vector is v_{layer} and the adapter sits on "
                f"block {adapter.layer}"
            )
        loaded[role] = vectors
    records = convergence_records(pd.read_parquet(generations_path), max_responses)
    model = load_model(base_model, None, device=device, dtype=dtype, device_map=device_map)
    tokenizer = load_tokenizer(base_model)
    convergence = downstream_convergence_by_vector(
        model,
        tokenizer,
        records,
        adapter.layer,
        adapter.b,
        {role: loaded[role][layer] for role, _, layer, _ in compared},
        batch_size=batch_size,
    )
    cos_tables, conv_tables, by_vector = [], [], []
    for role, source, layer, _ in compared:
        cos_table = b_cosine_table(adapter, loaded[role])
        cos_table["is_vector_layer"] = cos_table["layer"] == layer
        conv = convergence[role]
        at_layer = cos_table[cos_table["is_vector_layer"]].iloc[0]
        for table in (cos_table, conv):
            # each table names its own fine-tune (emlab.core.keyed) and, per row, which vector it compares B with
            table.insert(0, "vector_layer", layer)
            table.insert(0, "vector", source)
            table.insert(0, "role", role)
            table.insert(0, "finetune", finetune)
        cos_tables.append(cos_table)
        conv_tables.append(conv)
        by_vector.append(
            {
                "role": role,
                "vector": source,
                "vector_layer": layer,
                "norm_v": float(at_layer["norm_v"]),
                "cosine_b_v": float(at_layer["cosine"]),
                "convergence_layer": int(conv["layer"].iloc[-1]),
                "convergence_last_layer": float(conv["cosine"].iloc[-1]),
            }
        )
    own = by_vector[0]
    summary = {
        "finetune": finetune,
        "layer": adapter.layer,
        "module": adapter.module,
        "scale": adapter.scale,
        "norm_b": float(adapter.b.norm()),
        # the own vector's results, as before; `vectors` has every compared vector's
        "norm_v": own["norm_v"],
        "cosine_b_v": own["cosine_b_v"],
        "convergence_last_layer": own["convergence_last_layer"],
        "n_responses": int(conv_tables[0]["n_responses"].iloc[0]),
        "b_added": "B_hat * |v| (norm-matched to the compared mean-diff vector), after the adapter's block",
        "vectors": by_vector,
    }
    return pd.concat(cos_tables, ignore_index=True), pd.concat(conv_tables, ignore_index=True), summary
