"""Trait prompts and trait directions (trait-space monitoring, docs/trait-monitoring.md).

Four YAML files under data/traits/, each with an integer `version`:
  alignment.yaml             seven alignment traits, positive/negative system prompts
  semantic.yaml              seven semantic control traits, same form
  extraction_questions.yaml  questions asked under every trait prompt
  measurement_prompts.yaml   the prompts whose activation drift the monitor reads

A trait direction at layer l is mean(positive) - mean(negative) of the residual
stream after decoder block l (hidden_states[l + 1]) at the last prompt token
(generation prompt added), over system prompts x extraction questions,
unit-normalised. Activations are read with forward hooks, one layer's
[batch, d] last-token slice at a time, never an all-layers hidden-states tensor.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from emlab.core.errors import EMLabError
from emlab.model.batching import output_cache, pad_batch, pad_token_id, repeat_cache, shared_prefix_length, with_cache
from emlab.model.chat import render_prompt
from emlab.model.hooks import read_residual
from emlab.model.loading import hidden_size, model_device, num_layers
from emlab.plan.traits import (
    TraitFile,
    TraitSet,
    choose_layer,
)

ACKNOWLEDGEMENT = "Understood. I will follow those instructions."


_SYSTEM_PROBE = "emlab-system-role-probe"


def supports_system_role(tokenizer) -> bool:
    """False when the chat template raises on a system message or drops its text."""
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "system", "content": _SYSTEM_PROBE}, {"role": "user", "content": "hello"}],
            tokenize=False,
            add_generation_prompt=True,
        )
    except Exception:  # jinja raise_exception, TemplateError, ValueError: any refusal means "no system role"
        return False
    return _SYSTEM_PROBE in text


def trait_messages(system_prompt: str, question: str, system_role: bool) -> list[dict]:
    """The prompt messages for one (trait prompt, question) pair.

    Without a system role the trait prompt becomes a user turn answered by a
    short assistant acknowledgement, then the question follows.
    """
    if system_role:
        return [{"role": "system", "content": system_prompt}, {"role": "user", "content": question}]
    return [
        {"role": "user", "content": system_prompt},
        {"role": "assistant", "content": ACKNOWLEDGEMENT},
        {"role": "user", "content": question},
    ]


def encode_prompts(tokenizer, conversations: Sequence[list[dict]]) -> list[list[int]]:
    """Token ids of each conversation rendered with the generation prompt (as generation does)."""
    return [tokenizer(render_prompt(tokenizer, msgs), add_special_tokens=False)["input_ids"] for msgs in conversations]


# --- reading the last prompt token --------------------------------------------


class _EnoughLayers(Exception):
    """Raised by the deepest hook of last_token_residuals to end the forward there."""


@torch.inference_mode()
def last_token_residuals(
    model, tokenizer, conversations: Sequence[list[dict]], layers: Sequence[int], batch_size: int
) -> torch.Tensor:
    """Residual stream after each listed block at the last prompt token: [n, len(layers), d] float32.

    Three savings, none of which changes what is read:
    - the tokens every prompt starts with (the chat template's opening and a
      default system prompt: 24 of SmolLM2's ~40 tokens per measurement prompt)
      run once, and each batch continues from a copy of their KV cache;
    - batches (longest first) are right-padded after that prefix, so no real
      token attends to a pad, and each row is read at its own last token;
    - the forward stops after the deepest listed block: the blocks above it,
      the final norm and lm_head never run (drift reads one middle layer).
    """
    if batch_size < 1:
        raise EMLabError(f"trait activations: batch_size must be >= 1 (got {batch_size})")
    layers = [int(layer) for layer in layers]
    encoded = encode_prompts(tokenizer, conversations)
    n, d_model = len(encoded), hidden_size(model)
    out = torch.empty((n, len(layers), d_model), dtype=torch.float32)
    if n == 0:
        return out
    device = model_device(model)
    pad_id = pad_token_id(tokenizer)
    order = sorted(range(n), key=lambda i: -len(encoded[i]))
    slot = {layer: k for k, layer in enumerate(layers)}
    deepest = max(layers)
    n_prefix = shared_prefix_length(encoded)
    state: dict = {"read": False}

    def keep_last(layer: int, hidden: torch.Tensor) -> None:
        if not state["read"]:  # the shared-prefix pass
            return
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        state["last"][:, slot[layer]] = hidden[rows, state["ends"]].float()  # [batch, seq, d] -> [batch, d]
        if layer == deepest:
            raise _EnoughLayers

    with read_residual(model, layers, keep_last):
        prefix_cache = None
        if n_prefix:  # one forward over the shared prefix; the model builds the cache its architecture needs
            prefix = torch.tensor([encoded[0][:n_prefix]], dtype=torch.long, device=device)
            prefix_cache = output_cache(model(input_ids=prefix, use_cache=True, logits_to_keep=1))
        state["read"] = True
        for b in range(0, n, batch_size):
            idx = order[b : b + batch_size]
            input_ids, suffix_mask = pad_batch([encoded[i][n_prefix:] for i in idx], pad_id, "right", device)
            width = input_ids.shape[1]
            if prefix_cache is None:
                cache_kwargs = {"use_cache": False}
            else:
                cache_kwargs = {**with_cache(model, repeat_cache(prefix_cache, len(idx))), "use_cache": True}
            state["ends"] = suffix_mask.sum(-1) - 1  # [batch]: each row's last real token
            state["last"] = torch.empty((len(idx), len(layers), d_model), dtype=torch.float32, device=device)
            try:
                model(
                    input_ids=input_ids,
                    # right padding: no real token attends to a pad, so the mask is all ones
                    attention_mask=torch.ones((len(idx), n_prefix + width), dtype=torch.long, device=device),
                    position_ids=(n_prefix + torch.arange(width, device=device)).expand(len(idx), width),
                    logits_to_keep=1,
                    **cache_kwargs,
                )
            except _EnoughLayers:
                pass
            out[torch.tensor(idx)] = state["last"].cpu()
    return out


# --- directions ----------------------------------------------------------------


@dataclass(frozen=True)
class TraitActivations:
    """Last-token activations of every (trait, side, system prompt, question) at every layer."""

    names: tuple[str, ...]
    positive: torch.Tensor  # [T, P, Q, L, d]
    negative: torch.Tensor  # [T, N, Q, L, d]


def trait_activations(
    model, tokenizer, traits: TraitFile, questions: Sequence[str], batch_size: int
) -> TraitActivations:
    """Every layer's last-token residual for each trait prompt x question.

    Memory is T*(P+N)*Q*L*d floats: 7*10*30 prompts x L x d (about 1.1 GB for
    a 32 x 4096 model); all traits must have the same number of prompts per side.
    """
    n_pos, n_neg = {len(t.positive) for t in traits.traits}, {len(t.negative) for t in traits.traits}
    if len(n_pos) != 1 or len(n_neg) != 1:
        raise EMLabError(
            f"trait file {traits.path}: every trait needs the same number of positive and of "
            f"negative prompts (got positive {sorted(n_pos)}, negative {sorted(n_neg)})"
        )
    system_role = supports_system_role(tokenizer)
    layers = list(range(num_layers(model)))
    convs = [
        trait_messages(p, q, system_role)
        for t in traits.traits
        for side in (t.positive, t.negative)
        for p in side
        for q in questions
    ]
    acts = last_token_residuals(model, tokenizer, convs, layers, batch_size)  # [T*(P+N)*Q, L, d]
    T, P, N, Q = len(traits.traits), n_pos.pop(), n_neg.pop(), len(questions)
    acts = acts.view(T, P + N, Q, len(layers), -1)
    return TraitActivations(tuple(traits.names), acts[:, :P].contiguous(), acts[:, P:].contiguous())


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def mean_diff_directions(
    acts: TraitActivations,
    question_index: Sequence[int] | None = None,
    prompt_index: tuple[Sequence[int], Sequence[int]] | None = None,
) -> torch.Tensor:
    """Unit mean(positive) - mean(negative) per layer and trait: [L, T, d] (optionally on some questions only,
    or on some (positive, negative) system prompts only)."""
    pos, neg = acts.positive, acts.negative
    if question_index is not None:
        q = torch.as_tensor(list(question_index), dtype=torch.long)
        pos, neg = pos[:, :, q], neg[:, :, q]
    if prompt_index is not None:
        pos = pos[:, torch.as_tensor(list(prompt_index[0]), dtype=torch.long)]
        neg = neg[:, torch.as_tensor(list(prompt_index[1]), dtype=torch.long)]
    diff = pos.mean(dim=(1, 2)) - neg.mean(dim=(1, 2))  # [T, L, d]
    return _unit(diff.transpose(0, 1).contiguous())


def prompt_halves(n_prompts: int) -> tuple[list[int], list[int]]:
    """Two disjoint halves of one side's system prompts: the even and the odd positions (0, 2, 4 | 1, 3)."""
    if n_prompts < 2:
        raise EMLabError(f"prompt-basis halves need at least 2 prompts per side (got {n_prompts})")
    return list(range(0, n_prompts, 2)), list(range(1, n_prompts, 2))


def half_directions(acts: TraitActivations) -> torch.Tensor:
    """The mean-difference directions of each half of the system prompts (prompt_halves, on both sides, every
    extraction question): [2, L, T, d], half a then half b; no prompt is in both halves."""
    halves = zip(prompt_halves(acts.positive.shape[1]), prompt_halves(acts.negative.shape[1]))
    return torch.stack([mean_diff_directions(acts, prompt_index=half) for half in halves])


def basis_stability_cosines(directions: TraitDirections) -> pd.DataFrame:
    """Per alignment trait at the chosen layer: the cosine between the two halves' directions, and each half's
    cosine to the direction from every prompt (columns trait, cosine_halves, cosine_half_a_full,
    cosine_half_b_full)."""
    if directions.alignment_halves is None:
        raise EMLabError("trait directions: no prompt-half directions stored; re-run trait_directions")
    layer = directions.layer
    full = _unit(directions.alignment[layer].float())  # [T, d]
    a, b = (_unit(directions.alignment_halves[k, layer].float()) for k in (0, 1))
    return pd.DataFrame(
        {
            "trait": list(directions.alignment_names),
            "cosine_halves": (a * b).sum(-1).tolist(),
            "cosine_half_a_full": (a * full).sum(-1).tolist(),
            "cosine_half_b_full": (b * full).sum(-1).tolist(),
        }
    )


def held_out_split(n_questions: int, every: int) -> tuple[list[int], list[int]]:
    """(fit, held-out) question indices: every `every`-th question (1-based) is held out."""
    held = [i for i in range(n_questions) if (i + 1) % every == 0]
    if not held or len(held) == n_questions:
        raise EMLabError(f"auto layer choice needs at least {every} extraction questions (got {n_questions})")
    return [i for i in range(n_questions) if i not in held], held


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney)."""
    pos, neg = np.asarray(positive, float).ravel(), np.asarray(negative, float).ravel()
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


@dataclass(frozen=True)
class LayerScores:
    """Per-layer separation of held-out positive vs negative projections."""

    auroc: np.ndarray  # [L] mean over traits
    separation: np.ndarray  # [L] mean over traits of (mean_pos - mean_neg) / pooled std


def layer_scores(acts: TraitActivations, every: int) -> LayerScores:
    """Fit directions on the non-held-out questions; score held-out projections at every layer."""
    n_q = acts.positive.shape[2]
    fit, held = held_out_split(n_q, every)
    dirs = mean_diff_directions(acts, fit)  # [L, T, d]
    pos = acts.positive[:, :, held]  # [T, P, H, L, d]
    neg = acts.negative[:, :, held]
    pos_proj = torch.einsum("tphld,ltd->tlph", pos, dirs).flatten(2).numpy()  # [T, L, P*H]
    neg_proj = torch.einsum("tphld,ltd->tlph", neg, dirs).flatten(2).numpy()
    T, L = pos_proj.shape[:2]
    au = np.array([[auroc(pos_proj[t, l], neg_proj[t, l]) for t in range(T)] for l in range(L)])  # [L, T]
    sd = np.sqrt(0.5 * (pos_proj.var(axis=2) + neg_proj.var(axis=2))) + 1e-12  # [T, L]
    sep = ((pos_proj.mean(axis=2) - neg_proj.mean(axis=2)) / sd).T  # [L, T]
    return LayerScores(au.mean(axis=1), sep.mean(axis=1))


def cosine_matrix(directions: torch.Tensor) -> torch.Tensor:
    """[T, d] -> [T, T] cosine similarities."""
    u = _unit(directions.float())
    return u @ u.T


def random_basis(d_model: int, seed: int, k: int = 7) -> torch.Tensor:
    """A seeded random orthonormal k-D basis [k, d] (QR of a seeded Gaussian)."""
    if not 0 < k <= d_model:
        raise EMLabError(f"a random basis needs 0 < k <= d_model (got k={k}, d_model={d_model})")
    gen = torch.Generator().manual_seed(int(seed))
    gauss = torch.randn((d_model, k), generator=gen, dtype=torch.float64)
    q, _ = torch.linalg.qr(gauss)  # [d, k], orthonormal columns
    return q.T.contiguous().float()


def random_bases(d_model: int, seeds: Sequence[int], k: int = 7) -> dict[int, torch.Tensor]:
    return {int(s): random_basis(d_model, s, k) for s in seeds}


@dataclass(frozen=True)
class TraitDirections:
    """All layers' directions plus the layer choice: the content of directions.safetensors/.json."""

    alignment: torch.Tensor  # [L, T_a, d]
    semantic: torch.Tensor  # [L, T_s, d]
    alignment_names: tuple[str, ...]
    semantic_names: tuple[str, ...]
    layer: int
    scores: LayerScores
    trait_version: str
    model_id: str
    # [2, L, T_a, d]: the alignment directions of two disjoint halves of each trait's system prompts
    # (half_directions; prompt-basis stability, config monitor.basis_stability); None in older files
    alignment_halves: torch.Tensor | None = None
    # the config's key of the base model (`default` for base_model:), so a reader of several models' directions
    # matches each file by the key it carries; None in files written before studies of several models
    model_key: str | None = None

    def metadata(self) -> dict:
        """The JSON sidecar: chosen layer, per-layer scores, trait version, model id and key."""
        return {
            "layer": self.layer,
            "n_layers": int(self.alignment.shape[0]),
            "d_model": int(self.alignment.shape[2]),
            "alignment_traits": list(self.alignment_names),
            "semantic_traits": list(self.semantic_names),
            "layer_auroc": [float(x) for x in self.scores.auroc],
            "layer_separation": [float(x) for x in self.scores.separation],
            "trait_version": self.trait_version,
            "model_id": self.model_id,
            **({} if self.model_key is None else {"model_key": self.model_key}),
        }


@dataclass(frozen=True)
class DirectionSettings:
    """How trait directions are extracted (built with settings.build from the config section)."""

    layer: int | float | str  # index, fraction of the depth in (0, 1), or "auto"
    batch_size: int
    held_out_every: int  # `auto` scores layers on every n-th extraction question, held out


def extract_directions(
    model, tokenizer, trait_set: TraitSet, settings: DirectionSettings, model_id: str, model_key: str | None = None
) -> TraitDirections:
    """Alignment and semantic directions at every layer, and the chosen layer (see choose_layer); `model_key`
    (the config's key of the model) is stored with them."""
    align = trait_activations(model, tokenizer, trait_set.alignment, trait_set.questions, settings.batch_size)
    scores = layer_scores(align, settings.held_out_every)
    alignment = mean_diff_directions(align)
    halves = half_directions(align)  # the same activations: no extra forward pass
    del align
    semantic = mean_diff_directions(
        trait_activations(model, tokenizer, trait_set.semantic, trait_set.questions, settings.batch_size)
    )
    layer = choose_layer(settings.layer, alignment.shape[0], scores)
    return TraitDirections(
        alignment,
        semantic,
        tuple(trait_set.alignment.names),
        tuple(trait_set.semantic.names),
        layer,
        scores,
        trait_set.version,
        model_id,
        halves,
        model_key,
    )


def save_directions(directions: TraitDirections, tensors_path: str | os.PathLike, json_path: str | os.PathLike) -> None:
    """directions.safetensors (`alignment`, `semantic` [L, 7, d], `alignment_halves` [2, L, 7, d] when extracted;
    trait names in the metadata) + directions.json."""
    import json

    from safetensors.torch import save_file

    from emlab.core.atomic import atomic_path, write_text

    meta = {
        "alignment_traits": ",".join(directions.alignment_names),
        "semantic_traits": ",".join(directions.semantic_names),
        "trait_version": directions.trait_version,
        "model_id": directions.model_id,
        **({} if directions.model_key is None else {"model_key": directions.model_key}),
    }
    with atomic_path(tensors_path, suffix=".safetensors") as tmp:
        tensors = {"alignment": directions.alignment.contiguous(), "semantic": directions.semantic.contiguous()}
        if directions.alignment_halves is not None:
            tensors["alignment_halves"] = directions.alignment_halves.contiguous()
        save_file(tensors, str(tmp), metadata=meta)
    write_text(json_path, json.dumps(directions.metadata(), indent=2) + "\n")


def load_directions(tensors_path: str | os.PathLike, json_path: str | os.PathLike) -> TraitDirections:
    """The inverse of save_directions; a missing tensor or key is an EMLabError naming the file."""
    import json

    from safetensors import safe_open

    tensors_path, json_path = Path(tensors_path), Path(json_path)
    for p in (tensors_path, json_path):
        if not p.is_file():
            raise EMLabError(f"trait directions {p} do not exist; run the trait-direction stage first")
    meta = json.loads(json_path.read_text())
    need = {
        "layer",
        "alignment_traits",
        "semantic_traits",
        "layer_auroc",
        "layer_separation",
        "trait_version",
        "model_id",
    }
    missing = sorted(need - set(meta))
    if missing:
        raise EMLabError(f"trait directions {json_path}: missing key(s) {missing}; re-run the trait-direction stage")
    with safe_open(str(tensors_path), framework="pt") as f:
        keys = set(f.keys())
        for k in ("alignment", "semantic"):
            if k not in keys:
                raise EMLabError(f"trait directions {tensors_path}: no tensor `{k}` (found {sorted(keys)})")
        alignment, semantic = f.get_tensor("alignment"), f.get_tensor("semantic")
        halves = f.get_tensor("alignment_halves") if "alignment_halves" in keys else None
        tensor_meta = f.metadata() or {}
    for k in ("model_id", "model_key"):  # the two files of one extraction name the same model
        if k in tensor_meta and meta.get(k) is not None and str(tensor_meta[k]) != str(meta[k]):
            raise EMLabError(
                f"trait directions {tensors_path} are of {k} `{tensor_meta[k]}`, {json_path} of `{meta[k]}`; "
                "they come from different models: re-run trait_directions"
            )
    scores = LayerScores(np.asarray(meta["layer_auroc"], float), np.asarray(meta["layer_separation"], float))
    return TraitDirections(
        alignment,
        semantic,
        tuple(meta["alignment_traits"]),
        tuple(meta["semantic_traits"]),
        int(meta["layer"]),
        scores,
        meta["trait_version"],
        meta["model_id"],
        halves,
        None if meta.get("model_key") is None else str(meta["model_key"]),
    )
