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
    from emlab.monitor import stage as S

    settings = build(M.MonitorSettings, smk.params.monitor, "config monitor")
    runs = dict(smk.params.runs)  # name -> {perturbation, role}
    names = list(runs)
    # each file is matched to its run by the run id it carries (emlab.core.keyed), never by list position
    tables, deltas = S.read_grid(smk.input.tables, smk.input.deltas, names)
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
    write_csv(smk.output.evaluation, out["evaluation"])
    write_csv(smk.output.lopo, out["lopo"])
    write_csv(smk.output.tau_sweep, out["tau_sweep"])
    write_csv(smk.output.alarm_steps, out["alarm_steps"])
    write_csv(smk.output.alarm_runs, out["alarm_runs"])
    write_csv(smk.output.stress, out["stress"])
    write_json(smk.output.pc1, {**out["pc1"], "note": out["note"]})
    # The saved monitor is fitted on every calibration run (no class check when the demo allows it).
    reg = M.fit_regressor(cal.table[traits].to_numpy(float), cal.em, settings)
    mon = M.TraitMonitor(reg, tuple(traits), int(meta["layer"]), meta["trait_version"], meta["model_id"], settings.tau)
    M.save_monitor(mon, smk.output.monitor)
    write_csv(smk.output.predictions, S.predictions_table(mon, S.grid_data(tables, deltas, pert, names)))


run_script(snakemake, main)
