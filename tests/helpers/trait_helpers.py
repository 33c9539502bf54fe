"""Helpers (not tests) shared by the trait-drift tests: seeded random trait directions for the tiny model."""

from __future__ import annotations

import numpy as np
import torch


def random_directions(trait_set, layer: int, n_layers: int = 4, d_model: int = 64):
    """TraitDirections of `trait_set`'s trait names with seeded random vectors at every layer, chosen `layer`."""
    from emlab.monitor.traits import LayerScores, TraitDirections

    g = torch.Generator().manual_seed(0)
    return TraitDirections(
        torch.randn(n_layers, 7, d_model, generator=g),
        torch.randn(n_layers, 7, d_model, generator=g),
        tuple(trait_set.alignment.names),
        tuple(trait_set.semantic.names),
        layer,
        LayerScores(np.zeros(n_layers), np.zeros(n_layers)),
        trait_set.version,
        "tiny",
    )
