"""Sample responses to the evaluation questions for one condition (model + intervention)."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from emlab.runner import run_script  # noqa: E402

COLUMNS = ["condition", "model", "intervention", "question_id", "sample_idx", "question", "system", "prompt",
           "response", "n_response_tokens", "finish_reason", "temperature", "top_p", "max_new_tokens", "seed"]


def main(smk):
    import pandas as pd

    from emlab.atomic import load_tensors, write_parquet
    from emlab.generation import (generate_responses, generate_responses_vllm, generation_backend,
                                  merged_model_folder)
    from emlab.interventions import apply_intervention
    from emlab.models import load_model, load_tokenizer
    from emlab.questions import load_questions

    spec, settings = smk.params.spec, smk.params.generation
    questions = load_questions(smk.input.questions)  # fail on a bad file before loading the model
    backend = generation_backend(settings, spec, smk.params.condition)  # ... and on a missing vllm package
    adapter = getattr(smk.input, "adapter", None)
    tokenizer = load_tokenizer(smk.params.base_model)
    sampling = dict(samples_per_question=settings["samples_per_question"],
                    max_new_tokens=settings["max_new_tokens"], temperature=settings["temperature"],
                    top_p=settings["top_p"], seed=smk.params.seed)
    if backend == "vllm":  # no intervention: a plain (merged) model folder
        Path(smk.output[0]).parent.mkdir(parents=True, exist_ok=True)
        merged = merged_model_folder(smk.params.base_model, adapter, smk.params.dtype,
                                     parent=Path(smk.output[0]).parent) if adapter else None
        try:
            records = generate_responses_vllm(merged.name if merged else smk.params.base_model, tokenizer,
                                              questions, dtype=smk.params.dtype, condition=smk.params.condition,
                                              **sampling)
        finally:
            if merged is not None:
                merged.cleanup()
    else:
        vectors_path = getattr(smk.input, "vectors", None)
        vectors = load_tensors(vectors_path)[0]["mean_diff"] if vectors_path else None  # [L, d_model]
        # Merged: sampling needs the adapted weights, not the adapter modules (faster for all-adapter fine-tunes).
        model = load_model(smk.params.base_model, adapter, device=smk.params.device, dtype=smk.params.dtype,
                           merge=True)
        with apply_intervention(model, spec["intervention"], vectors):
            records = generate_responses(model, tokenizer, questions, batch_size=settings["batch_size"],
                                         **sampling)
    df = pd.DataFrame.from_records(records)
    df.insert(0, "condition", smk.params.condition)
    df.insert(1, "model", spec["model"])
    df.insert(2, "intervention", json.dumps(spec["intervention"], sort_keys=True))
    df = df[COLUMNS].astype({"sample_idx": "int64", "n_response_tokens": "int64", "max_new_tokens": "int64",
                             "seed": "int64", "temperature": "float64", "top_p": "float64", "system": "string"})
    write_parquet(smk.output[0], df)


run_script(snakemake, main)  # noqa: F821
