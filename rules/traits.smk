# Trait-space monitoring, part 1 (docs/trait-monitoring.md): the base model's trait
# directions, and the trait drift of every monitor run over its checkpoints. The
# trait files are validated when the workflow is planned (TRAIT_SET, rules/common.smk).
from emlab.core.settings import canonical

TRAIT_SUBSAMPLE = canonical({k: config["traits"][k] for k in ("max_questions", "max_prompts_per_side",
                                                             "max_measurement_prompts")})
TRAIT_FILES = [repo_path(os.path.join(config["traits"]["folder"], f))
               for f in ("alignment.yaml", "semantic.yaml", "extraction_questions.yaml", "measurement_prompts.yaml")]


rule trait_directions:
    input:
        unpack(get_base_model_input),
        traits=TRAIT_FILES,
    output:
        tensors="{mroot}/traits/directions.safetensors",
        meta="{mroot}/traits/directions.json",
        cosine="{mroot}/traits/cosine.csv",
    params:
        folder=get_trait_folder,
        subsample=TRAIT_SUBSAMPLE,
        directions=canonical({k: config["traits"][k] for k in ("layer", "batch_size", "held_out_every")}),
        # the tensors also hold the directions of each half of the system prompts (even / odd positions)
        prompt_halves="even_odd",  # read by no script: the halving scheme, so that changing it re-runs the rule
        base_model=get_base_model_dir,
        model_id=get_model_source,
        model_key=get_model_key,  # written into directions.json: the pooled monitor matches files by it
        device=config["device"],
        dtype=config["dtype"],
    log:
        "{mroot}/logs/traits/directions.log",
    benchmark:
        "{mroot}/benchmarks/traits/directions.tsv"
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
        tensors="{mroot}/traits/directions.safetensors",
        meta="{mroot}/traits/directions.json",
        traits=TRAIT_FILES,
        summary="{mroot}/finetunes/{run}/summary.json",
        train_log="{mroot}/finetunes/{run}/train_log.csv",
        adapters=get_drift_adapters,
        # a start-from run's step 0 is the adapter it starts from (emlab.plan.monitor.start_adapter)
        reference=get_drift_reference,
    output:
        features="{mroot}/monitor/drift/{run}.features.csv",
        delta="{mroot}/monitor/drift/{run}.safetensors",
    wildcard_constraints:
        run=r"mon__[a-z0-9_]+",
    params:
        folder=get_trait_folder,
        subsample=TRAIT_SUBSAMPLE,
        steps=get_drift_steps,
        drift=canonical({"batch_size": config["traits"]["batch_size"], "random_seeds": config["traits"]["random_seeds"]}),
        sae_layer=get_sae_layer,  # Δh̄ there too (monitor.sae)
        prompt_halves="even_odd",  # the drift table has half_a.* / half_b.* columns (monitor.basis_stability)
        base_model=get_base_model_dir,
        model_key=get_model_key,  # the drift table's model column
        device=config["device"],
        dtype=config["dtype"],
    log:
        "{mroot}/logs/monitor/drift_{run}.log",
    benchmark:
        "{mroot}/benchmarks/monitor/drift_{run}.tsv"
    threads: config["threads"]
    resources:
        **model_resources(),
    conda:
        ENV
    script:
        "../workflow/scripts/trait_drift.py"


# Each monitor run's checkpoints labelled: generated and judged as rules generate and judge would (the same
# files, settings and library calls), all of one run in one job (LABEL_BUNDLES, rules/common.smk).
for _run, _p in RUN_MODEL.items():

    rule:
        name:
            f"monitor_labels__{_run}"
        input:
            unpack(label_bundle_inputs(_p, _run)),
        output:
            generations=[f"{_p.root}/generations/{c}.parquet" for c in _p.label_bundles[_run]],
            judgments=[f"{_p.root}/judgments/{c}.parquet" for c in _p.label_bundles[_run]],
        params:
            **label_bundle_params(_p, _run),
            base_model=_p.base_dir,
            seed=canonical(config["seed"]),
            device=config["device"],
            dtype=config["dtype"],
        log:
            f"{_p.root}/logs/monitor/labels_{_run}.log",
        benchmark:
            f"{_p.root}/benchmarks/monitor/labels_{_run}.tsv"
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
        features="{mroot}/monitor/drift/{run}.features.csv",
        # each step's label condition, in step order (emlab.plan.monitor.run_conditions)
        judgments=get_drift_label_judgments,
    output:
        table="{mroot}/monitor/drift/{run}.csv",
    wildcard_constraints:
        run=r"mon__[a-z0-9_]+",
    params:
        conditions=get_drift_label_conditions,
        tau=canonical(config["monitor"]["tau"]),
        thresholds=canonical({k: config["thresholds"][k] for k in ("em_aligned_below", "em_coherent_above")}),
        model_key=get_model_key,  # the drift table's model column
    log:
        "{mroot}/logs/monitor/drift_labels_{run}.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow/scripts/drift_labels.py"
