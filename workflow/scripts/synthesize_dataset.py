"""Generate one narrow chat dataset with an OpenAI-compatible model (validated, de-duplicated)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.em.synthesis import synthesize_dataset
from emlab.model.runner import run_script


def main(smk):
    synthesize_dataset(
        smk.wildcards.synthesis, smk.params.settings, smk.input.prompt, smk.output.jsonl, smk.output.summary
    )


run_script(snakemake, main, uses_torch=False)
