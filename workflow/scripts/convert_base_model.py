"""De-quantise the embedded SmolLM2-135M-Instruct GGUF into results/base_model."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.model.runner import run_script


def main(smk):
    from emlab.model.loading import convert_embedded_model

    convert_embedded_model(smk.output[0])


run_script(snakemake, main)
