"""Drift geometry of the monitor grid (paper Figs. 5, 8, 10): matched-|PC1| pairs, the severity ordering across
perturbations, and each trait's drift against a judge of the same trait (emlab.monitor.analyses)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.model.runner import run_script


def main(smk):
    import json

    from emlab.core.atomic import write_csv
    from emlab.core.keyed import tables_by_id
    from emlab.core.settings import build
    from emlab.monitor import analyses as A
    from emlab.monitor import metas as S

    settings = build(A.AnalysisSettings, smk.params.analyses, "config monitor.analyses")
    runs = dict(smk.params.runs)  # name -> {perturbation, role, model}
    tables = tables_by_id(smk.input.tables, "run", runs, "monitor drift tables")  # keyed by the run id inside
    # the trait names: every model's directions.json (input.metas, keyed by the model key each carries) must
    # share them; a rule of one model passes input.meta
    traits, _version = S.pooled_traits(S.read_metas(S.meta_inputs(smk.input), getattr(smk.params, "models", None)))
    loadings = json.loads(Path(smk.input.pc1).read_text())["loadings"]
    table = A.grid_table(tables, runs)
    o = smk.output
    write_csv(o.pairs, A.matched_pc1_pairs(table, loadings, traits, settings.pair_tolerance))
    severity = A.severity_by_perturbation(table, loadings, traits, settings.severity_at)
    write_csv(o.severity, severity)
    write_csv(o.severity_spearman, A.severity_ordering(severity))
    metrics = dict(smk.params.trait_metrics)  # alignment trait -> its judge metric (rubric trait_<trait>.yaml)
    if settings.trait_judges:
        # run -> step -> label condition; each judgments file is matched by the condition id it carries
        label_conditions = {
            r: {int(s): c for s, c in steps.items()} for r, steps in smk.params.label_conditions.items()
        }
        wanted = {c for steps in label_conditions.values() for c in steps.values()}
        judged = tables_by_id(smk.input.judgments, "condition", wanted, "trait-judged label judgments")
        scores = A.mean_trait_scores(judged, metrics)
        points = A.trait_behaviour_points(table, label_conditions, scores, traits)
        agreement = A.trait_behaviour_agreement(points, metrics)
    else:
        points, agreement = A.trait_behaviour_off(metrics)
    write_csv(o.trait_points, points)
    write_csv(o.trait_behaviour, agreement)


run_script(snakemake, main, uses_torch=False)
