"""Mean-diff direction (misaligned minus aligned, per layer) of one fine-tune from its own judged responses."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.model.runner import run_script


def main(smk):
    from emlab.core.settings import build
    from emlab.em.directions import DirectionSettings, compute_directions, write_directions

    settings = build(DirectionSettings, smk.params.thresholds, "config directions")
    tensors, summary = compute_directions(
        smk.input.tensors,
        smk.input.index,
        smk.input.judgments,
        finetune=smk.wildcards.finetune,
        settings=settings,
        seed=int(smk.params.seed),
    )
    write_directions(smk.output.vectors, smk.output.summary, tensors, summary)


run_script(snakemake, main)
