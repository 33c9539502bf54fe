"""Per-token rank-1 adapter scalars and KL significance of a fine-tune's own responses (rule lora_scalars)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.model.runner import run_script


def main(smk):
    from emlab.core.settings import build
    from emlab.lora.scalars import ScalarCaptureSettings, lora_scalars_stage

    settings = build(ScalarCaptureSettings, smk.params.capture, "lora_interp.capture")
    lora_scalars_stage(
        smk.input.responses,
        smk.params.base_model,
        smk.input.adapter,
        settings,
        device=smk.params.device,
        dtype=smk.params.dtype,
        tensors_path=smk.output.tensors,
        tokens_path=smk.output.tokens,
        where=f"lora_interp.finetunes: '{smk.wildcards.ft}'",
    )


run_script(snakemake, main)
