# Fine-tunes (LoRA adapters with peft, or full fine-tuning): loss on the assistant reply only.
# checkpoints/ (training.checkpoint_every) is deliberately not an output: Snakemake
# deletes a failed job's outputs, and the checkpoints are what a re-run resumes from.


rule finetune:
    input:
        unpack(get_finetune_inputs),
        train=get_finetune_train,
        eval=get_finetune_eval,
    output:
        adapter=directory(f"{{mroot}}/finetunes/{{finetune}}/adapter"),
        train_log=f"{{mroot}}/finetunes/{{finetune}}/train_log.csv",
        summary=f"{{mroot}}/finetunes/{{finetune}}/summary.json",
    params:
        base_model=get_base_model_dir,
        # the lora spec with concrete layer indices; None for a full fine-tune
        lora=get_finetune_lora,
        training=get_finetune_training,
        checkpoint_dir=get_checkpoint_dir,
        # training.monitor only: the trait files and measurement settings the live monitor uses
        live_monitor=get_live_monitor_settings,
        seed=get_finetune_seed,
        device=config["device"],
        dtype=config["dtype"],
    log:
        f"{{mroot}}/logs/finetune/{{finetune}}.log",
    benchmark:
        f"{{mroot}}/benchmarks/finetune/{{finetune}}.tsv"
    threads: config["threads"]
    resources:
        **model_resources("finetune_runtime"),
    conda:
        ENV
    script:
        "../workflow/scripts/finetune.py"
