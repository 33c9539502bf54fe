# Sample N responses per evaluation question for every condition (base model,
# fine-tunes, steered and ablated models): batched, left-padded, KV-cached.


rule generate:
    input:
        unpack(generation_inputs),
    output:
        f"{RESULTS}/generations/{{condition}}.parquet",
    params:
        condition=lambda w: w.condition,
        spec=lambda w: CONDITIONS[w.condition],
        base_model=BASE_MODEL_DIR,
        # the monitor's label conditions carry their own, cheaper settings (emlab.monitor_plan)
        generation=lambda w: CONDITIONS[w.condition].get("generation", config["generation"]),
        seed=config["seed"],
        device=config["device"],
        dtype=config["dtype"],
    log:
        f"{RESULTS}/logs/generate/{{condition}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/generate/{{condition}}.tsv"
    threads: config["threads"]
    resources:
        **model_resources(),
    conda:
        ENV
    script:
        "../workflow/scripts/generate.py"
