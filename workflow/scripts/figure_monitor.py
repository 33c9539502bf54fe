"""The trait monitor's figures (docs/trait-monitoring.md), from the stage tables."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.model.runner import run_script


def main(smk):
    import json

    import pandas as pd
    from emlab.core.keyed import tables_by_id
    from emlab.monitor import figures as F

    runs = dict(smk.params.runs)
    tables = tables_by_id(smk.input.tables, "run", runs, "monitor drift tables")  # keyed by the run id inside
    meta = json.loads(Path(smk.input.meta).read_text())
    pc1 = json.loads(Path(smk.input.pc1).read_text())
    o = smk.output
    F.pc1_drift(tables, runs, pc1, o.pc1_drift, o.pc1_drift_pdf)
    F.decomposition(tables, meta["alignment_traits"], o.decomposition, o.decomposition_pdf)
    F.feature_sets(pd.read_csv(smk.input.evaluation), o.feature_sets, o.feature_sets_pdf)
    F.pc1_loadings(pc1, o.pc1_loadings, o.pc1_loadings_pdf)
    F.trait_cosine(pd.read_csv(smk.input.cosine), int(meta["layer"]), o.trait_cosine, o.trait_cosine_pdf)
    F.lopo(pd.read_csv(smk.input.lopo), o.lopo, o.lopo_pdf)
    F.alarm_probability(pd.read_csv(smk.input.alarm_steps), o.alarm_probability, o.alarm_probability_pdf)


run_script(snakemake, main, uses_torch=False)
