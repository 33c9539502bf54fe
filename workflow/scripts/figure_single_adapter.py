"""Figure: single rank-1 adapter, B vs mean-diff cosines, downstream convergence, EM under interventions."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.em import figures
from emlab.model.runner import run_script


def main(smk):
    from emlab.core.keyed import tables_by_id

    fts = list(smk.params.finetunes)
    # each table is matched to its fine-tune by the id it carries, never by list position
    b_cos = tables_by_id(smk.input.b_cosine, "finetune", fts, "single-adapter B-cosine tables", figures.read_table)
    conv = tables_by_id(smk.input.convergence, "finetune", fts, "single-adapter convergence tables", figures.read_table)
    panels = [(ft, b_cos[ft], conv[ft]) for ft in fts]
    figures.single_adapter(panels, figures.read_table(smk.input.metrics), smk.output.png, smk.output.pdf)


run_script(snakemake, main, uses_torch=False)
