"""Per-layer residual-stream means over the answer (and prompt) tokens of a fine-tune's own responses."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.model.runner import device_map_of, run_script


def main(smk):
    from emlab.em.activations import cache_activations

    cache_activations(
        smk.input.responses,
        smk.params.base_model,
        smk.input.adapter,
        device=smk.params.device,
        dtype=smk.params.dtype,
        batch_size=smk.params.batch_size,
        device_map=device_map_of(smk),
        tensors_path=smk.output.tensors,
        index_path=smk.output.index,
    )


run_script(snakemake, main)
