"""Figure: EM and coherent rates (with CI) against base-model size, one colour per family, a row per fine-tune."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.em.cross_model import em_by_size_figure
from emlab.em.figures import read_table
from emlab.model.runner import run_script


def main(smk):
    em_by_size_figure(read_table(smk.input.em_by_model), smk.output.png, smk.output.pdf)


run_script(snakemake, main, uses_torch=False)
