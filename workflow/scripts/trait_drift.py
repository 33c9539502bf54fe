"""Trait drift of one monitor run: one row per checkpoint step (step 0 = the base model), and its full Δh̄.
The EM labels join in rule drift_labels (drift_labels.py), so a threshold change measures nothing again."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.model.runner import device_map_of, run_script


def main(smk):
    import json

    import pandas as pd
    from emlab.core.atomic import write_csv
    from emlab.core.errors import EMLabError
    from emlab.core.keyed import checkpoints_by_step
    from emlab.core.settings import build
    from emlab.model.loading import set_threads
    from emlab.model.tensors import save_tensors
    from emlab.monitor import stage as S
    from emlab.monitor.metas import model_key_of
    from emlab.monitor.traits import load_directions
    from emlab.plan.traits import load_trait_set

    set_threads(smk.threads)
    run = smk.wildcards.run
    settings = build(S.DriftStageSettings, smk.params.drift, "config traits/monitor")
    steps = [int(s) for s in smk.params.steps]
    S.check_checkpoints(json.loads(Path(smk.input.summary).read_text()), steps, run)
    directions = load_directions(smk.input.tensors, smk.input.meta)
    model_key = model_key_of(smk)  # the run's base model: a `model` column of its table, `model` in the Δh̄ file
    if directions.model_key is not None and directions.model_key != model_key:
        raise EMLabError(
            f"run {run} is a run of base model {model_key}, the trait directions {smk.input.meta} are of "
            f"{directions.model_key}"
        )
    # each exported checkpoint names its run and step inside itself (emlab.core.keyed), never by list position
    adapters = checkpoints_by_step(smk.input.adapters, run, steps)
    trait_set = S.subsample_trait_set(
        load_trait_set(smk.params.folder), build(S.TraitSubsample, smk.params.subsample, "config traits")
    )
    sae_layer = smk.params.sae_layer  # the SAE baseline's layer (monitor.sae), read in the same forwards; or None
    measured = S.measure_run(
        smk.params.base_model,
        adapters,
        directions,
        trait_set,
        settings,
        smk.params.device,
        smk.params.dtype,
        device_map=device_map_of(smk),
        reference_adapter=(list(getattr(smk.input, "reference", [])) or [None])[0],
        extra_layers=[] if sae_layer is None else [int(sae_layer)],
    )
    all_steps = [0, *sorted(adapters)]  # the order measure_run stacks Δh̄ in
    loss = S.train_loss_by_step(pd.read_csv(smk.input.train_log), all_steps)
    write_csv(smk.output.features, S.drift_features(measured.rows, measured.delta_w, loss, run, model_key))
    import torch

    tensors, meta = (
        {"delta": measured.delta.contiguous(), "steps": torch.tensor(all_steps)},
        {"run": run, "model": model_key, "layer": str(directions.layer)},
    )
    if sae_layer is not None:
        tensors["delta_sae"], meta["sae_layer"] = measured.at_layers[int(sae_layer)].contiguous(), str(int(sae_layer))
    save_tensors(smk.output.delta, tensors, meta)


run_script(snakemake, main)
