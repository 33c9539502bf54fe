"""The one padding helper: its pad-id rule, left/right padding and real-token positions."""

from types import SimpleNamespace

import pytest
import torch
from emlab.model.batching import pad_batch, pad_sequences, pad_token_id, positions_from_mask


def test_pad_id_rule_pad_then_eos_then_zero():
    assert pad_token_id(SimpleNamespace(pad_token_id=5, eos_token_id=2)) == 5
    assert pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=2)) == 2
    assert pad_token_id(SimpleNamespace(pad_token_id=None, eos_token_id=None)) == 0


def test_left_and_right_padding_with_masks_and_positions():
    seqs = [(7, 8, 9), (4,), ()]
    ids, mask = pad_batch(seqs, 0, "left")
    assert ids.tolist() == [[7, 8, 9], [0, 0, 4], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert positions_from_mask(mask).tolist() == [[0, 1, 2], [0, 0, 0], [0, 0, 0]]
    ids, mask = pad_batch(seqs, 3, "right")
    assert ids.tolist() == [[7, 8, 9], [4, 3, 3], [3, 3, 3]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert ids.dtype == mask.dtype == torch.long
    assert pad_sequences([[1], [2, 3]], -100, "right").tolist() == [[1, -100], [2, 3]]
    with pytest.raises(ValueError, match="side"):
        pad_sequences([[1]], 0, "middle")


def test_kv_cache_argument_follows_the_transformers_version():
    """transformers 5.2x takes and returns `cache`; earlier 5.x (the GPU image's 5.17) `past_key_values`."""
    import types

    import torch
    from emlab.model.batching import cache_argument, output_cache, with_cache

    class New(torch.nn.Module):
        def forward(self, input_ids=None, cache=None, use_cache=False):
            return None

    class Old(torch.nn.Module):
        def forward(self, input_ids=None, past_key_values=None, use_cache=False):
            return None

    assert cache_argument(New()) == "cache" and with_cache(Old(), 7) == {"past_key_values": 7}
    assert output_cache(types.SimpleNamespace(cache=None, past_key_values=3)) == 3
    assert output_cache(types.SimpleNamespace(cache=5)) == 5


def test_shared_prefix_length_leaves_every_sequence_a_token_of_its_own():
    from emlab.model.batching import shared_prefix_length

    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # one sequence is the other's prefix
    assert shared_prefix_length([[7, 1], [8, 1]]) == 0
    assert shared_prefix_length([[1, 2, 3]]) == 2
    assert shared_prefix_length([]) == 0
