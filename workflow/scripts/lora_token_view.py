"""The HTML token view: example responses of each set, tokens coloured by an adapter's scalar or by KL."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.runner import run_script


def main(smk):
    import pandas as pd
    from emlab.lora_figures import token_view
    from emlab.lora_scalars import load_capture
    from emlab.probes import ResponseSetSettings, select_response_sets
    from emlab.settings import build

    capture = load_capture(smk.input.tensors, smk.input.tokens)
    sets = select_response_sets(
        pd.read_parquet(smk.input.judgments),
        build(ResponseSetSettings, smk.params.sets, "lora_interp.sets"),
        where=str(smk.input.judgments),
    )
    questions = dict(enumerate(pd.read_parquet(smk.input.responses, columns=["question"])["question"].astype(str)))
    token_view(
        capture.scalars,
        capture.tokens,
        capture.adapters,
        sets,
        questions,
        smk.wildcards.ft,
        smk.output.html,
        int(smk.params.per_set),
    )


run_script(snakemake, main)
