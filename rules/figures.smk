# Figures (PNG + PDF) for the Snakemake report.


rule figure_em_by_condition:
    input:
        f"{RESULTS}/metrics/em_by_condition.csv",
    output:
        png=report(f"{RESULTS}/figures/em_by_condition.png", caption="../workflow/report/em_by_condition.rst", category="Emergent misalignment"),
        pdf=f"{RESULTS}/figures/em_by_condition.pdf",
    log:
        f"{RESULTS}/logs/figures/em_by_condition.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow/scripts/figure_em_by_condition.py"


rule figure_steering_sweep:
    input:
        f"{RESULTS}/metrics/em_by_condition.csv",
    output:
        png=report(f"{RESULTS}/figures/steering_sweep.png", caption="../workflow/report/steering_sweep.rst", category="Steering"),
        pdf=f"{RESULTS}/figures/steering_sweep.pdf",
    log:
        f"{RESULTS}/logs/figures/steering_sweep.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow/scripts/figure_steering_sweep.py"


rule figure_ablation:
    input:
        f"{RESULTS}/metrics/em_by_condition.csv",
    output:
        png=report(f"{RESULTS}/figures/ablation.png", caption="../workflow/report/ablation.rst", category="Ablation"),
        pdf=f"{RESULTS}/figures/ablation.pdf",
    log:
        f"{RESULTS}/logs/figures/ablation.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow/scripts/figure_ablation.py"


rule figure_direction_cosine:
    input:
        f"{RESULTS}/directions/cosine_by_layer.csv",
    output:
        png=report(f"{RESULTS}/figures/direction_cosine.png", caption="../workflow/report/direction_cosine.rst", category="Directions"),
        pdf=f"{RESULTS}/figures/direction_cosine.pdf",
    log:
        f"{RESULTS}/logs/figures/direction_cosine.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow/scripts/figure_direction_cosine.py"
