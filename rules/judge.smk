# Raw 0-100 judge scores (logprob-weighted) for every response and metric.
# No thresholds here: they are applied downstream.


rule judge:
    input:
        responses=f"{{mroot}}/generations/{{condition}}.parquet",
        rubrics=get_condition_rubrics,
        judge_model=judge_model_input(),
    output:
        f"{{mroot}}/judgments/{{condition}}.parquet",
    wildcard_constraints:  # the monitor runs' checkpoint labels: rule monitor_labels__<run> (rules/traits.smk)
        condition=one_of(_all("unbundled")),
    params:
        judge=get_condition_judge_params,
        device=config["device"],
    log:
        f"{{mroot}}/logs/judge/{{condition}}.log",
    benchmark:
        f"{{mroot}}/benchmarks/judge/{{condition}}.tsv"
    threads: config["threads"]
    resources:
        **(model_resources() if config["judge"]["backend"] == "hf" else {"mem_mb": 2000, "runtime": 600}),
    conda:
        ENV
    script:
        "../workflow/scripts/judge.py"
