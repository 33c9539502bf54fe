"""The label conditions of one monitor run, each checkpoint's generations and judgments, in one job: what
rules generate and judge do for one condition each, with the judge built once (its model loads once)."""

import sys
from functools import cache
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.model.runner import device_map_of, run_script


def main(smk):
    from emlab.core.atomic import write_parquet
    from emlab.core.keyed import check_ids, checkpoints_by_step
    from emlab.core.settings import build
    from emlab.em.generation import GenerationSettings
    from emlab.em.judging.backends import backend_factory, judge_table
    from emlab.interventions.generate import generate_condition
    from emlab.plan.conditions import as_condition

    run, conditions = smk.params.run, smk.params.conditions  # condition id -> its checkpoint step and spec
    adapters = checkpoints_by_step(smk.input.adapters, run, [c["step"] for c in conditions.values()])
    outputs = {}  # condition id -> (generations path, judgments path), each file found by its name
    for kind, paths in (("generations", smk.output.generations), ("judgments", smk.output.judgments)):
        named = {Path(p).stem: str(p) for p in paths}
        check_ids(named, list(conditions), f"{kind} outputs of {run}")
        for cid, path in named.items():
            outputs.setdefault(cid, {})[kind] = path
    make_judge = cache(backend_factory(smk.params.judge, device=smk.params.device, device_map=device_map_of(smk)))
    settings = build(GenerationSettings, smk.params.generation, "generation")
    for cid, condition in conditions.items():
        table, metadata = generate_condition(
            condition=cid,
            spec=as_condition(condition["spec"]).to_params(),
            questions_path=smk.input.questions,
            base_model=smk.params.base_model,
            adapter=adapters[condition["step"]],
            vectors_path=None,
            settings=settings,
            seed=smk.params.seed,
            device=smk.params.device,
            dtype=smk.params.dtype,
            scratch_dir=Path(outputs[cid]["generations"]).parent,
            device_map=device_map_of(smk),
        )
        write_parquet(outputs[cid]["generations"], table, metadata=metadata)
        judgments, metadata = judge_table(
            outputs[cid]["generations"], smk.input.rubrics, smk.params.judge, smk.params.device, make_backend=make_judge
        )
        write_parquet(outputs[cid]["judgments"], judgments, metadata=metadata)


run_script(snakemake, main)
