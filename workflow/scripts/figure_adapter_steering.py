"""Figure: adapter steering (Fig. 7): % misaligned, aligned, medical, misaligned-and-medical per case."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.runner import run_script


def main(smk):
    import pandas as pd
    from emlab.atomic import write_csv
    from emlab.lora_figures import adapter_steering_bars, adapter_steering_rates

    th, sets = smk.params.thresholds, smk.params.sets
    judgments = {cid: pd.read_parquet(path) for cid, path in zip(smk.params.conditions, smk.input.judgments)}
    rates = adapter_steering_rates(
        judgments,
        dict(smk.params.cases),
        misaligned_below=th["em_aligned_below"],
        aligned_above=sets["aligned_above"],
        coherent_above=th["em_coherent_above"],
        medical_above=sets["medical_above"],
        n_boot=int(th["bootstrap_samples"]),
        confidence=float(th["confidence"]),
        seed=int(smk.params.seed),
    )
    write_csv(smk.output.rates, rates)
    adapter_steering_bars(rates, smk.output.png, smk.output.pdf)


run_script(snakemake, main)
