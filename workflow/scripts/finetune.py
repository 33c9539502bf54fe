"""Fine-tune (LoRA, or full) of the base model on one dataset's training split (loss on assistant replies)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from emlab.runner import run_script  # noqa: E402


def main(smk):
    from emlab.finetune import TrainingSettings, fine_tune, lora_settings
    from emlab.settings import build

    name = smk.wildcards.finetune
    fine_tune(
        base_model_path=smk.params.base_model,
        train_path=smk.input.train,
        eval_path=smk.input.eval,
        lora=lora_settings(smk.params.lora, f"finetunes.{name}.lora"),
        training=build(TrainingSettings, smk.params.training, f"finetunes.{name}.training"),
        out_dir=smk.output.adapter,
        log_csv=smk.output.train_log,
        summary_json=smk.output.summary,
        checkpoint_dir=smk.params.checkpoint_dir,
        seed=smk.params.seed,
        device=smk.params.device,
        dtype=smk.params.dtype,
    )


run_script(snakemake, main)  # noqa: F821
