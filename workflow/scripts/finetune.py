"""Fine-tune (LoRA, or full) of the base model on one dataset's training split (loss on assistant replies)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))

from emlab.model.runner import run_script


def main(smk):
    from emlab.core.settings import build
    from emlab.em.finetune import TrainingSettings, fine_tune, lora_settings

    name = smk.wildcards.finetune
    training = dict(smk.params.training)
    monitor = training.pop("monitor", None)
    on_step = [] if monitor is None else [live_monitor(smk, monitor, name)]
    fine_tune(
        base_model_path=smk.params.base_model,
        train_path=smk.input.train,
        eval_path=smk.input.eval,
        lora=lora_settings(smk.params.lora, f"finetunes.{name}.lora"),
        training=build(TrainingSettings, training, f"finetunes.{name}.training"),
        out_dir=smk.output.adapter,
        log_csv=smk.output.train_log,
        summary_json=smk.output.summary,
        checkpoint_dir=smk.params.checkpoint_dir,
        seed=smk.params.seed,
        device=smk.params.device,
        dtype=smk.params.dtype,
        on_step=on_step,
        init_adapter=getattr(smk.input, "start_adapter", None),
    )


def live_monitor(smk, monitor: dict, name: str):
    """training.monitor: the saved monitor measuring this fine-tune's trait drift as it trains."""
    from emlab.core.settings import build
    from emlab.monitor.live import LiveMonitorCallback, LiveMonitorSettings
    from emlab.monitor.stage import TraitSubsample, subsample_trait_set
    from emlab.plan.traits import load_trait_set

    p = smk.params.live_monitor
    trait_set = subsample_trait_set(load_trait_set(p["folder"]), build(TraitSubsample, p["subsample"], "config traits"))
    settings = build(
        LiveMonitorSettings, {k: monitor[k] for k in ("every", "action")}, f"finetunes.{name}.training.monitor"
    )
    return LiveMonitorCallback(
        smk.input.monitor,
        smk.input.directions,
        smk.input.directions_meta,
        trait_set,
        p["model_id"],
        settings,
        p["batch_size"],
    )


run_script(snakemake, main)
