"""Padding token sequences into a batch: one helper for generation, activations,
the hf judge and training.

The pad id has one rule (`pad_token_id`): the tokenizer's pad token, else its
eos token, else 0. `models.load_tokenizer` already sets a missing pad token to
eos, so the fallbacks only matter for a tokenizer loaded some other way. The
value never changes a result: every padded position has attention mask 0 (no
real token attends to it), is excluded from every masked reduction, and has
label IGNORE_INDEX in training; it only has to be a valid token id.

Generation, activations and the judge's prefix-shared suffixes pad on the left
or right as their positions need; `positions_from_mask` gives position ids that
count real tokens only, so a left-padded row sees the same positions as the
unpadded sequence.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

SIDES = ("left", "right")


def pad_token_id(tokenizer) -> int:
    """The id written into padded positions: pad token, else eos token, else 0 (see the module docstring)."""
    for tok_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tok_id is not None:
            return int(tok_id)
    return 0


def pad_sequences(sequences: Sequence[Sequence[int]], value: int, side: str) -> torch.Tensor:
    """[batch, longest] int64 tensor of `sequences`, filled with `value` on `side` ("left" or "right")."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    width = max(len(s) for s in sequences)
    out = torch.full((len(sequences), width), int(value), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if len(seq):
            start = width - len(seq) if side == "left" else 0
            out[row, start : start + len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
    return out


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, side: str, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask, each [batch, longest] int64 (mask 1 on real tokens), on `device`."""
    input_ids = pad_sequences(sequences, pad_id, side)
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)  # [batch]
    cols = torch.arange(input_ids.shape[1]).unsqueeze(0)  # [1, width]
    if side == "left":
        attention_mask = (cols >= input_ids.shape[1] - lengths.unsqueeze(1)).long()
    else:
        attention_mask = (cols < lengths.unsqueeze(1)).long()
    if device is not None:
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    return input_ids, attention_mask


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count real tokens only ([batch, seq]; padded positions get 0)."""
    return (attention_mask.cumsum(-1) - 1).clamp_(min=0)


def cache_argument(model) -> str:
    """The forward argument that takes a KV cache: `cache` (transformers >= 5.2x, where the old name is
    deprecated and removed in 5.40) or `past_key_values` (earlier 5.x releases, e.g. 5.17)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def with_cache(model, cache) -> dict:
    """Forward kwargs that pass `cache` under the name this transformers version takes (cache_argument)."""
    return {cache_argument(model): cache}


def output_cache(out):
    """The KV cache a forward returned, under either name."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def shared_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Tokens every sequence starts with, leaving each at least one token of its own (0 for none)."""
    if not sequences:
        return 0
    first, limit = sequences[0], min(len(s) for s in sequences) - 1
    n = 0
    while n < limit and all(s[n] == first[n] for s in sequences):
        n += 1
    return n


def repeat_cache(prefix_cache, batch: int):
    """A copy of a one-row KV cache (a shared prefix's) repeated to `batch` rows; a forward appends to the copy."""
    import copy

    cache = copy.deepcopy(prefix_cache)
    cache.batch_repeat_interleave(batch)
    return cache
