"""Copy one checkpoint's adapter out of a finished fine-tune's live checkpoints/ folder."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from emlab.phase import export_checkpoint  # noqa: E402
from emlab.runner import run_script  # noqa: E402


def main(smk):
    export_checkpoint(smk.params.checkpoint_dir, smk.input.summary, smk.params.step, smk.output.adapter)


run_script(snakemake, main)  # noqa: F821
