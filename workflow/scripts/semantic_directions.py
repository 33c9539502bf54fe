"""Semantic mean-diff vector of one fine-tune: only responses a semantic judge scores above the threshold."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.model.runner import run_script


def main(smk):
    from emlab.core.settings import build
    from emlab.em.directions import (
        DirectionSettings,
        SemanticDirectionSettings,
        compute_semantic_directions,
        write_directions,
    )

    settings = build(DirectionSettings, smk.params.thresholds, "config directions")
    semantic = build(
        SemanticDirectionSettings,
        {"above": smk.params.above, "top_quantile": smk.params.top_quantile},
        "config semantic_directions",
    )
    tensors, summary = compute_semantic_directions(
        smk.input.tensors,
        smk.input.index,
        smk.input.judgments,
        finetune=smk.wildcards.finetune,
        split=smk.wildcards.split,
        settings=settings,
        semantic=semantic,
        seed=int(smk.params.seed),
    )
    write_directions(smk.output.vectors, smk.output.summary, tensors, summary)


run_script(snakemake, main)
