# Validate and normalise chat JSONL datasets; seeded train/eval split.


rule prepare_dataset:
    input:
        jsonl=get_dataset_source,
    output:
        train=f"{RESULTS}/datasets/{{dataset}}/train.jsonl",
        eval=f"{RESULTS}/datasets/{{dataset}}/eval.jsonl",
        summary=f"{RESULTS}/datasets/{{dataset}}/summary.json",
    params:
        eval_fraction=get_eval_fraction,
        seed=canonical(config["seed"]),
    log:
        f"{RESULTS}/logs/prepare_dataset/{{dataset}}.log",
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV
    script:
        "../workflow/scripts/prepare_dataset.py"
