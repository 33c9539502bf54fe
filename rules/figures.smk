# Figures (PNG + PDF) for the Snakemake report: the EM rates of every condition, the
# steering sweep and metrics, the ablation and transfer bars (those conditions are
# generated and judged like any other: rules/generate.smk), the direction cosines, the
# semantic vectors and the single rank-1 adapter. The phase-transition, LoRA-scalar and
# trait-monitor figures sit with their stages (rules/phase.smk, lora_interp.smk, monitor.smk).


rule figure_em_by_condition:
    input:
        f"{{mroot}}/metrics/em_by_condition.csv",
    output:
        png=report(f"{{mroot}}/figures/em_by_condition.png", caption="../workflow/report/em_by_condition.rst", category="Emergent misalignment"),
        pdf=f"{{mroot}}/figures/em_by_condition.pdf",
    log:
        f"{{mroot}}/logs/figures/em_by_condition.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow/scripts/figure_em_by_condition.py"


rule figure_steering_sweep:
    input:
        f"{{mroot}}/metrics/em_by_condition.csv",
    output:
        png=report(f"{{mroot}}/figures/steering_sweep.png", caption="../workflow/report/steering_sweep.rst", category="Steering"),
        pdf=f"{{mroot}}/figures/steering_sweep.pdf",
    log:
        f"{{mroot}}/logs/figures/steering_sweep.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow/scripts/figure_steering_sweep.py"


rule figure_steering_metrics:
    input:
        f"{{mroot}}/metrics/em_by_condition.csv",
    output:
        png=report(f"{{mroot}}/figures/steering_metrics.png", caption="../workflow/report/steering_metrics.rst", category="Steering"),
        pdf=f"{{mroot}}/figures/steering_metrics.pdf",
    log:
        f"{{mroot}}/logs/figures/steering_metrics.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow/scripts/figure_steering_metrics.py"


rule figure_ablation:
    input:
        f"{{mroot}}/metrics/em_by_condition.csv",
    output:
        png=report(f"{{mroot}}/figures/ablation.png", caption="../workflow/report/ablation.rst", category="Ablation"),
        pdf=f"{{mroot}}/figures/ablation.pdf",
    log:
        f"{{mroot}}/logs/figures/ablation.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow/scripts/figure_ablation.py"


rule figure_direction_cosine:
    input:
        f"{{mroot}}/directions/cosine_by_layer.csv",
    output:
        png=report(f"{{mroot}}/figures/direction_cosine.png", caption="../workflow/report/direction_cosine.rst", category="Directions"),
        pdf=f"{{mroot}}/figures/direction_cosine.pdf",
    log:
        f"{{mroot}}/logs/figures/direction_cosine.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow/scripts/figure_direction_cosine.py"


rule figure_semantic_vectors:
    input:
        cosines=f"{{mroot}}/directions/semantic_cosine.csv",
        metrics=f"{{mroot}}/metrics/em_by_condition.csv",
        judgments=get_semantic_steering_judgments,
    output:
        rates=f"{{mroot}}/metrics/semantic_steering.csv",
        png=report(f"{{mroot}}/figures/semantic_vectors.png", caption="../workflow/report/semantic_vectors.rst", category="Directions"),
        pdf=f"{{mroot}}/figures/semantic_vectors.pdf",
    params:
        settings=canonical(config["figures"]["semantic_steering"]),
        thresholds=canonical({k: config["thresholds"][k] for k in
                              ("em_aligned_below", "em_coherent_above", "bootstrap_samples", "confidence")}),
        above=canonical(config["semantic_directions"]["above"]),
        seed=config["seed"],
    log:
        f"{{mroot}}/logs/figures/semantic_vectors.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow/scripts/figure_semantic_vectors.py"


rule figure_single_adapter:
    input:
        unpack(get_single_adapter_tables),
        metrics=f"{{mroot}}/metrics/em_by_condition.csv",
    output:
        png=report(f"{{mroot}}/figures/single_adapter.png", caption="../workflow/report/single_adapter.rst", category="Single adapter"),
        pdf=f"{{mroot}}/figures/single_adapter.pdf",
    params:
        finetunes=get_single_adapter_finetunes,
    log:
        f"{{mroot}}/logs/figures/single_adapter.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow/scripts/figure_single_adapter.py"
