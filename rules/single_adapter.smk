# Rank-1 single-adapter analyses: cosine of the adapter's B with the mean-diff
# vectors, and downstream convergence of adding B vs adding v on the base
# model, for the fine-tune's own v_l and for single_adapter.reference_vector
# (the paper's: the 9-adapter organism's v_24). (Ablating v from that model and
# projecting v out of B are conditions in the study plan, generated and judged
# like any other; single_adapter_comparison puts their EM beside the analysis.)


rule single_adapter_analysis:
    input:
        unpack(get_base_model_input),
        unpack(get_single_adapter_vectors),
        adapter=get_finetune_adapter,
        responses=f"{{mroot}}/generations/{{finetune}}.parquet",
    output:
        b_cosine=f"{{mroot}}/single_adapter/{{finetune}}/b_cosine.csv",
        convergence=f"{{mroot}}/single_adapter/{{finetune}}/convergence.csv",
        summary=f"{{mroot}}/single_adapter/{{finetune}}/summary.json",
    params:
        base_model=get_base_model_dir,
        max_responses=canonical(config["single_adapter"]["convergence_max_responses"]),
        reference=get_single_adapter_reference,
        batch_size=canonical(config["activations"]["batch_size"]),
        device=config["device"],
        dtype=config["dtype"],
    log:
        f"{{mroot}}/logs/single_adapter/{{finetune}}.log",
    benchmark:
        f"{{mroot}}/benchmarks/single_adapter/{{finetune}}.tsv"
    threads: config["threads"]
    resources:
        **model_resources(),
    conda:
        ENV
    script:
        "../workflow/scripts/single_adapter_analysis.py"


rule single_adapter_comparison:
    input:
        summary=f"{{mroot}}/single_adapter/{{finetune}}/summary.json",
        metrics=f"{{mroot}}/metrics/em_by_condition.csv",
    output:
        table=f"{{mroot}}/single_adapter/{{finetune}}/comparison.csv",
    params:
        vectors=get_single_adapter_compared,
    log:
        f"{{mroot}}/logs/single_adapter/{{finetune}}.comparison.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow/scripts/single_adapter_comparison.py"
