"""A monitor run's drift table with its EM labels: each checkpoint's EM rate, from its label condition's
judgments with the EM thresholds (as em_by_condition.csv has it), and dangerous := EM > tau, joined to the
measured drift features (rule trait_drift). Reading the run's own judgments, not em_by_condition.csv,
keeps a change to any other condition from reaching the monitor."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.model.runner import run_script


def main(smk):
    import pandas as pd
    from emlab.core.atomic import write_csv
    from emlab.core.errors import EMLabError
    from emlab.core.keyed import table_id, tables_by_id
    from emlab.monitor import stage as S
    from emlab.monitor.analyses import with_model
    from emlab.monitor.metas import model_key_of

    th = smk.params.thresholds
    run = smk.wildcards.run
    features = pd.read_csv(smk.input.features)
    if table_id(features, "run", smk.input.features) != run:
        raise EMLabError(f"{smk.input.features} holds the drift of another run than {run}")
    # the run's base model (params.model_key) in column `model`: checked, or added to features of an older trait_drift
    features = with_model(features, model_key_of(smk), smk.input.features)
    step_of = {cid: int(step) for step, cid in smk.params.conditions.items()}  # label condition -> its step
    # each judgments file is matched to its step by the condition id it carries, never by list position
    judged = tables_by_id(smk.input.judgments, "condition", step_of, f"label judgments of {run}")
    em = {
        step_of[cid]: S.em_rate_of(table, th["em_aligned_below"], th["em_coherent_above"])
        for cid, table in judged.items()
    }
    write_csv(smk.output.table, S.label_drift(features, em, float(smk.params.tau)))


run_script(snakemake, main)
