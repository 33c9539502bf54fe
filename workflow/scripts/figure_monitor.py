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

    runs = dict(smk.params.runs)  # name -> {perturbation, role, model}
    tables = tables_by_id(smk.input.tables, "run", runs, "monitor drift tables")  # keyed by the run id inside
    # the trait names and the cosine figure's layer: one model's directions.json, the one cosine.csv is of
    meta = json.loads(Path(smk.input.meta).read_text())
    pc1 = json.loads(Path(smk.input.pc1).read_text())
    o = smk.output
    F.pc1_drift(tables, runs, pc1, o.pc1_drift, o.pc1_drift_pdf)
    F.decomposition(tables, meta["alignment_traits"], o.decomposition, o.decomposition_pdf)
    F.feature_sets(pd.read_csv(smk.input.evaluation), o.feature_sets, o.feature_sets_pdf)
    F.pc1_loadings(pc1, o.pc1_loadings, o.pc1_loadings_pdf)
    several = len({r.get("model") for r in runs.values()}) > 1
    F.trait_cosine(
        pd.read_csv(smk.input.cosine),
        int(meta["layer"]),
        o.trait_cosine,
        o.trait_cosine_pdf,
        model=meta.get("model_key") if several else None,
    )
    F.lopo(pd.read_csv(smk.input.lopo), o.lopo, o.lopo_pdf)
    F.alarm_probability(pd.read_csv(smk.input.alarm_steps), o.alarm_probability, o.alarm_probability_pdf)
    # drift geometry (rule monitor_analyses: Figs. 5, 8, 10)
    tau, tolerance = float(smk.params.tau), float(smk.params.pair_tolerance)
    pairs = pd.read_csv(smk.input.pairs)
    traits = meta["alignment_traits"]
    F.matched_pairs(tables, runs, pc1, pairs, traits, tau, tolerance, o.matched_pairs, o.matched_pairs_pdf)
    F.severity_ordering(
        pd.read_csv(smk.input.severity), pd.read_csv(smk.input.severity_spearman), o.severity, o.severity_pdf
    )
    F.trait_behaviour(
        pd.read_csv(smk.input.trait_points),
        pd.read_csv(smk.input.trait_behaviour),
        o.trait_behaviour,
        o.trait_behaviour_pdf,
    )


run_script(snakemake, main, uses_torch=False)
