# Phase transitions (docs/model-organisms.md): the rotation of each checkpointed LoRA
# fine-tune's A/B matrices over training, and its EM rate at chosen checkpoints.
# Neither rule declares the live checkpoints/ folder as an output (a failed job's
# outputs are deleted by Snakemake, which would destroy resume): both read the
# steps the finished fine-tune's summary.json lists, after it exists.


rule export_checkpoint:
    input:
        summary=f"{{mroot}}/finetunes/{{finetune}}/summary.json",
    output:
        adapter=directory(f"{{mroot}}/finetunes/{{finetune}}/checkpoint_adapters/step-{{step}}"),
    params:
        checkpoint_dir=get_checkpoint_dir,
        step=get_checkpoint_step,
    log:
        f"{{mroot}}/logs/phase/export_{{finetune}}_step{{step}}.log",
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV
    script:
        "../workflow/scripts/export_checkpoint.py"


rule phase_rotation:
    input:
        summary=f"{{mroot}}/finetunes/{{finetune}}/summary.json",
        adapter=f"{{mroot}}/finetunes/{{finetune}}/adapter",
    output:
        table=f"{{mroot}}/phase/{{finetune}}/rotation.csv",
        summary=f"{{mroot}}/phase/{{finetune}}/rotation_summary.json",
    params:
        checkpoint_dir=get_checkpoint_dir,
        base_model=get_model_key,
    log:
        f"{{mroot}}/logs/phase/rotation_{{finetune}}.log",
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    script:
        "../workflow/scripts/phase_rotation.py"


rule figure_phase_transition:
    input:
        rotation=f"{{mroot}}/phase/{{finetune}}/rotation.csv",
        summary=f"{{mroot}}/phase/{{finetune}}/rotation_summary.json",
        em=f"{{mroot}}/metrics/em_by_condition.csv",
    output:
        png=report(f"{{mroot}}/figures/phase/{{finetune}}.png", caption="../workflow/report/phase_transition.rst",
                   category="Phase transitions", subcategory="{finetune}"),
        pdf=f"{{mroot}}/figures/phase/{{finetune}}.pdf",
        em_by_step=f"{{mroot}}/phase/{{finetune}}/em_by_step.csv",
    params:
        steps=get_phase_em_steps,
        base_model=get_model_key,
    log:
        f"{{mroot}}/logs/figures/phase_{{finetune}}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow/scripts/figure_phase_transition.py"
