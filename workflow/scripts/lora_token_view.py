"""The HTML token view: example responses of each set, tokens coloured by an adapter's scalar or by KL."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.model.runner import run_script


def main(smk):
    import pandas as pd
    from emlab.core.settings import build
    from emlab.lora.figures import token_view
    from emlab.lora.probes import ResponseSetSettings, select_response_sets
    from emlab.lora.scalars import load_capture

    capture = load_capture(smk.input.tensors, smk.input.tokens)
    sets = select_response_sets(
        pd.read_parquet(smk.input.judgments),
        build(ResponseSetSettings, smk.params.sets, "lora_interp.sets"),
        where=str(smk.input.judgments),
    )
    # each captured response's question, matched by (question_id, sample_idx), not by row position
    responses = pd.read_parquet(smk.input.responses, columns=["question_id", "sample_idx", "question"])
    by_key = {(str(q), int(s)): str(text) for q, s, text in responses.itertuples(index=False)}
    first = capture.tokens.drop_duplicates("response")[["response", "question_id", "sample_idx"]]
    questions = {int(r): by_key.get((str(q), int(s)), "") for r, q, s in first.itertuples(index=False)}
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
