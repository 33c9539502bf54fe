"""Figure (paper Fig. 3): semantic vs general vector cosines, and semantic scores per steering vector."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.em import figures
from emlab.model.runner import run_script


def main(smk):
    from emlab.em.metrics import load_judgments

    figures.semantic_vectors(
        figures.read_table(smk.input.cosines),
        figures.read_table(smk.input.metrics),
        load_judgments(list(smk.input.judgments)),
        smk.output.png,
        smk.output.pdf,
    )


run_script(snakemake, main, uses_torch=False)
