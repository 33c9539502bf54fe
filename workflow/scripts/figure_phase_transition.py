"""Figure: B/A rotation and EM rate against training step for one checkpointed fine-tune."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.model.runner import run_script


def main(smk):
    from emlab.core.atomic import write_csv
    from emlab.em import figures
    from emlab.em.phase import em_by_step

    summary = json.loads(Path(smk.input.summary).read_text())
    em = em_by_step(
        figures.read_table(smk.input.em), dict(smk.params.steps), summary["final_step"], smk.params.base_model
    )
    write_csv(smk.output.em_by_step, em)
    figures.phase_transition(figures.read_table(smk.input.rotation), em, summary, smk.output.png, smk.output.pdf)


run_script(snakemake, main)
