# Per-layer residual-stream means over the answer tokens (and the prompt tokens)
# of every response of a fine-tune, run through that fine-tune.


rule cache_activations:
    input:
        unpack(get_base_model_input),
        adapter=get_finetune_adapter,
        responses=f"{RESULTS}/generations/{{finetune}}.parquet",
    output:
        tensors=f"{RESULTS}/activations/{{finetune}}.safetensors",
        index=f"{RESULTS}/activations/{{finetune}}.index.parquet",
    params:
        base_model=BASE_MODEL_DIR,
        batch_size=canonical(config["activations"]["batch_size"]),
        device=config["device"],
        dtype=config["dtype"],
    log:
        f"{RESULTS}/logs/activations/{{finetune}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/activations/{{finetune}}.tsv"
    threads: config["threads"]
    resources:
        **model_resources(),
    conda:
        ENV
    script:
        "../workflow/scripts/cache_activations.py"
