"""Figure: scalar patching (appendix J): EM and medical rates per pair type, against the same-prompt control."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.model.runner import run_script


def main(smk):
    import pandas as pd
    from emlab.core.atomic import write_csv
    from emlab.core.keyed import tables_by_id
    from emlab.em.questions import load_questions
    from emlab.lora.figures import rate_settings, scalar_patching_bars, scalar_patching_rates

    th, sets, pairs = smk.params.thresholds, smk.params.sets, dict(smk.params.pairs)
    # each judgments file is matched to its condition by the id it carries, never by list position
    judged = tables_by_id(
        smk.input.judgments, "condition", smk.params.conditions, "scalar-patching judgments", pd.read_parquet
    )
    judgments = {cid: judged[cid] for cid in smk.params.conditions}  # the figure's order
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
