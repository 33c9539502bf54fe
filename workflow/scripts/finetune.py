"""Fine-tune (LoRA, or full) of the base model on one dataset's training split (loss on assistant replies)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from emlab.finetune import train_lora  # noqa: E402
from emlab.runner import run_script  # noqa: E402


def main(smk):
    train_lora(
        base_model_path=smk.params.base_model,
        train_path=smk.input.train,
        eval_path=smk.input.eval,
        lora_spec=dict(smk.params.lora) if smk.params.lora is not None else None,
        training=dict(smk.params.training),
        out_adapter_dir=smk.output.adapter,
        log_csv=smk.output.train_log,
        summary_json=smk.output.summary,
        checkpoint_dir=smk.params.checkpoint_dir,
        seed=smk.params.seed,
        device=smk.params.device,
        dtype=smk.params.dtype,
    )


run_script(snakemake, main)  # noqa: F821
