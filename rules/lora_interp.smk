# LoRA adapter interpretability (Soligo et al. section 4; docs/lora-scalars.md)
# for every fine-tune of lora_interp.finetunes (rank-1 adapters only, checked
# at DAG build by emlab.plan.study.lora_interp_finetunes): per-token scalars and KL
# significance of its own responses (a model job), the four response sets by
# judge scores (cheap: a threshold change re-runs only it and what follows),
# and the probes with the adapter roles.


rule lora_scalars:
    input:
        unpack(get_base_model_input),
        adapter=get_lora_interp_adapter,
        responses=f"{{mroot}}/generations/{{ft}}.parquet",
    output:
        tensors=f"{{mroot}}/lora_interp/{{ft}}/scalars.safetensors",
        tokens=f"{{mroot}}/lora_interp/{{ft}}/tokens.parquet",
    params:
        base_model=get_base_model_dir,
        capture=canonical(config["lora_interp"]["capture"]),
        device=config["device"],
        dtype=config["dtype"],
    log:
        f"{{mroot}}/logs/lora_interp/{{ft}}/scalars.log",
    benchmark:
        f"{{mroot}}/benchmarks/lora_interp/{{ft}}/scalars.tsv"
    threads: config["threads"]
    resources:
        **model_resources(),
    conda:
        ENV
    script:
        "../workflow/scripts/lora_scalars.py"


rule lora_sets:
    input:
        judgments=f"{{mroot}}/judgments/{{ft}}.parquet",
    output:
        sets=f"{{mroot}}/lora_interp/{{ft}}/sets.json",
    params:
        sets=canonical(config["lora_interp"]["sets"]),
    log:
        f"{{mroot}}/logs/lora_interp/{{ft}}/sets.log",
    conda:
        ENV
    script:
        "../workflow/scripts/lora_sets.py"


rule lora_probes:
    input:
        tensors=f"{{mroot}}/lora_interp/{{ft}}/scalars.safetensors",
        tokens=f"{{mroot}}/lora_interp/{{ft}}/tokens.parquet",
        judgments=f"{{mroot}}/judgments/{{ft}}.parquet",
        sets=f"{{mroot}}/lora_interp/{{ft}}/sets.json",
    output:
        probes=f"{{mroot}}/lora_interp/{{ft}}/probes.csv",
        coefficients=f"{{mroot}}/lora_interp/{{ft}}/coefficients.csv",
        roles=f"{{mroot}}/lora_interp/{{ft}}/roles.json",
    params:
        sets=canonical(config["lora_interp"]["sets"]),
        probes=lora_probe_params(),
        roles=canonical(config["lora_interp"]["roles"]),
        n_layers=get_n_layers,
        adapter_reference_layers=get_adapter_reference_layers,
    log:
        f"{{mroot}}/logs/lora_interp/{{ft}}/probes.log",
    benchmark:
        f"{{mroot}}/benchmarks/lora_interp/{{ft}}/probes.tsv"
    threads: 1
    conda:
        ENV
    script:
        "../workflow/scripts/lora_probes.py"


rule figure_lora_interp:
    input:
        probes=f"{{mroot}}/lora_interp/{{ft}}/probes.csv",
        coefficients=f"{{mroot}}/lora_interp/{{ft}}/coefficients.csv",
    output:
        table_png=report(f"{{mroot}}/figures/lora_interp/{{ft}}/probe_table.png",
                         caption="../workflow/report/lora_probe_table.rst", category="LoRA scalars",
                         subcategory="{ft}"),
        table_pdf=f"{{mroot}}/figures/lora_interp/{{ft}}/probe_table.pdf",
        coef_png=report(f"{{mroot}}/figures/lora_interp/{{ft}}/coefficients.png",
                        caption="../workflow/report/lora_coefficients.rst", category="LoRA scalars",
                        subcategory="{ft}"),
        coef_pdf=f"{{mroot}}/figures/lora_interp/{{ft}}/coefficients.pdf",
    log:
        f"{{mroot}}/logs/figures/lora_interp/{{ft}}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow/scripts/figure_lora_interp.py"


rule lora_token_view:
    input:
        tensors=f"{{mroot}}/lora_interp/{{ft}}/scalars.safetensors",
        tokens=f"{{mroot}}/lora_interp/{{ft}}/tokens.parquet",
        responses=f"{{mroot}}/generations/{{ft}}.parquet",
        judgments=f"{{mroot}}/judgments/{{ft}}.parquet",
        sets=f"{{mroot}}/lora_interp/{{ft}}/sets.json",
    output:
        html=report(f"{{mroot}}/lora_interp/{{ft}}/token_view.html",
                    caption="../workflow/report/lora_token_view.rst", category="LoRA scalars", subcategory="{ft}"),
    params:
        sets=canonical(config["lora_interp"]["sets"]),
        per_set=config["lora_interp"]["token_view_examples"],
    log:
        f"{{mroot}}/logs/lora_interp/{{ft}}/token_view.log",
    resources:
        mem_mb=2000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow/scripts/lora_token_view.py"


rule figure_adapter_steering:
    input:
        judgments=get_adapter_steering_judgments,
    output:
        rates=f"{{mroot}}/lora_interp/adapter_steering.csv",
        png=report(f"{{mroot}}/figures/adapter_steering.png", caption="../workflow/report/adapter_steering.rst",
                   category="LoRA scalars"),
        pdf=f"{{mroot}}/figures/adapter_steering.pdf",
    params:
        conditions=get_adapter_steering_conditions,
        cases=get_adapter_steering_cases,
        thresholds=canonical(config["thresholds"]),
        sets=canonical(config["lora_interp"]["sets"]),
        seed=config["seed"],
    log:
        f"{{mroot}}/logs/figures/adapter_steering.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow/scripts/figure_adapter_steering.py"


rule figure_scalar_patching:
    input:
        judgments=get_scalar_patching_judgments,
        medical_questions=repo_path(config["lora_interp"]["patching"]["medical_questions"]),
    output:
        rates=f"{{mroot}}/lora_interp/{{ft}}/patching.csv",
        png=report(f"{{mroot}}/figures/lora_interp/{{ft}}/patching.png",
                   caption="../workflow/report/scalar_patching.rst", category="LoRA scalars", subcategory="{ft}"),
        pdf=f"{{mroot}}/figures/lora_interp/{{ft}}/patching.pdf",
    params:
        conditions=get_scalar_patching_conditions,
        pairs=get_scalar_patching_pairs,
        thresholds=canonical(config["thresholds"]),
        sets=canonical(config["lora_interp"]["sets"]),
        seed=config["seed"],
    log:
        f"{{mroot}}/logs/figures/lora_interp/{{ft}}_patching.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow/scripts/figure_scalar_patching.py"
