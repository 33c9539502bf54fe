"""The params of rule monitor_train_evaluate for tests that run its script directly: small, fast settings."""

from __future__ import annotations

from types import SimpleNamespace


def train_evaluate_params(runs: dict, regressors=("random_forest", "ridge", "gbt"), **overrides) -> SimpleNamespace:
    """params of monitor_train_evaluate (20 trees of depth 3, 10 bootstrap samples); `overrides` replace keys."""
    params = {
        "runs": runs,
        "monitor": {
            "n_estimators": 20,
            "max_depth": 3,
            "min_samples_leaf": 1,
            "seed": 0,
            "tau": 0.05,
            "n_bootstrap": 10,
            "ci": 0.9,
        },
        "tau_sweep": [0.05],
        "require_both_classes": True,
        "sae": {"n_features": 256},
        "regressor_comparison": {
            "regressors": list(regressors),
            "ridge_alpha": 1.0,
            "gbt_n_estimators": 20,
            "gbt_max_depth": 2,
            "gbt_learning_rate": 0.1,
            "gbt_min_samples_leaf": 1,
        },
        "basis_stability": False,
    }
    params.update(overrides)
    return SimpleNamespace(**params)
