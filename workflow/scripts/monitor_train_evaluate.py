"""Fit the trait monitor on the calibration runs, evaluate it and every baseline on the held-out runs, save it.

The runs may come from several base models: the monitor is then pooled over their calibration runs, and
evaluation_by_model.csv compares it with a monitor fitted on each model's runs alone."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.model.runner import run_script


def main(smk):
    import pandas as pd
    from emlab.core.atomic import write_csv, write_json
    from emlab.core.errors import EMLabError
    from emlab.core.settings import build
    from emlab.monitor import metas as MT
    from emlab.monitor import regressor as M
    from emlab.monitor import sae as SAE
    from emlab.monitor import stage as S
    from emlab.plan.sae import read_sae

    settings = build(M.MonitorSettings, smk.params.monitor, "config monitor")
    runs = dict(smk.params.runs)  # name -> {perturbation, role, model}
    names = list(runs)
    # every model's directions.json, keyed by the model key it carries (input.metas), and the models' sources
    # (params.models: key -> {source, family, size_b}); a rule of one model passes input.meta and no models
    config_models = getattr(smk.params, "models", None)
    metas = MT.read_metas(MT.meta_inputs(smk.input), config_models)
    models = MT.model_table(metas, config_models)  # key -> {source, family, size_b, layer}
    traits, trait_version = MT.pooled_traits(metas)
    model_of = S.run_models(runs, list(models))
    # each file is matched to its run by the run id it carries (emlab.core.keyed), never by list position
    tables, deltas = S.read_grid(smk.input.tables, smk.input.deltas, names)
    tables = S.attach_models(tables, model_of)  # each table's model column checked here, once
    fit_models = list(dict.fromkeys(model_of[r] for r in names if runs[r]["role"] == "calibration"))
    # the SAE baseline (monitor.sae): the drift of its features joins the tables as sae.<feature> columns, the
    # features chosen on the calibration rows only; without an SAE, its evaluation row says so. An SAE reads
    # one model's activations (monitor.sae.model): only that model's runs get the columns. With one fitted model
    # the row is evaluated with every feature set; in a pool, on that model's own calibration and held-out rows
    sae_note, sae_features, sae_tables = SAE.NO_SAE_NOTE, SAE.empty_selection(), {}
    if getattr(smk.input, "sae_cfg", None):
        sae_key = smk.params.sae.get("model") or (fit_models[0] if len(fit_models) == 1 else None)
        if sae_key not in fit_models:
            raise EMLabError(
                f"monitor.sae: the SAE's model {sae_key!r} is not one the monitor is fitted on ({', '.join(fit_models)})"
            )
        sae = read_sae(Path(smk.input.sae_cfg).parent)
        own = [r for r in names if model_of[r] == sae_key]
        sae_tables, sae_features, sae_note = SAE.add_sae_columns(
            {r: tables[r] for r in own},
            SAE.read_sae_drift(smk.input.deltas, names, sae.layer, only=own),
            [r for r in own if runs[r]["role"] == "calibration"],
            sae,
            int(smk.params.sae["n_features"]),
            monitored_layer=models[sae_key]["layer"],
        )
        if len(fit_models) == 1:
            tables, sae_tables = {**tables, **sae_tables}, {}
        else:
            sae_note = f"{sae_note}; the SAE of {sae_key}: fitted and scored on that model's runs alone"
    pert = {r: runs[r]["perturbation"] for r in names}

    def data(*roles, model=None):
        chosen = [r for r in names if runs[r]["role"] in roles and model in (None, model_of[r])]
        return S.grid_data(tables, deltas, pert, chosen)

    cal, held = data("calibration"), data("held_out")
    # the stress runs, each kind evaluated on its own (emlab.plan.monitor: __long, __full, __from_<start>), and
    # each stress-arm model's runs (role stress_model: never fitted on) by the pooled monitor
    stress = {}
    for key, role in (("longer", "stress_long"), ("full", "stress_full"), ("start_from_misaligned", "stress_start")):
        d = data(role)
        if d is not None:
            stress[key] = d
    for key in models:
        d = data("stress_model", model=key)
        if d is not None:
            stress[f"model:{key}"] = d
    out = S.evaluate_grid(
        cal, held, stress, traits, settings, list(smk.params.tau_sweep), bool(smk.params.require_both_classes)
    )
    if sae_tables:  # a pooled study's SAE row: that model's runs alone
        own = list(sae_tables)
        sae_cal = S.grid_data(sae_tables, deltas, pert, [r for r in own if runs[r]["role"] == "calibration"])
        sae_held = S.grid_data(sae_tables, deltas, pert, [r for r in own if runs[r]["role"] == "held_out"])
        if sae_cal is not None and sae_held is not None and out["note"] is None:
            row = M.evaluate_feature_set(SAE.FEATURE_SET, sae_cal, sae_held, traits, settings)[0]
            out["evaluation"] = pd.concat([out["evaluation"], pd.DataFrame([row])], ignore_index=True)
    write_csv(smk.output.evaluation, SAE.with_sae_row(out["evaluation"], held, sae_note))
    if hasattr(smk.output, "evaluation_by_model"):
        # the pooled monitor against one fitted on each model's calibration runs alone, per model and on all
        write_csv(smk.output.evaluation_by_model, S.evaluation_by_model(cal, held, traits, settings, list(models)))
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
        write_csv(smk.output.basis_stability, extra["basis_stability"])
        # every model's halves, each tensors file matched to its directions.json by the model key both carry
        dirs = S.directions_by_model(smk.input.tensors, MT.meta_inputs(smk.input), list(models))
        write_csv(smk.output.basis_cosine, S.basis_cosine_table(dirs))
    # The saved monitor is fitted on every calibration run (no class check when the demo allows it) and names
    # the models of its pool, each with its layer (the live monitor reads its own model's).
    reg = M.fit_regressor(cal.table[traits].to_numpy(float), cal.em, settings)
    fitted = [
        M.FittedModel(k, models[k]["source"], models[k]["layer"], models[k]["family"], models[k]["size_b"])
        for k in fit_models
    ]
    mon = M.pooled_monitor(reg, traits, trait_version, fitted, settings.tau)
    M.save_monitor(mon, smk.output.monitor)
    write_csv(smk.output.predictions, S.predictions_table(mon, S.grid_data(tables, deltas, pert, names)))


run_script(snakemake, main)
