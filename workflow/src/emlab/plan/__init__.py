"""The study plan, built from a validated config without torch or a model: every condition (typed values in
conditions/), the trait-monitor grid, adapter roles, the trait files and monitored layer, the GPU budget."""
