"""Figure: EM and coherent rate of each ablated fine-tune (unablated, layer-wise, single, transfer, random)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.em import figures
from emlab.model.runner import run_script


def main(smk):
    figures.ablation(figures.read_table(smk.input[0]), smk.output.png, smk.output.pdf)


run_script(snakemake, main, uses_torch=False)
