# Fine-tunes (LoRA adapters with peft, or full fine-tuning): loss on the assistant reply only.
# checkpoints/ (training.checkpoint_every) is deliberately not an output: Snakemake
# deletes a failed job's outputs, and the checkpoints are what a re-run resumes from.


rule finetune:
    input:
        unpack(lambda w: {"base_model": base_model_input(), **live_monitor_inputs(w), **start_adapter_input(w)}),
        train=lambda w: f"{RESULTS}/datasets/{config['finetunes'][w.finetune]['dataset']}/train.jsonl",
        eval=lambda w: f"{RESULTS}/datasets/{config['finetunes'][w.finetune]['dataset']}/eval.jsonl",
    output:
        adapter=directory(f"{RESULTS}/finetunes/{{finetune}}/adapter"),
        train_log=f"{RESULTS}/finetunes/{{finetune}}/train_log.csv",
        summary=f"{RESULTS}/finetunes/{{finetune}}/summary.json",
    params:
        base_model=BASE_MODEL_DIR,
        # the lora spec with concrete layer indices; None for a full fine-tune
        lora=lambda w: (None if config["finetunes"][w.finetune]["lora"] is None
                        else canonical(dict(config["finetunes"][w.finetune]["lora"], resolved_layers=FINETUNE_LAYERS[w.finetune]))),
        training=lambda w: canonical(training_settings(config, w.finetune)),
        checkpoint_dir=lambda w: f"{RESULTS}/finetunes/{w.finetune}/checkpoints",
        # training.monitor only: the trait files and measurement settings the live monitor uses
        live_monitor=lambda w: (canonical({"folder": repo_path(config["traits"]["folder"]), "subsample": TRAIT_SUBSAMPLE,
                                           "model_id": config["base_model"]["source"],
                                           "batch_size": config["traits"]["batch_size"]})
                                if live_monitor_inputs(w) else None),
        seed=lambda w: canonical(finetune_seed(config, w.finetune)),
        device=config["device"],
        dtype=config["dtype"],
    log:
        f"{RESULTS}/logs/finetune/{{finetune}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/finetune/{{finetune}}.tsv"
    threads: config["threads"]
    resources:
        **model_resources("finetune_runtime"),
    conda:
        ENV
    script:
        "../workflow/scripts/finetune.py"
