"""L1 probes on the adapter scalars (Table 1, Fig. 6) and the adapters' roles (rule lora_probes)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.model.runner import run_script


def main(smk):
    from emlab.core.settings import build
    from emlab.lora.probes import ProbeSettings, ResponseSetSettings, lora_probes_stage
    from emlab.plan.roles import RoleSettings

    lora_probes_stage(
        smk.input.tensors,
        smk.input.tokens,
        smk.input.judgments,
        build(ResponseSetSettings, smk.params.sets, "lora_interp.sets"),
        build(ProbeSettings, smk.params.probes, "lora_interp.probes"),
        build(RoleSettings, smk.params.roles, "lora_interp.roles"),
        int(smk.params.n_layers),
        smk.params.adapter_reference_layers,
        smk.output.probes,
        smk.output.coefficients,
        smk.output.roles,
    )


run_script(snakemake, main)
