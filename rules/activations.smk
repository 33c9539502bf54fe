# Per-layer residual-stream means over the answer tokens (and the prompt tokens)
# of every response of a fine-tune, run through that fine-tune.


rule cache_activations:
    input:
        unpack(get_base_model_input),
        adapter=get_finetune_adapter,
        responses=f"{{mroot}}/generations/{{finetune}}.parquet",
    output:
        tensors=f"{{mroot}}/activations/{{finetune}}.safetensors",
        index=f"{{mroot}}/activations/{{finetune}}.index.parquet",
    params:
        base_model=get_base_model_dir,
        batch_size=canonical(config["activations"]["batch_size"]),
        device=config["device"],
        dtype=config["dtype"],
    log:
        f"{{mroot}}/logs/activations/{{finetune}}.log",
    benchmark:
        f"{{mroot}}/benchmarks/activations/{{finetune}}.tsv"
    threads: config["threads"]
    resources:
        **model_resources(),
    conda:
        ENV
    script:
        "../workflow/scripts/cache_activations.py"
