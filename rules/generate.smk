# Sample N responses per evaluation question for every condition (base model,
# fine-tunes, checkpoints, steered and ablated models): batched, left-padded, KV-cached.
# The conditions come from emlab.plan.study.condition_plan (each kind in
# workflow/src/emlab/interventions/); steering- and ablation-only rules sit in
# rules/steering.smk and rules/ablation.smk.


rule generate:
    input:
        unpack(generation_inputs),
    output:
        f"{RESULTS}/generations/{{condition}}.parquet",
    params:
        condition=lambda w: w.condition,
        spec=lambda w: canonical(CONDITIONS[w.condition].to_params()),
        base_model=BASE_MODEL_DIR,
        # the monitor's label conditions and scalar patching carry their own settings (emlab.plan.study)
        generation=lambda w: canonical(generation_settings(config, CONDITIONS[w.condition])),
        seed=canonical(config["seed"]),
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
