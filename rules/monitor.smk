# Trait-space monitoring, part 2 (docs/trait-monitoring.md): the monitor fitted on the
# calibration runs' drift, evaluated with every baseline on the held-out runs, saved;
# and its figures.
MONITOR_DIR = f"{RESULTS}/monitor"
MONITOR_FIGURES = ["pc1_drift", "decomposition", "feature_sets", "pc1_loadings", "trait_cosine", "lopo",
                   "alarm_probability"]
MONITOR_FIGURES += ["matched_pairs", "severity", "trait_behaviour"]  # drift geometry (rule monitor_analyses)


rule monitor_train_evaluate:
    input:
        # every model's runs, each file under its model's root (the monitor is fitted on the pooled runs)
        tables=[drift_path(run) for run in MONITOR_RUNS],
        deltas=[drift_path(run, ".safetensors") for run in MONITOR_RUNS],
        # each monitored model's trait directions (they carry its key)
        metas=[f"{p.root}/traits/directions.json" for p in MODELS.values() if p.monitor_runs],
        # the prompt-half directions, for their per-trait cosines (monitor.basis_stability)
        **({"tensors": [f"{p.root}/traits/directions.safetensors" for p in MODELS.values() if p.monitor_runs]}
           if config["monitor"]["basis_stability"] else {}),
        **sae_inputs(),  # monitor.sae: cfg.json and sae_weights.safetensors, or nothing
    output:
        evaluation=f"{MONITOR_DIR}/evaluation.csv",
        sae_features=f"{MONITOR_DIR}/sae_features.csv",
        regressors=f"{MONITOR_DIR}/regressors.csv",
        **({"basis_stability": f"{MONITOR_DIR}/basis_stability.csv", "basis_cosine": f"{MONITOR_DIR}/basis_cosine.csv"}
           if config["monitor"]["basis_stability"] else {}),
        lopo=f"{MONITOR_DIR}/lopo.csv",
        # the pooled monitor and each model's own, on each model's held-out rows and on all of them
        evaluation_by_model=f"{MONITOR_DIR}/evaluation_by_model.csv",
        tau_sweep=f"{MONITOR_DIR}/tau_sweep.csv",
        alarm_steps=f"{MONITOR_DIR}/alarm_steps.csv",
        alarm_runs=f"{MONITOR_DIR}/alarm_runs.csv",
        stress=f"{MONITOR_DIR}/stress.csv",
        pc1=f"{MONITOR_DIR}/pc1.json",
        predictions=f"{MONITOR_DIR}/predictions.csv",
        monitor=f"{MONITOR_DIR}/monitor.skops",
        sidecar=f"{MONITOR_DIR}/monitor.skops.json",
    params:
        runs=monitor_run_params(MONITOR_RUNS),
        models=model_params(),
        monitor=canonical({**config["monitor"]["regressor"], "seed": config["seed"], "tau": config["monitor"]["tau"],
                           "n_bootstrap": config["monitor"]["n_bootstrap"], "ci": config["monitor"]["ci"]}),
        tau_sweep=canonical(config["monitor"]["tau_sweep"]),
        require_both_classes=config["monitor"]["require_both_classes"],
        regressor_comparison=canonical(config["monitor"]["regressor_comparison"]),
        basis_stability=config["monitor"]["basis_stability"],
        sae=canonical({"n_features": config["monitor"]["sae"]["n_features"],
                       **({"model": sae_model(config)} if MULTI else {})}),  # the model the SAE reads
    log:
        f"{RESULTS}/logs/monitor/train_evaluate.log",
    benchmark:
        f"{RESULTS}/benchmarks/monitor/train_evaluate.tsv"
    resources:
        mem_mb=2000,
        runtime=20,
    conda:
        ENV
    script:
        "../workflow/scripts/monitor_train_evaluate.py"


# Drift geometry over the calibration and held-out runs (paper Figs. 5, 8, 10; config monitor.analyses):
# matched-|PC1| pairs, the severity ordering across perturbations, and each trait's drift against a judge of
# that trait on the label responses (with monitor.analyses.trait_judges; their judgments, read by name).
rule monitor_analyses:
    input:
        tables=[drift_path(run) for run in analysis_runs()],
        metas=[f"{p.root}/traits/directions.json" for p in MODELS.values() if p.monitor_runs],
        pc1=f"{MONITOR_DIR}/pc1.json",
        judgments=trait_judge_inputs(),
    output:
        pairs=f"{MONITOR_DIR}/matched_pc1_pairs.csv",
        severity=f"{MONITOR_DIR}/severity.csv",
        severity_spearman=f"{MONITOR_DIR}/severity_spearman.csv",
        trait_points=f"{MONITOR_DIR}/trait_behaviour_points.csv",
        trait_behaviour=f"{MONITOR_DIR}/trait_behaviour.csv",
    params:
        runs=monitor_run_params(analysis_runs()),
        models=model_params(),
        analyses=canonical(config["monitor"]["analyses"]),
        label_conditions=canonical(analysis_label_conditions()),
        trait_metrics=canonical({t: trait_judge_metric(t) for t in TRAIT_SET.alignment.names}),
    log:
        f"{RESULTS}/logs/monitor/analyses.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow/scripts/monitor_analyses.py"


rule figure_monitor:
    input:
        tables=[drift_path(run) for run in MONITOR_RUNS],
        # the first pooled model's trait directions and their cosines (the trait-cosine figure names it)
        meta=f"{FIT_MODELS[0].root if FIT_MODELS else RESULTS}/traits/directions.json",
        cosine=f"{FIT_MODELS[0].root if FIT_MODELS else RESULTS}/traits/cosine.csv",
        evaluation=f"{MONITOR_DIR}/evaluation.csv",
        lopo=f"{MONITOR_DIR}/lopo.csv",
        pc1=f"{MONITOR_DIR}/pc1.json",
        alarm_steps=f"{MONITOR_DIR}/alarm_steps.csv",
        pairs=f"{MONITOR_DIR}/matched_pc1_pairs.csv",
        severity=f"{MONITOR_DIR}/severity.csv",
        severity_spearman=f"{MONITOR_DIR}/severity_spearman.csv",
        trait_points=f"{MONITOR_DIR}/trait_behaviour_points.csv",
        trait_behaviour=f"{MONITOR_DIR}/trait_behaviour.csv",
    output:
        **{name: report(f"{RESULTS}/figures/monitor/{name}.png", caption=f"../workflow/report/monitor_{name}.rst",
                        category="Trait monitor") for name in MONITOR_FIGURES},
        **{f"{name}_pdf": f"{RESULTS}/figures/monitor/{name}.pdf" for name in MONITOR_FIGURES},
    params:
        runs=monitor_run_params(MONITOR_RUNS),
        tau=canonical(config["monitor"]["tau"]),
        pair_tolerance=canonical(config["monitor"]["analyses"]["pair_tolerance"]),
    log:
        f"{RESULTS}/logs/figures/monitor.log",
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV
    script:
        "../workflow/scripts/figure_monitor.py"


rule figure_live_monitor:
    input:
        train_log=f"{LIVE.root if LIVE else RESULTS}/finetunes/{LIVE_RUN}/train_log.csv",
        summary=f"{LIVE.root if LIVE else RESULTS}/finetunes/{LIVE_RUN}/summary.json",
        sidecar=f"{MONITOR_DIR}/monitor.skops.json",
    output:
        png=report(f"{RESULTS}/figures/monitor/live.png", caption="../workflow/report/monitor_live.rst",
                   category="Trait monitor"),
        pdf=f"{RESULTS}/figures/monitor/live.pdf",
    log:
        f"{RESULTS}/logs/figures/monitor_live.log",
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../workflow/scripts/figure_live_monitor.py"
