"""Trait-space drift monitoring during fine-tuning (Nghiem et al.): trait directions, drift, the regressor,
the live monitor that can stop a run, the monitor stage and its figures."""
