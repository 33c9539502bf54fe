"""Cosine per layer between each fine-tune's general vector and its semantic vectors, and their difference norm."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.model.runner import run_script


def main(smk):
    from emlab.em.directions import write_semantic_cosine_table

    keys = [tuple(k) for k in smk.params.pairs]
    write_semantic_cosine_table(
        list(smk.input.general), [ft for ft, _ in keys], list(smk.input.semantic), keys, smk.output[0]
    )


run_script(snakemake, main)
