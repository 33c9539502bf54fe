# Across base models (base_models only; docs/cross-model.md): EM and coherence of each organism recipe
# by model, family and size (Turner et al.'s comparison), and the phase-transition step of every
# checkpointed organism. Each model's tables come from its own root; the script matches them by name.


rule cross_model_tables:
    input:
        unpack(get_cross_model_inputs),
    output:
        em_by_model=f"{RESULTS}/cross_model/em_by_model.csv",
        phase_steps=f"{RESULTS}/cross_model/phase_steps.csv",
    params:
        models=model_params(),
        recipes=cross_model_recipes(),
    log:
        f"{RESULTS}/logs/cross_model/tables.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow/scripts/cross_model_tables.py"


rule figure_cross_model:
    input:
        em_by_model=f"{RESULTS}/cross_model/em_by_model.csv",
    output:
        png=report(f"{RESULTS}/figures/cross_model/em_by_size.png", caption="../workflow/report/cross_model.rst",
                   category="Across models"),
        pdf=f"{RESULTS}/figures/cross_model/em_by_size.pdf",
    log:
        f"{RESULTS}/logs/figures/cross_model.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow/scripts/figure_cross_model.py"
