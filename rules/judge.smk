# Raw 0-100 judge scores (logprob-weighted) for every response and metric.
# No thresholds here: they are applied downstream.


rule judge:
    input:
        responses=f"{RESULTS}/generations/{{condition}}.parquet",
        rubrics=lambda w: rubric_files(w.condition),
        judge_model=judge_model_input(),
    output:
        f"{RESULTS}/judgments/{{condition}}.parquet",
    params:
        judge=lambda w: judge_params(w.condition),
        device=config["device"],
    log:
        f"{RESULTS}/logs/judge/{{condition}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/judge/{{condition}}.tsv"
    threads: config["threads"]
    resources:
        **(model_resources() if config["judge"]["backend"] == "hf" else {"mem_mb": 2000, "runtime": 600}),
    conda:
        ENV
    script:
        "../workflow/scripts/judge.py"
