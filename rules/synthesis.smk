# Optional: generate a narrow chat dataset with an OpenAI-compatible model from a
# topic description. Planned only for datasets that name a `synthesis:` entry;
# their prepare_dataset then reads results/synthetic/<entry>.jsonl.

SYNTHESIZED = sorted({ds["synthesis"] for ds in config["datasets"].values() if "synthesis" in ds})

if SYNTHESIZED:

    # The key is read from the environment by the client; it never passes
    # through params, config files or logs.
    envvars:
        *sorted({config["synthesis"][name]["api_key_env"] for name in SYNTHESIZED}),


rule synthesize_dataset:
    input:
        prompt=get_synthesis_prompt,
    output:
        jsonl=f"{RESULTS}/synthetic/{{synthesis}}.jsonl",
        summary=f"{RESULTS}/synthetic/{{synthesis}}.summary.json",
    params:
        settings=get_synthesis_settings,
    log:
        f"{RESULTS}/logs/synthesize_dataset/{{synthesis}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/synthesize_dataset/{{synthesis}}.tsv"
    resources:
        mem_mb=1000,
        runtime=600,
    conda:
        ENV
    script:
        "../workflow/scripts/synthesize_dataset.py"
