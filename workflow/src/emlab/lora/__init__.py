"""LoRA-adapter interpretability (Soligo et al. section 4): per-token rank-1 scalars, response sets, probes
and adapter roles, scalar patching and adapter scaling, the single-adapter analyses and their figures."""
