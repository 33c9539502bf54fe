"""Score every response of one condition 0-100 on each judge metric (raw scores + mass)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

import pandas as pd  # noqa: E402

from emlab.atomic import write_parquet  # noqa: E402
from emlab.judging import judge_responses, load_rubrics  # noqa: E402
from emlab.judging.backends import backend_factory, judge_model_id  # noqa: E402
from emlab.provenance import judgment_metadata  # noqa: E402
from emlab.runner import device_map_of, run_script  # noqa: E402


def main(smk):
    params = smk.params.judge
    rubrics = load_rubrics(list(smk.input.rubrics), list(params["metrics"]))
    responses = pd.read_parquet(smk.input.responses)
    judgments = judge_responses(
        responses, rubrics, backend_factory(params, device=smk.params.device, device_map=device_map_of(smk)),
        backend_name=params["backend"], judge_model=judge_model_id(params, device=smk.params.device),
        cache_path=params["cache"], min_number_mass=float(params["min_number_mass"]),
    )
    write_parquet(smk.output[0], judgments, metadata=judgment_metadata(smk.input.responses, params, smk.params.device))


run_script(snakemake, main)  # noqa: F821
