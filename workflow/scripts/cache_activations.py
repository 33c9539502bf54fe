"""Per-layer residual-stream means over the answer (and prompt) tokens of a fine-tune's own responses."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from emlab.runner import device_map_of, run_script  # noqa: E402

REQUIRED_COLUMNS = {"condition", "question_id", "sample_idx", "question", "system", "response"}
LAYER_SEMANTICS = "layer l = residual stream after decoder block l (0-based)"


def main(smk):
    import pandas as pd

    from emlab.activations import cache_answer_means
    from emlab.atomic import save_tensors, write_parquet
    from emlab.errors import EMLabError
    from emlab.models import hidden_size, load_model, load_tokenizer, num_layers

    responses = pd.read_parquet(smk.input.responses)
    missing = REQUIRED_COLUMNS - set(responses.columns)
    if missing:
        raise EMLabError(f"{smk.input.responses} lacks columns {sorted(missing)}; regenerate it with the generate rule")
    model = load_model(smk.params.base_model, smk.input.adapter, device=smk.params.device, dtype=smk.params.dtype,
                       device_map=device_map_of(smk))
    tokenizer = load_tokenizer(smk.params.base_model)
    answer_mean, prompt_mean, answer_tokens = cache_answer_means(
        model, tokenizer, responses.to_dict("records"), batch_size=smk.params.batch_size)
    save_tensors(smk.output.tensors,
                 {"answer_mean": answer_mean, "prompt_mean": prompt_mean, "answer_tokens": answer_tokens},
                 metadata={"model": str(smk.params.base_model), "adapter": str(smk.input.adapter),
                           "responses": str(smk.input.responses), "n_layers": num_layers(model),
                           "d_model": hidden_size(model), "layer_semantics": LAYER_SEMANTICS,
                           "answer_tokens": "the response text only (not the assistant header, not end-of-turn)",
                           "prompt_tokens": "the rendered prompt incl. system turn and assistant header"})
    index = pd.DataFrame({
        "row": pd.Series(range(len(responses)), dtype="int64"),
        "condition": responses["condition"].astype("string").reset_index(drop=True),
        "question_id": responses["question_id"].astype("string").reset_index(drop=True),
        "sample_idx": responses["sample_idx"].astype("int64").reset_index(drop=True),
        "n_answer_tokens": pd.Series(answer_tokens.numpy(), dtype="int64"),
    })
    write_parquet(smk.output.index, index)


run_script(snakemake, main)  # noqa: F821
