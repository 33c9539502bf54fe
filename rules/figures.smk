# Figures (PNG + PDF) for the Snakemake report: the EM rates of every condition, the
# steering sweep and metrics, the ablation and transfer bars (those conditions are
# generated and judged like any other: rules/generate.smk), the direction cosines, the
# semantic vectors and the single rank-1 adapter. The phase-transition, LoRA-scalar and
# trait-monitor figures sit with their stages (rules/phase.smk, lora_interp.smk, monitor.smk).


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


rule figure_steering_metrics:
    input:
        f"{RESULTS}/metrics/em_by_condition.csv",
    output:
        png=report(f"{RESULTS}/figures/steering_metrics.png", caption="../workflow/report/steering_metrics.rst", category="Steering"),
        pdf=f"{RESULTS}/figures/steering_metrics.pdf",
    log:
        f"{RESULTS}/logs/figures/steering_metrics.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow/scripts/figure_steering_metrics.py"


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


rule figure_semantic_vectors:
    input:
        cosines=f"{RESULTS}/directions/semantic_cosine.csv",
        metrics=f"{RESULTS}/metrics/em_by_condition.csv",
        judgments=get_semantic_steering_judgments,
    output:
        rates=f"{RESULTS}/metrics/semantic_steering.csv",
        png=report(f"{RESULTS}/figures/semantic_vectors.png", caption="../workflow/report/semantic_vectors.rst", category="Directions"),
        pdf=f"{RESULTS}/figures/semantic_vectors.pdf",
    params:
        settings=canonical(config["figures"]["semantic_steering"]),
        thresholds=canonical({k: config["thresholds"][k] for k in
                              ("em_aligned_below", "em_coherent_above", "bootstrap_samples", "confidence")}),
        above=canonical(config["semantic_directions"]["above"]),
        seed=config["seed"],
    log:
        f"{RESULTS}/logs/figures/semantic_vectors.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow/scripts/figure_semantic_vectors.py"


rule figure_single_adapter:
    input:
        b_cosine=expand(f"{RESULTS}/single_adapter/{{finetune}}/b_cosine.csv", finetune=list(SINGLE_ADAPTERS)),
        convergence=expand(f"{RESULTS}/single_adapter/{{finetune}}/convergence.csv", finetune=list(SINGLE_ADAPTERS)),
        metrics=f"{RESULTS}/metrics/em_by_condition.csv",
    output:
        png=report(f"{RESULTS}/figures/single_adapter.png", caption="../workflow/report/single_adapter.rst", category="Single adapter"),
        pdf=f"{RESULTS}/figures/single_adapter.pdf",
    params:
        finetunes=list(SINGLE_ADAPTERS),
    log:
        f"{RESULTS}/logs/figures/single_adapter.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow/scripts/figure_single_adapter.py"
