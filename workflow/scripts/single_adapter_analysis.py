"""Single rank-1 adapter: cosine of B with the mean-diff vectors, and downstream convergence (B vs v), for its own
v_l and the configured reference vector."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.model.runner import device_map_of, run_script


def main(smk):
    from emlab.core.atomic import write_csv, write_json
    from emlab.lora.single_adapter import analyse_single_adapter
    from emlab.model.loading import set_threads

    set_threads(smk.threads)
    # the reference vector's direction file is its own named input, checked to be that fine-tune's by its id
    ref = smk.params.reference
    reference = None if ref is None else dict(ref, path=smk.input.reference_vectors)
    b_cos, conv, summary = analyse_single_adapter(
        smk.params.base_model,
        smk.input.adapter,
        smk.input.vectors,
        smk.input.responses,
        finetune=smk.wildcards.finetune,
        max_responses=smk.params.max_responses,
        batch_size=int(smk.params.batch_size),
        device=smk.params.device,
        dtype=smk.params.dtype,
        device_map=device_map_of(smk),
        reference=reference,
    )
    write_csv(smk.output.b_cosine, b_cos)
    write_csv(smk.output.convergence, conv)
    write_json(smk.output.summary, summary)


run_script(snakemake, main)
