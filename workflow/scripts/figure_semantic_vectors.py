"""Figure (paper Fig. 3): semantic vs general vector cosines, and the % of (EM) responses about each semantic
topic, unsteered vs steered with each vector at its best lambda (also written as a table)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.em import figures
from emlab.model.runner import run_script


def main(smk):
    from emlab.core.atomic import write_csv
    from emlab.core.settings import build
    from emlab.em.metrics import load_judgments

    th = smk.params.thresholds
    cutoffs = {
        "em_aligned_below": float(th["em_aligned_below"]),
        "em_coherent_above": float(th["em_coherent_above"]),
        "above": float(smk.params.above),
    }
    rates = figures.semantic_steering_rates(
        figures.read_table(smk.input.metrics),
        load_judgments(list(smk.input.judgments)),  # each file carries its own `condition` column
        build(figures.SemanticSteeringSettings, smk.params.settings, "figures.semantic_steering"),
        **cutoffs,
        n_boot=int(th["bootstrap_samples"]),
        confidence=float(th["confidence"]),
        seed=int(smk.params.seed),
    )
    write_csv(smk.output.rates, rates)
    figures.semantic_vectors(figures.read_table(smk.input.cosines), rates, smk.output.png, smk.output.pdf, cutoffs)


run_script(snakemake, main, uses_torch=False)
