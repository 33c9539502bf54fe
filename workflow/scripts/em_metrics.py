"""EM / coherence rates with bootstrap CIs per condition and per question (thresholds applied here)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.core.settings import build
from emlab.em.metrics import EMThresholds, write_em_tables
from emlab.model.runner import run_script


def main(smk):
    thresholds = build(EMThresholds, smk.params.thresholds, "config thresholds")
    # rows in plan order: the order of the judgments input (params hold the conditions sorted by id)
    conditions = dict(smk.params.conditions)
    ordered = {Path(p).name.removesuffix(".parquet"): None for p in smk.input.judgments}
    ordered = {cid: conditions[cid] for cid in ordered} | conditions
    write_em_tables(
        list(smk.input.judgments),
        ordered,
        thresholds,
        int(smk.params.seed),
        smk.output.by_condition,
        smk.output.by_question,
        base_model=smk.params.base_model,  # named in the tables (the cross-model tables match them by it)
    )


run_script(snakemake, main, uses_torch=False)
