# Trait-space monitoring, part 1 (docs/trait-monitoring.md): the base model's trait
# directions, and the trait drift of every monitor run over its checkpoints. The
# trait files are validated when the workflow is planned (TRAIT_SET, rules/common.smk).
from emlab.core.settings import canonical

TRAITS_DIR = f"{RESULTS}/traits"
TRAIT_SUBSAMPLE = canonical({k: config["traits"][k] for k in ("max_questions", "max_prompts_per_side",
                                                             "max_measurement_prompts")})
TRAIT_FILES = [repo_path(os.path.join(config["traits"]["folder"], f))
               for f in ("alignment.yaml", "semantic.yaml", "extraction_questions.yaml", "measurement_prompts.yaml")]


rule trait_directions:
    input:
        unpack(get_base_model_input),
        traits=TRAIT_FILES,
    output:
        tensors=f"{TRAITS_DIR}/directions.safetensors",
        meta=f"{TRAITS_DIR}/directions.json",
        cosine=f"{TRAITS_DIR}/cosine.csv",
    params:
        folder=get_trait_folder,
        subsample=TRAIT_SUBSAMPLE,
        directions=canonical({k: config["traits"][k] for k in ("layer", "batch_size", "held_out_every")}),
        # the tensors also hold the directions of each half of the system prompts (even / odd positions)
        prompt_halves="even_odd",  # read by no script: the halving scheme, so that changing it re-runs the rule
        base_model=BASE_MODEL_DIR,
        model_id=config["base_model"]["source"],
        device=config["device"],
        dtype=config["dtype"],
    log:
        f"{RESULTS}/logs/traits/directions.log",
    benchmark:
        f"{RESULTS}/benchmarks/traits/directions.tsv"
    threads: config["threads"]
    resources:
        **model_resources(),
    conda:
        ENV
    script:
        "../workflow/scripts/trait_directions.py"


rule trait_drift:
    input:
        unpack(get_base_model_input),
        tensors=f"{TRAITS_DIR}/directions.safetensors",
        meta=f"{TRAITS_DIR}/directions.json",
        traits=TRAIT_FILES,
        summary=f"{RESULTS}/finetunes/{{run}}/summary.json",
        train_log=f"{RESULTS}/finetunes/{{run}}/train_log.csv",
        adapters=get_drift_adapters,
        # a start-from run's step 0 is the adapter it starts from (emlab.plan.monitor.start_adapter)
        reference=get_drift_reference,
    output:
        features=f"{RESULTS}/monitor/drift/{{run}}.features.csv",
        delta=f"{RESULTS}/monitor/drift/{{run}}.safetensors",
    wildcard_constraints:
        run=r"mon__[a-z0-9_]+",
    params:
        folder=get_trait_folder,
        subsample=TRAIT_SUBSAMPLE,
        steps=get_drift_steps,
        drift=canonical({"batch_size": config["traits"]["batch_size"], "random_seeds": config["traits"]["random_seeds"]}),
        sae_layer=None if SAE_BASELINE is None else SAE_BASELINE.layer,  # Δh̄ there too (monitor.sae)
        prompt_halves="even_odd",  # the drift table has half_a.* / half_b.* columns (monitor.basis_stability)
        base_model=BASE_MODEL_DIR,
        device=config["device"],
        dtype=config["dtype"],
    log:
        f"{RESULTS}/logs/monitor/drift_{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/monitor/drift_{{run}}.tsv"
    threads: config["threads"]
    resources:
        **model_resources(),
    conda:
        ENV
    script:
        "../workflow/scripts/trait_drift.py"


# Each monitor run's checkpoints labelled: generated and judged as rules generate and judge would (the same
# files, settings and library calls), all of one run in one job (LABEL_BUNDLES, rules/common.smk).
for _run in LABEL_BUNDLES:

    rule:
        name:
            f"monitor_labels__{_run}"
        input:
            unpack(label_bundle_inputs(_run)),
        output:
            generations=[f"{RESULTS}/generations/{c}.parquet" for c in LABEL_BUNDLES[_run]],
            judgments=[f"{RESULTS}/judgments/{c}.parquet" for c in LABEL_BUNDLES[_run]],
        params:
            **label_bundle_params(_run),
            base_model=BASE_MODEL_DIR,
            seed=canonical(config["seed"]),
            device=config["device"],
            dtype=config["dtype"],
        log:
            f"{RESULTS}/logs/monitor/labels_{_run}.log",
        benchmark:
            f"{RESULTS}/benchmarks/monitor/labels_{_run}.tsv"
        threads: config["threads"]
        resources:
            **model_resources(),
        conda:
            ENV
        script:
            "../workflow/scripts/monitor_labels.py"


# The EM labels join the measured drift here, not in trait_drift: a threshold or tau change (or a re-judged
# checkpoint) re-runs only this cheap rule and what follows it, never the drift measurement. It reads the
# run's own label judgments, so a change to another condition (steering, say) never reaches the monitor.
rule drift_labels:
    input:
        features=f"{RESULTS}/monitor/drift/{{run}}.features.csv",
        # each step's label condition, in step order (emlab.plan.monitor.run_conditions)
        judgments=get_drift_label_judgments,
    output:
        table=f"{RESULTS}/monitor/drift/{{run}}.csv",
    wildcard_constraints:
        run=r"mon__[a-z0-9_]+",
    params:
        conditions=get_drift_label_conditions,
        tau=canonical(config["monitor"]["tau"]),
        thresholds=canonical({k: config["thresholds"][k] for k in ("em_aligned_below", "em_coherent_above")}),
    log:
        f"{RESULTS}/logs/monitor/drift_labels_{{run}}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow/scripts/drift_labels.py"
