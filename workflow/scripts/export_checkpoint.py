"""Copy one checkpoint's adapter out of a finished fine-tune's live checkpoints/ folder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.model.runner import run_script


def main(smk):
    from emlab.em.phase import export_checkpoint

    export_checkpoint(
        smk.params.checkpoint_dir, smk.input.summary, smk.params.step, smk.output.adapter, smk.wildcards.finetune
    )


run_script(snakemake, main)
