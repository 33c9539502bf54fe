"""Validate and normalise one chat JSONL dataset; write a seeded train/eval split."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.em.datasets import prepare_dataset
from emlab.model.runner import run_script


def main(smk):
    prepare_dataset(
        smk.input.jsonl,
        smk.output.train,
        smk.output.eval,
        smk.output.summary,
        eval_fraction=smk.params.eval_fraction,
        seed=smk.params.seed,
    )


run_script(snakemake, main, uses_torch=False)
