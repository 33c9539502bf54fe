"""The four response sets of a fine-tune by judge scores, with their counts (rule lora_sets)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.model.runner import run_script


def main(smk):
    from emlab.core.settings import build
    from emlab.lora.probes import ResponseSetSettings, lora_sets_stage

    lora_sets_stage(
        smk.input.judgments, build(ResponseSetSettings, smk.params.sets, "lora_interp.sets"), smk.output.sets
    )


run_script(snakemake, main)
