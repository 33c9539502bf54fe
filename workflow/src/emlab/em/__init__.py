"""The model-organism study (Turner et al.; Soligo et al. section 3): datasets, fine-tuning, sampling,
judging, activations, mean-diff directions, EM metrics, phase transitions and their figures."""
