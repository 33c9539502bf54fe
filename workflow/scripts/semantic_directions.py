"""Semantic mean-diff vector of one fine-tune: only responses a semantic judge scores above the threshold."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from emlab.directions import compute_semantic_directions, write_directions  # noqa: E402
from emlab.runner import run_script  # noqa: E402


def main(smk):
    tensors, summary = compute_semantic_directions(
        smk.input.tensors, smk.input.index, smk.input.judgments, finetune=smk.wildcards.finetune,
        split=smk.wildcards.split, thresholds=dict(smk.params.thresholds), above=float(smk.params.above),
        seed=int(smk.params.seed), top_quantile=smk.params.top_quantile,
    )
    write_directions(smk.output.vectors, smk.output.summary, tensors, summary)


run_script(snakemake, main)  # noqa: F821
