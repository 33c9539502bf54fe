"""Single rank-1 adapter: own vs reference vector, cos(B, v), convergence and EM under ablation / projection."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.model.runner import run_script


def main(smk):
    import json

    import pandas as pd
    from emlab.core.atomic import write_csv
    from emlab.lora.single_adapter_comparison import comparison_table

    summary = json.loads(Path(smk.input.summary).read_text())
    metrics = pd.read_csv(smk.input.metrics, keep_default_na=False, na_values=[""])
    table = comparison_table(smk.wildcards.finetune, list(smk.params.vectors), summary, metrics)
    write_csv(smk.output.table, table)


run_script(snakemake, main, uses_torch=False)
