# EM / coherence rates with bootstrap intervals, per condition and per question.
# Thresholds enter here (and in directions), never upstream.


rule em_metrics:
    input:
        # in plan order: the row order of the tables
        judgments=get_condition_judgments,
    output:
        by_condition=f"{{mroot}}/metrics/em_by_condition.csv",
        by_question=f"{{mroot}}/metrics/em_by_question.csv",
    params:
        conditions=get_condition_table,
        thresholds=canonical(config["thresholds"]),
        seed=canonical(config["seed"]),
        base_model=get_model_key,
    log:
        f"{{mroot}}/logs/metrics/em_metrics.log",
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    script:
        "../workflow/scripts/em_metrics.py"
