# Mean-diff directions (misaligned minus aligned) per layer; thresholds here.


rule mean_diff_directions:
    input:
        tensors=f"{RESULTS}/activations/{{finetune}}.safetensors",
        index=f"{RESULTS}/activations/{{finetune}}.index.parquet",
        judgments=f"{RESULTS}/judgments/{{finetune}}.parquet",
    output:
        vectors=f"{RESULTS}/directions/{{finetune}}.safetensors",
        summary=f"{RESULTS}/directions/{{finetune}}.json",
    params:
        thresholds=config["directions"],
        seed=config["seed"],
    log:
        f"{RESULTS}/logs/directions/{{finetune}}.log",
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    script:
        "../workflow/scripts/mean_diff_directions.py"


rule direction_cosines:
    input:
        vectors=expand(f"{RESULTS}/directions/{{finetune}}.safetensors", finetune=DIRECTION_FINETUNES),
    output:
        f"{RESULTS}/directions/cosine_by_layer.csv",
    params:
        finetunes=DIRECTION_FINETUNES,
    log:
        f"{RESULTS}/logs/directions/cosines.log",
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV
    script:
        "../workflow/scripts/direction_cosines.py"
