"""Figure: adapter steering (Fig. 7): % misaligned, aligned, medical, misaligned-and-medical per case."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.model.runner import run_script


def main(smk):
    import pandas as pd
    from emlab.core.atomic import write_csv
    from emlab.core.keyed import tables_by_id
    from emlab.lora.figures import adapter_steering_bars, adapter_steering_rates, rate_settings

    th, sets = smk.params.thresholds, smk.params.sets
    # each judgments file is matched to its condition by the id it carries, never by list position
    judged = tables_by_id(
        smk.input.judgments, "condition", smk.params.conditions, "adapter-steering judgments", pd.read_parquet
    )
    judgments = {cid: judged[cid] for cid in smk.params.conditions}  # the figure's order
    cutoffs = rate_settings(th, sets, smk.params.seed)
    rates = adapter_steering_rates(judgments, dict(smk.params.cases), **cutoffs)
    write_csv(smk.output.rates, rates)
    adapter_steering_bars(rates, smk.output.png, smk.output.pdf, cutoffs)


run_script(snakemake, main)
