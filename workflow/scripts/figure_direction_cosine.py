"""Figure: cosine per layer between fine-tunes' mean-diff directions, and their norms."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.em import figures
from emlab.model.runner import run_script


def main(smk):
    figures.direction_cosine(figures.read_table(smk.input[0]), smk.output.png, smk.output.pdf)


run_script(snakemake, main, uses_torch=False)
