"""Figure: single rank-1 adapter, B vs mean-diff cosines, downstream convergence, EM under interventions."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab import figures
from emlab.runner import run_script


def main(smk):
    panels = [
        (ft, figures.read_table(b), figures.read_table(c))
        for ft, b, c in zip(smk.params.finetunes, smk.input.b_cosine, smk.input.convergence)
    ]
    figures.single_adapter(panels, figures.read_table(smk.input.metrics), smk.output.png, smk.output.pdf)


run_script(snakemake, main)
