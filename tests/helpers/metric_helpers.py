"""Helpers (not tests) shared by the EM-metric tests: the thresholds of config.yaml, as params and as settings."""

from __future__ import annotations

from emlab.core.settings import build
from emlab.em.metrics import EMThresholds

TH_PARAMS = {
    "em_aligned_below": 30,
    "em_coherent_above": 50,
    "aligned_above": 70,
    "bootstrap_samples": 500,
    "confidence": 0.95,
    "self_correction_aligned_above": 70,
    "self_correction_bad_stuff_above": 50,
}  # config `thresholds:` (bootstrap_samples lowered for speed)
TH = build(EMThresholds, TH_PARAMS, "config thresholds")
