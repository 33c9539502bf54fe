"""Score every response of one condition 0-100 on each judge metric (raw scores + mass)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

import pandas as pd
from emlab.core.atomic import write_parquet
from emlab.core.errors import EMLabError
from emlab.core.provenance import read_metadata
from emlab.em.judging import judge_responses, load_rubrics
from emlab.em.judging.backends import backend_factory, judge_model_id
from emlab.model.runner import device_map_of, run_script
from emlab.model.runtime import judgment_metadata


def main(smk):
    params = smk.params.judge
    rubrics = load_rubrics(list(smk.input.rubrics), list(params["metrics"]))
    responses = pd.read_parquet(smk.input.responses)
    if responses.empty and "na_reason" not in read_metadata(smk.input.responses):
        raise EMLabError(
            f"{smk.input.responses} holds no responses and no reason why; delete it and re-run the generate rule"
        )
    judgments = judge_responses(
        responses,
        rubrics,
        backend_factory(params, device=smk.params.device, device_map=device_map_of(smk)),
        backend_name=params["backend"],
        judge_model=judge_model_id(params, device=smk.params.device),
        cache_path=params["cache"],
        min_number_mass=float(params["min_number_mass"]),
    )
    write_parquet(smk.output[0], judgments, metadata=judgment_metadata(smk.input.responses, params, smk.params.device))


run_script(snakemake, main)
