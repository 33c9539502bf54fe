# Rank-1 single-adapter analyses: cosine of the adapter's B with the mean-diff
# vectors, and downstream convergence of adding B vs adding v_l on the base
# model. (Ablating v_l from that model and projecting v_l out of B are
# conditions in the study plan, generated and judged like any other.)


rule single_adapter_analysis:
    input:
        unpack(get_base_model_input),
        adapter=get_finetune_adapter,
        vectors=f"{RESULTS}/directions/{{finetune}}.safetensors",
        responses=f"{RESULTS}/generations/{{finetune}}.parquet",
    output:
        b_cosine=f"{RESULTS}/single_adapter/{{finetune}}/b_cosine.csv",
        convergence=f"{RESULTS}/single_adapter/{{finetune}}/convergence.csv",
        summary=f"{RESULTS}/single_adapter/{{finetune}}/summary.json",
    params:
        base_model=BASE_MODEL_DIR,
        max_responses=canonical(config["single_adapter"]["convergence_max_responses"]),
        batch_size=canonical(config["activations"]["batch_size"]),
        device=config["device"],
        dtype=config["dtype"],
    log:
        f"{RESULTS}/logs/single_adapter/{{finetune}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/single_adapter/{{finetune}}.tsv"
    threads: config["threads"]
    resources:
        **model_resources(),
    conda:
        ENV
    script:
        "../workflow/scripts/single_adapter_analysis.py"
