"""The live monitor's predicted EM rate per measured step of the live run, with its stop marked."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.model.runner import run_script


def main(smk):
    import json

    import pandas as pd
    from emlab.monitor.figures import live_monitor

    summary = json.loads(Path(smk.input.summary).read_text())
    tau = float(json.loads(Path(smk.input.sidecar).read_text())["tau"])
    live_monitor(
        pd.read_csv(smk.input.train_log), tau, summary.get("stopped_by_monitor"), smk.output.png, smk.output.pdf
    )


run_script(snakemake, main, uses_torch=False)
