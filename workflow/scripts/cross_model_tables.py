"""Cross-model tables: EM / coherence per (fine-tune, base model) and each organism's phase-transition step."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.em.cross_model import write_cross_model_tables
from emlab.model.runner import run_script


def main(smk):
    # every file is matched to its base model by the id it carries or the model root it sits under
    write_cross_model_tables(
        list(smk.input.em),
        list(getattr(smk.input, "phase_summaries", [])),
        list(getattr(smk.input, "em_by_step", [])),
        dict(smk.params.models),
        dict(smk.params.recipes),
        smk.output.em_by_model,
        smk.output.phase_steps,
    )


run_script(snakemake, main, uses_torch=False)
