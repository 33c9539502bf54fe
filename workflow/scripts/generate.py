"""Sample responses to the evaluation questions for one condition (model + intervention)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.model.runner import device_map_of, run_script


def main(smk):
    from emlab.core.atomic import write_parquet
    from emlab.core.settings import build
    from emlab.em.generation import GenerationSettings
    from emlab.interventions.generate import generate_condition
    from emlab.plan.conditions import as_condition

    df, metadata = generate_condition(  # the spec from its typed condition: canonical params write 4.0 as 4
        condition=smk.params.condition,
        spec=as_condition(smk.params.spec).to_params(),
        questions_path=smk.input.questions,
        base_model=smk.params.base_model,
        adapter=getattr(smk.input, "adapter", None),
        vectors_path=getattr(smk.input, "vectors", None),
        settings=build(GenerationSettings, smk.params.generation, "generation"),
        seed=smk.params.seed,
        device=smk.params.device,
        dtype=smk.params.dtype,
        scratch_dir=Path(smk.output[0]).parent,
        device_map=device_map_of(smk),
        medical_questions_path=getattr(smk.input, "medical_questions", None),
        roles_path=getattr(smk.input, "roles", None),  # adapter steering with roles from the probes
    )
    write_parquet(smk.output[0], df, metadata=metadata)


run_script(snakemake, main)
