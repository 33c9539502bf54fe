"""Figures: Table 1 (probe metrics) and the probe coefficients per adapter of one fine-tune."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.model.runner import run_script


def main(smk):
    from emlab.em.figures import read_table
    from emlab.lora import figures as lora_figures

    ft = smk.wildcards.ft
    lora_figures.probe_table(read_table(smk.input.probes), ft, smk.output.table_png, smk.output.table_pdf)
    lora_figures.coefficient_distributions(
        read_table(smk.input.coefficients), ft, smk.output.coef_png, smk.output.coef_pdf
    )


run_script(snakemake, main)
