"""A monitor run's drift table with its EM labels: each checkpoint's EM rate (em_by_condition.csv) and
dangerous := EM > tau joined to the measured drift features (rule trait_drift)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.runner import run_script


def main(smk):
    import pandas as pd
    from emlab import monitor_stage as S
    from emlab.atomic import write_csv

    run = smk.wildcards.run
    em = S.em_by_step(pd.read_csv(smk.input.em), {int(k): v for k, v in smk.params.conditions.items()}, run)
    write_csv(smk.output.table, S.label_drift(pd.read_csv(smk.input.features), em, float(smk.params.tau)))


run_script(snakemake, main)
