"""Per-response, per-layer means of the residual stream over the answer tokens
(and, separately, over the prompt tokens).

Each prompt + response is re-tokenised with the chat template
(emlab.model.chat.encode_exchange, so the answer span is exact: the assistant header
belongs to the prompt, the end-of-turn suffix to neither), batched by length
with left padding, and run forward once. A hook on every decoder block reduces
that block's output at once to two masked sums per row, so memory stays at
one layer's activations: never [L, batch, seq, d], never output_hidden_states.
The lm_head runs on one position per row only (logits_to_keep=1).
Layer l = the residual stream after decoder block l.
"""

from __future__ import annotations

import logging
import math

import torch
from tqdm.auto import tqdm

from emlab.core.errors import EMLabError
from emlab.em.questions import chat_messages
from emlab.model.backoff import in_batches
from emlab.model.batching import pad_batch, pad_token_id, positions_from_mask
from emlab.model.chat import EncodedExchange, encode_exchange
from emlab.model.hooks import read_residual
from emlab.model.loading import hidden_size, model_device, num_layers

log = logging.getLogger(__name__)


def encode_records(tokenizer, records: list[dict]) -> list[EncodedExchange]:
    """Prompt + response token ids of each generation record (keys question, system, response)."""
    encoded = []
    for i, rec in enumerate(records):
        for key in ("question", "response"):
            if not isinstance(rec.get(key), str):
                raise EMLabError(f"response record {i}: `{key}` must be a string (got {rec.get(key)!r})")
        system = rec.get("system")
        if isinstance(system, float) and math.isnan(system):
            system = None  # a null read back from parquet
        if system is not None and not isinstance(system, str):
            raise EMLabError(f"response record {i}: `system` must be a string or null (got {system!r})")
        encoded.append(encode_exchange(tokenizer, chat_messages(rec["question"], system), rec["response"]))
    return encoded


@torch.inference_mode()
def cache_answer_means(
    model, tokenizer, records: list[dict], batch_size: int = 16, progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Answer-token and prompt-token means of every layer's residual stream.

    Returns answer_mean [n, L, d] float32, prompt_mean [n, L, d] float32 and
    answer_tokens [n] int64. An empty answer gives a NaN answer mean and 0
    answer tokens (logged), not an error.
    """
    if batch_size < 1:
        raise EMLabError(f"activations: batch_size must be >= 1 (got {batch_size})")
    encoded = encode_records(tokenizer, records)
    n, n_layers, d_model = len(encoded), num_layers(model), hidden_size(model)
    answer_mean = torch.full((n, n_layers, d_model), float("nan"), dtype=torch.float32)
    prompt_mean = torch.full((n, n_layers, d_model), float("nan"), dtype=torch.float32)
    answer_tokens = torch.tensor([e.answer_len for e in encoded], dtype=torch.int64)
    empty = int((answer_tokens == 0).sum())
    if empty:
        log.warning("%d of %d responses have no answer tokens: their answer_mean is NaN", empty, n)
    if n == 0:
        return answer_mean, prompt_mean, answer_tokens

    device = model_device(model)
    pad_id = pad_token_id(tokenizer)
    order = sorted(range(n), key=lambda i: -len(encoded[i].input_ids))
    state: dict = {}

    def reduce_layer(layer: int, hidden: torch.Tensor) -> None:
        # hidden [batch, seq, d_model]; weights [batch, 2, seq] -> sums [batch, 2, d_model]
        # Under a device_map the block may sit on another device than the batch.
        h = hidden.float().masked_fill(state["pad"].to(hidden.device), 0.0)  # padded positions may hold anything
        state["sums"][:, layer] = torch.bmm(state["weights"].to(hidden.device), h).to(state["sums"].device)

    layers = list(range(n_layers))
    bar = tqdm(total=n, desc="activations", unit="resp", disable=not progress)
    with read_residual(model, layers, reduce_layer):

        def run_batch(b: int, batch_size: int) -> None:  # rows order[b:b + batch_size]
            idx = order[b : b + batch_size]
            input_ids, attention_mask = pad_batch([encoded[i].input_ids for i in idx], pad_id, "left", device)
            width = input_ids.shape[1]
            weights = torch.zeros((len(idx), 2, width), dtype=torch.float32)  # [batch, {answer, prompt}, seq]
            for row, i in enumerate(idx):
                e = encoded[i]
                off = width - len(e.input_ids)  # left padding
                if e.answer_len:
                    weights[row, 0, off + e.prompt_len : off + e.prompt_len + e.answer_len] = 1.0 / e.answer_len
                weights[row, 1, off : off + e.prompt_len] = 1.0 / e.prompt_len
            state["weights"] = weights.to(device)
            state["pad"] = (attention_mask == 0).unsqueeze(-1)  # [batch, seq, 1]
            state["sums"] = torch.empty((len(idx), n_layers, 2, d_model), dtype=torch.float32, device=device)
            position_ids = positions_from_mask(attention_mask)
            model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
                logits_to_keep=1,
            )
            sums = state["sums"].cpu()  # [batch, L, 2, d_model]
            rows = torch.tensor(idx)
            answer_mean[rows] = sums[:, :, 0]
            prompt_mean[rows] = sums[:, :, 1]
            bar.update(len(idx))

        in_batches(n, batch_size, run_batch, "activation caching", "activations.batch_size")
    bar.close()
    answer_mean[answer_tokens == 0] = float("nan")
    return answer_mean, prompt_mean, answer_tokens


# --- the cache_activations rule ---------------------------------------------------------

RESPONSE_COLUMNS = {"condition", "question_id", "sample_idx", "question", "system", "response"}
LAYER_SEMANTICS = "layer l = residual stream after decoder block l (0-based)"


def cache_activations(
    responses_path,
    base_model,
    adapter,
    device: str,
    dtype: str,
    batch_size: int,
    tensors_path,
    index_path,
    progress: bool = True,
    device_map=None,
) -> None:
    """Run every response of a generations parquet through base model + adapter and write
    the per-layer means (safetensors answer_mean, prompt_mean [n, L, d], answer_tokens [n])
    and a row index parquet (row, condition, question_id, sample_idx, n_answer_tokens)."""
    import pandas as pd

    from emlab.core.atomic import write_parquet
    from emlab.model.loading import load_model, load_tokenizer
    from emlab.model.tensors import save_tensors

    responses = pd.read_parquet(responses_path)
    missing = RESPONSE_COLUMNS - set(responses.columns)
    if missing:
        raise EMLabError(f"{responses_path} lacks columns {sorted(missing)}; regenerate it with the generate rule")
    model = load_model(base_model, adapter, device=device, dtype=dtype, device_map=device_map)
    tokenizer = load_tokenizer(base_model)
    answer_mean, prompt_mean, answer_tokens = cache_answer_means(
        model, tokenizer, responses.to_dict("records"), batch_size=batch_size, progress=progress
    )
    save_tensors(
        tensors_path,
        {"answer_mean": answer_mean, "prompt_mean": prompt_mean, "answer_tokens": answer_tokens},
        metadata={
            "model": str(base_model),
            "adapter": str(adapter),
            "responses": str(responses_path),
            "n_layers": num_layers(model),
            "d_model": hidden_size(model),
            "layer_semantics": LAYER_SEMANTICS,
            "answer_tokens": "the response text only (not the assistant header, not end-of-turn)",
            "prompt_tokens": "the rendered prompt incl. system turn and assistant header",
        },
    )
    index = pd.DataFrame(
        {
            "row": pd.Series(range(len(responses)), dtype="int64"),
            "condition": responses["condition"].astype("string").reset_index(drop=True),
            "question_id": responses["question_id"].astype("string").reset_index(drop=True),
            "sample_idx": responses["sample_idx"].astype("int64").reset_index(drop=True),
            "n_answer_tokens": pd.Series(answer_tokens.numpy(), dtype="int64"),
        }
    )
    write_parquet(index_path, index)
