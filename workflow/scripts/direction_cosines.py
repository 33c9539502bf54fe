"""Cosine per layer between the mean-diff directions of every pair of fine-tunes.

Output: long-format CSV with columns layer, finetune_a, finetune_b, cosine,
norm_a, norm_b, diff_norm (norm of v_a - v_b), one row per layer and pair
(a before b in params.finetunes order). With a single fine-tune the CSV holds
its self-pair (finetune_a == finetune_b, cosine 1, diff_norm 0), so the
per-layer norms of its direction are still recorded.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.model.runner import run_script


def main(smk):
    from emlab.em.directions import write_cosine_table

    write_cosine_table(list(smk.input.vectors), list(smk.params.finetunes), smk.output[0])


run_script(snakemake, main)
