"""Score every response of one condition 0-100 on each judge metric (raw scores + mass)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.model.runner import device_map_of, run_script


def main(smk):
    from emlab.core.atomic import write_parquet
    from emlab.em.judging.backends import judge_table

    judgments, metadata = judge_table(
        smk.input.responses,
        smk.input.rubrics,
        smk.params.judge,
        device=smk.params.device,
        device_map=device_map_of(smk),
    )
    write_parquet(smk.output[0], judgments, metadata=metadata)


run_script(snakemake, main)
