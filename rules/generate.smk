# Sample N responses per evaluation question for every condition (base model,
# fine-tunes, checkpoints, steered and ablated models): batched, left-padded, KV-cached.
# The conditions come from emlab.plan.study.condition_plan, typed values of
# emlab.plan.conditions (workflow/src/emlab/plan/conditions/), for example:
# - steering (steering.py, condition ids steer__<finetune>[__<split>]__L<l>__s<scale>):
#   the base model with scale * v_l of a fine-tune's mean-diff vector (general or
#   semantic) added after block l; planned from config `steering`;
# - ablation and transfer (ablation.py, adapter.py; ids ablate__<finetune>__...,
#   adapter_project__<finetune>__[<source>_]L<l>): mean-diff directions projected out of a
#   fine-tuned model's residual stream (layer-wise, single-layer, a random control,
#   another fine-tune's direction: transfer), or out of a rank-1 adapter's B vector;
#   planned from config `ablation` and `single_adapter`.
# Every condition is generated here and judged by rule judge; the steering and
# ablation figures are rules of rules/figures.smk.


rule generate:
    input:
        unpack(generation_inputs),
    output:
        f"{{mroot}}/generations/{{condition}}.parquet",
    wildcard_constraints:  # the monitor runs' checkpoint labels: rule monitor_labels__<run> (rules/traits.smk)
        condition=one_of(_all("unbundled")),
    params:
        condition=get_condition_id,
        spec=get_condition_spec,
        base_model=get_base_model_dir,
        # the monitor's label conditions and scalar patching carry their own settings (emlab.plan.study)
        generation=get_generation_settings,
        seed=canonical(config["seed"]),
        device=config["device"],
        dtype=config["dtype"],
    log:
        f"{{mroot}}/logs/generate/{{condition}}.log",
    benchmark:
        f"{{mroot}}/benchmarks/generate/{{condition}}.tsv"
    threads: config["threads"]
    resources:
        **model_resources(),
    conda:
        ENV
    script:
        "../workflow/scripts/generate.py"
