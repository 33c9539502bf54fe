"""Figure: scalar patching (appendix J): EM and medical rates per pair type, against the same-prompt control."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.runner import run_script


def main(smk):
    import pandas as pd
    from emlab.atomic import write_csv
    from emlab.lora_figures import rate_settings, scalar_patching_bars, scalar_patching_rates
    from emlab.questions import load_questions

    th, sets, pairs = smk.params.thresholds, smk.params.sets, dict(smk.params.pairs)
    judgments = {cid: pd.read_parquet(path) for cid, path in zip(smk.params.conditions, smk.input.judgments)}
    cutoffs = rate_settings(th, sets, smk.params.seed)
    reference = next(cid for cid, pair in pairs.items() if pair == "same")
    rates = scalar_patching_rates(
        judgments,
        pairs,
        {q.id for q in load_questions(smk.input.medical_questions)},
        reference,
        **cutoffs,
    )
    write_csv(smk.output.rates, rates)
    scalar_patching_bars(rates, smk.wildcards.ft, smk.output.png, smk.output.pdf, cutoffs)


run_script(snakemake, main)
