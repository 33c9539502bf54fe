# LoRA fine-tunes (peft): loss on the assistant reply only.


rule finetune:
    input:
        unpack(lambda w: {"base_model": base_model_input()}),
        train=lambda w: f"{RESULTS}/datasets/{config['finetunes'][w.finetune]['dataset']}/train.jsonl",
        eval=lambda w: f"{RESULTS}/datasets/{config['finetunes'][w.finetune]['dataset']}/eval.jsonl",
    output:
        adapter=directory(f"{RESULTS}/finetunes/{{finetune}}/adapter"),
        train_log=f"{RESULTS}/finetunes/{{finetune}}/train_log.csv",
        summary=f"{RESULTS}/finetunes/{{finetune}}/summary.json",
    params:
        base_model=BASE_MODEL_DIR,
        lora=lambda w: dict(config["finetunes"][w.finetune]["lora"], resolved_layers=FINETUNE_LAYERS[w.finetune]),
        training=lambda w: training_settings(config, w.finetune),
        checkpoint_dir=lambda w: f"{RESULTS}/finetunes/{w.finetune}/checkpoints",
        seed=config["seed"],
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
