"""The one padding helper: its pad-id rule, left/right padding and real-token positions."""

from types import SimpleNamespace

import pytest
import torch
from emlab.batching import pad_batch, pad_sequences, pad_token_id, positions_from_mask


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
