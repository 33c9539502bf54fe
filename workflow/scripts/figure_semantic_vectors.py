"""Figure (paper Fig. 3): semantic vs general vector cosines, and semantic scores per steering vector."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from emlab import figures  # noqa: E402
from emlab.runner import run_script  # noqa: E402


def main(smk):
    from emlab.metrics import load_judgments

    figures.semantic_vectors(figures.read_table(smk.input.cosines), figures.read_table(smk.input.metrics),
                             load_judgments(list(smk.input.judgments)), smk.output.png, smk.output.pdf)


run_script(snakemake, main)  # noqa: F821
