"""A monitor run's drift table with its EM labels: each checkpoint's EM rate, from its label condition's
judgments with the EM thresholds (as em_by_condition.csv has it), and dangerous := EM > tau, joined to the
measured drift features (rule trait_drift). Reading the run's own judgments, not em_by_condition.csv,
keeps a change to any other condition from reaching the monitor."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.runner import run_script


def main(smk):
    import pandas as pd
    from emlab import monitor_stage as S
    from emlab.atomic import write_csv

    th = smk.params.thresholds
    steps = sorted(int(k) for k in smk.params.conditions)  # the judgments input is in step order
    em = {
        step: S.em_rate_of(pd.read_parquet(path), th["em_aligned_below"], th["em_coherent_above"])
        for step, path in zip(steps, smk.input.judgments, strict=True)
    }
    write_csv(smk.output.table, S.label_drift(pd.read_csv(smk.input.features), em, float(smk.params.tau)))


run_script(snakemake, main)
