"""Figure: adapter steering (Fig. 7): % misaligned, aligned, medical, misaligned-and-medical per case."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.model.runner import run_script


def main(smk):
    from emlab.core.atomic import write_csv
    from emlab.lora.figures import (
        adapter_steering_bars,
        adapter_steering_rates,
        rate_settings,
        read_condition_judgments,
    )

    th, sets = smk.params.thresholds, smk.params.sets
    # each judgments file is matched to its condition by the id it carries (an n/a case's: its metadata), never
    # by list position
    judged, notes = read_condition_judgments(smk.input.judgments, smk.params.conditions, "adapter-steering judgments")
    judgments = {cid: judged[cid] for cid in smk.params.conditions}  # the figure's order
    cutoffs = rate_settings(th, sets, smk.params.seed)
    rates = adapter_steering_rates(judgments, dict(smk.params.cases), **cutoffs, notes=notes)
    write_csv(smk.output.rates, rates)
    adapter_steering_bars(rates, smk.output.png, smk.output.pdf, cutoffs)


run_script(snakemake, main)
