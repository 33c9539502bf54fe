"""Fit the trait monitor on the calibration runs, evaluate it and every baseline on the held-out runs, save it."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.model.runner import run_script


def main(smk):
    import json

    from emlab.core.atomic import write_csv, write_json
    from emlab.core.settings import build
    from emlab.monitor import regressor as M
    from emlab.monitor import sae as SAE
    from emlab.monitor import stage as S
    from emlab.plan.sae import read_sae

    settings = build(M.MonitorSettings, smk.params.monitor, "config monitor")
    runs = dict(smk.params.runs)  # name -> {perturbation, role}
    names = list(runs)
    # each file is matched to its run by the run id it carries (emlab.core.keyed), never by list position
    tables, deltas = S.read_grid(smk.input.tables, smk.input.deltas, names)
    # the SAE baseline (monitor.sae): the drift of its features joins the tables as sae.<feature> columns, the
    # features chosen on the calibration rows only; without an SAE, its evaluation row says so
    sae_note, sae_features = SAE.NO_SAE_NOTE, SAE.empty_selection()
    if getattr(smk.input, "sae_cfg", None):
        sae = read_sae(Path(smk.input.sae_cfg).parent)
        tables, sae_features, sae_note = SAE.add_sae_columns(
            tables,
            SAE.read_sae_drift(smk.input.deltas, names, sae.layer),
            [r for r in names if runs[r]["role"] == "calibration"],
            sae,
            int(smk.params.sae["n_features"]),
            monitored_layer=int(json.loads(Path(smk.input.meta).read_text())["layer"]),
        )
    meta = json.loads(Path(smk.input.meta).read_text())
    traits = list(meta["alignment_traits"])
    pert = {r: runs[r]["perturbation"] for r in names}

    def data(*roles):
        return S.grid_data(tables, deltas, pert, [r for r in names if runs[r]["role"] in roles])

    cal, held = data("calibration"), data("held_out")
    # the stress runs, each evaluated on its own (emlab.plan.monitor: __long, __full, __from_<start>)
    stress = {}
    for key, role in (("longer", "stress_long"), ("full", "stress_full"), ("start_from_misaligned", "stress_start")):
        d = data(role)
        if d is not None:
            stress[key] = d
    out = S.evaluate_grid(
        cal, held, stress, traits, settings, list(smk.params.tau_sweep), bool(smk.params.require_both_classes)
    )
    write_csv(smk.output.evaluation, SAE.with_sae_row(out["evaluation"], held, sae_note))
    write_csv(smk.output.sae_features, sae_features)
    write_csv(smk.output.lopo, out["lopo"])
    write_csv(smk.output.tau_sweep, out["tau_sweep"])
    write_csv(smk.output.alarm_steps, out["alarm_steps"])
    write_csv(smk.output.alarm_runs, out["alarm_runs"])
    write_csv(smk.output.stress, out["stress"])
    write_json(smk.output.pc1, {**out["pc1"], "note": out["note"]})
    # ridge and gradient-boosted trees beside the forest, and the prompt-half bases (monitor.basis_stability)
    comparison = build(M.RegressorComparison, smk.params.regressor_comparison, "config monitor.regressor_comparison")
    basis_stability = bool(smk.params.basis_stability)
    extra = S.comparison_tables(
        cal, held, traits, settings, comparison, basis_stability, bool(smk.params.require_both_classes)
    )
    write_csv(smk.output.regressors, extra["regressors"])
    if basis_stability:
        from emlab.monitor.traits import basis_stability_cosines, load_directions

        write_csv(smk.output.basis_stability, extra["basis_stability"])
        write_csv(smk.output.basis_cosine, basis_stability_cosines(load_directions(smk.input.tensors, smk.input.meta)))
    # The saved monitor is fitted on every calibration run (no class check when the demo allows it).
    reg = M.fit_regressor(cal.table[traits].to_numpy(float), cal.em, settings)
    mon = M.TraitMonitor(reg, tuple(traits), int(meta["layer"]), meta["trait_version"], meta["model_id"], settings.tau)
    M.save_monitor(mon, smk.output.monitor)
    write_csv(smk.output.predictions, S.predictions_table(mon, S.grid_data(tables, deltas, pert, names)))


run_script(snakemake, main)
