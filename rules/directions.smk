# Mean-diff directions (misaligned minus aligned) per layer; thresholds here.


rule mean_diff_directions:
    input:
        tensors=f"{{mroot}}/activations/{{finetune}}.safetensors",
        index=f"{{mroot}}/activations/{{finetune}}.index.parquet",
        judgments=f"{{mroot}}/judgments/{{finetune}}.parquet",
    output:
        vectors=f"{{mroot}}/directions/{{finetune}}.safetensors",
        summary=f"{{mroot}}/directions/{{finetune}}.json",
    params:
        thresholds=canonical(config["directions"]),
        seed=canonical(config["seed"]),
    log:
        f"{{mroot}}/logs/directions/{{finetune}}.log",
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    script:
        "../workflow/scripts/mean_diff_directions.py"


rule direction_cosines:
    input:
        vectors=get_direction_cosine_vectors,
    output:
        f"{{mroot}}/directions/cosine_by_layer.csv",
    params:
        finetunes=get_direction_finetunes,
    log:
        f"{{mroot}}/logs/directions/cosines.log",
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV
    script:
        "../workflow/scripts/direction_cosines.py"


# Semantic vectors (docs/linear-directions.md): the same mean-diff, over only the responses a
# semantic judge (medical, gender, ...) scores above semantic_directions.above.


rule semantic_directions:
    input:
        tensors=f"{{mroot}}/activations/{{finetune}}.safetensors",
        index=f"{{mroot}}/activations/{{finetune}}.index.parquet",
        judgments=f"{{mroot}}/judgments/{{finetune}}.parquet",
    output:
        vectors=f"{{mroot}}/directions/semantic/{{finetune}}/{{split}}.safetensors",
        summary=f"{{mroot}}/directions/semantic/{{finetune}}/{{split}}.json",
    params:
        thresholds=canonical(config["directions"]),
        above=canonical(config["semantic_directions"]["above"]),
        top_quantile=canonical(config["semantic_directions"]["top_quantile"]),
        seed=canonical(config["seed"]),
    log:
        f"{{mroot}}/logs/directions/semantic/{{finetune}}__{{split}}.log",
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    script:
        "../workflow/scripts/semantic_directions.py"


rule semantic_cosines:
    input:
        general=get_semantic_general_vectors,
        semantic=get_semantic_vectors,
    output:
        f"{{mroot}}/directions/semantic_cosine.csv",
    params:
        pairs=get_semantic_pairs,
    log:
        f"{{mroot}}/logs/directions/semantic_cosines.log",
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV
    script:
        "../workflow/scripts/semantic_cosines.py"
