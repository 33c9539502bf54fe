"""Figure (paper Fig. 5): coherence, mean alignment and self-correction rate vs steering scale."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.em import figures
from emlab.model.runner import run_script


def main(smk):
    figures.steering_metrics(figures.read_table(smk.input[0]), smk.output.png, smk.output.pdf)


run_script(snakemake, main, uses_torch=False)
