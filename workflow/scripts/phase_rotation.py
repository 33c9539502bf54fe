"""A/B norms and cosines (to the final adapter, between consecutive checkpoints) of a checkpointed fine-tune."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.model.runner import run_script


def main(smk):
    from emlab.em.phase import phase_analysis

    phase_analysis(
        smk.wildcards.finetune,
        smk.params.checkpoint_dir,
        smk.input.adapter,
        smk.input.summary,
        smk.output.table,
        smk.output.summary,
        base_model=smk.params.base_model,
    )


run_script(snakemake, main)
