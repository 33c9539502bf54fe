"""From next-token probabilities to a 0-100 score.

Score = probability-weighted mean of the integers 0..100 among the candidate
tokens, divided by their total probability (the "mass"). Thresholding on the
mass (missing score when it is small) is a separate step.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

_INTEGER_0_100 = re.compile(r"(?:0|[1-9][0-9]?|100)")


def integer_value(token: str) -> int | None:
    """The integer 0..100 a token spells (surrounding whitespace allowed), else None.

    No signs, decimals or leading zeros other than "0" itself.
    """
    text = token.strip()
    return int(text) if _INTEGER_0_100.fullmatch(text) else None


def is_integer_token(token: str) -> bool:
    return integer_value(token) is not None


def aggregate_top_logprobs(token_probs: Mapping[str, float]) -> tuple[float, float]:
    """(score, mass) from {token text: probability} of the top-k next tokens.

    score is NaN when no integer token is present (mass 0).
    """
    weighted = 0.0
    mass = 0.0
    for token, prob in token_probs.items():
        value = integer_value(token)
        if value is None or not math.isfinite(prob) or prob <= 0:
            continue
        weighted += value * prob
        mass += prob
    return (weighted / mass if mass > 0 else math.nan), mass


def score_from_number_probs(number_probs: Sequence[float]) -> tuple[float, float]:
    """(score, mass) from P(n) for n = 0..100 (a local judge's exact number distribution)."""
    if len(number_probs) != 101:
        raise ValueError(f"expected 101 probabilities (0..100), got {len(number_probs)}")
    mass = float(sum(number_probs))
    weighted = float(sum(n * p for n, p in enumerate(number_probs)))
    return (weighted / mass if mass > 0 else math.nan), mass


def thresholded(score: float, mass: float, min_number_mass: float) -> float:
    """The score, or NaN when the integer tokens hold less than `min_number_mass`."""
    if mass is None or not math.isfinite(mass) or mass < min_number_mass or mass <= 0:
        return math.nan
    return score
