"""Per-token scalars of rank-1 LoRA adapters, and how much each answer token
matters to the fine-tune (Soligo et al. section 4).

A rank-1 adapter on a linear module computes one scalar per token, s = A·x
(x: the module's input, e.g. the MLP hidden activation for down_proj), and
adds scale·s·B to the module's output. Teacher-forced over prompt + response
exactly as generated (emlab.em.activations.encode_records), this module records
for every token and adapter:
  - `scalars`   s = A·x                          float32 [n_tokens, n_adapters]
  - `effective` scale·s·‖B‖ (the size of what the adapter adds; scale is
                peft's scaling of that adapter: alpha/r, or alpha/sqrt(r) with rsLoRA)
Adapters are ordered by layer (emlab.em.finetune.sort_adapters), named `L{l}.down_proj`.

Token significance (same pass, answer tokens only; NaN elsewhere):
  - `kl`: KL(p_base ‖ p_ft) of the next-token distributions at the token's
    position, i.e. of the predictions made after reading the token (what its
    scalars influence first). p_base is the same model inside peft's
    `disable_adapter()`: one copy of the weights.
  - `grad_importance` (optional, GRAD_IMPORTANCE_DEFINITION): the gradient of the
    response's summed answer-token KL with respect to the input embeddings
    (through both the base and the fine-tuned pass), its L2 norm per token,
    normalised to sum 1 over the response's answer tokens, times that summed KL.

Batches are sorted by length and left-padded; padding is dropped before
anything is stored. The lm_head runs on answer positions only, LOGIT_CHUNK
tokens at a time, so no [tokens, vocab] tensor outlives one chunk of one batch.
Hooks are installed by context managers that always remove them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from emlab.core.atomic import write_parquet
from emlab.core.errors import EMLabError
from emlab.em.activations import encode_records
from emlab.em.finetune import adapter_key, sort_adapters
from emlab.model.loading import model_device
from emlab.model.tensors import load_tensors, save_tensors

log = logging.getLogger(__name__)

LOGIT_CHUNK = 512  # answer positions per lm_head call (bounds the [chunk, vocab] temporaries)

KL_DEFINITION = (
    "kl[t] = KL(p_base(. | tokens <= t) || p_ft(. | tokens <= t)), in nats, at every answer token t: "
    "the next-token distributions after reading token t; p_base is the fine-tune with its adapters "
    "disabled (peft disable_adapter). NaN on prompt and end-of-turn tokens."
)
GRAD_IMPORTANCE_DEFINITION = (
    "grad_importance[t] = KL_total * ||dKL_total/de_t||_2 / sum_{answer t'} ||dKL_total/de_t'||_2 for every answer "
    "token t of a response, where KL_total is the sum of kl over the response's answer tokens and e_t the input "
    "embedding of token t (the gradient flows through both the base and the fine-tuned pass). 0 when the gradient "
    "vanishes; NaN on prompt and end-of-turn tokens, and everywhere when not computed."
)

TOKEN_COLUMNS = [
    "response",
    "condition",
    "question_id",
    "sample_idx",
    "position",
    "token_id",
    "token",
    "segment",
    "is_answer",
    "kl",
    "grad_importance",
]
SEGMENTS = ("prompt", "answer", "suffix")


@dataclass(frozen=True)
class ScalarCaptureSettings:
    """How the teacher-forced capture runs (built with emlab.core.settings.build from the config)."""

    batch_size: int  # responses per scalar + KL batch
    gradient_importance: bool  # also compute grad_importance (a separate pass with autograd)
    gradient_batch_size: int  # responses per gradient batch (it holds two forward graphs)


# --------------------------------------------------------------------------- adapters


@dataclass(frozen=True)
class Rank1Adapter:
    """One rank-1 LoRA module of a peft model."""

    name: str  # "L9.down_proj"
    layer: int
    module: torch.nn.Module  # the peft LoraLayer (base_layer + lora_A/lora_B ModuleDicts)
    adapter: str  # the peft adapter name ("default")

    @property
    def lora_A(self) -> torch.nn.Module:
        return self.module.lora_A[self.adapter]

    @property
    def lora_B(self) -> torch.nn.Module:
        return self.module.lora_B[self.adapter]

    @property
    def scale(self) -> float:
        """peft's scaling of this adapter (alpha/r, alpha/sqrt(r) with rsLoRA), as currently set."""
        return float(self.module.scaling[self.adapter])

    def b_norm(self) -> float:
        return float(self.lora_B.weight.detach().float().norm())


def rank1_adapters(model, where: str = "model") -> list[Rank1Adapter]:
    """Every LoRA module of a peft model, ordered by layer; each must be an unmerged, plain rank-1 adapter.

    `where` names the fine-tune in errors (a rank > 1 or DoRA adapter, a merged
    model, a model without adapters).
    """
    found: dict[str, Rank1Adapter] = {}
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if not isinstance(lora_a, torch.nn.ModuleDict) or not hasattr(module, "scaling"):
            continue
        active = [a for a in getattr(module, "active_adapters", []) if a in lora_a]
        if not active:
            continue
        if len(active) > 1:
            raise EMLabError(
                f"{where}: module {name} has {len(active)} active adapters {active}; "
                "the scalar analysis needs exactly one"
            )
        key = adapter_key(f"{name}.lora_A.{active[0]}.weight")
        if key is None:
            raise EMLabError(f"{where}: cannot tell the layer of LoRA module {name}")
        if getattr(module, "merged", False):
            raise EMLabError(
                f"{where}: adapter {key[0]} is merged into the weights; load the model with "
                "merge=False (emlab.model.loading.load_model) to read its scalars"
            )
        if active[0] in getattr(module, "lora_variant", {}):
            raise EMLabError(
                f"{where}: adapter {key[0]} is a LoRA variant (e.g. DoRA); only plain rank-1 "
                "LoRA adapters have one scalar per token"
            )
        rank = int(lora_a[active[0]].weight.shape[0])
        if rank != 1:
            raise EMLabError(
                f"{where}: adapter {key[0]} has rank {rank}; per-token scalars need rank-1 adapters "
                "only (list only rank-1 fine-tunes in lora_interp.finetunes)"
            )
        found[key[0]] = Rank1Adapter(key[0], int(key[0].split(".")[0][1:]), module, active[0])
    if not found:
        raise EMLabError(f"{where}: the model has no LoRA adapters (is it a peft model loaded with its adapter?)")
    return list(sort_adapters(found).values())


def read_scalars(adapters: list[Rank1Adapter], callback: Callable[[int, torch.Tensor], None]):
    """Context manager: call callback(i, s [batch, seq]) with adapter i's scalar A·x on every forward
    through it (edit_scalars with an edit that keeps every scalar)."""

    def keep(i: int, s: torch.Tensor) -> None:
        callback(i, s)

    return edit_scalars(adapters, keep)


@contextlib.contextmanager
def edit_scalars(
    adapters: list[Rank1Adapter], fn: Callable[[int, torch.Tensor], torch.Tensor | None]
) -> Iterator[None]:
    """Replace adapter i's scalars s [batch, seq] by fn(i, s) (None keeps them) on every forward through it."""
    handles = []

    def make_hook(i: int):
        def hook(_module, _inputs, output):
            new = fn(i, output[..., 0])
            return None if new is None else new.to(output.dtype).unsqueeze(-1)

        return hook

    try:
        for i, ad in enumerate(adapters):
            handles.append(ad.lora_A.register_forward_hook(make_hook(i)))
        yield
    finally:
        for h in handles:
            h.remove()


# --------------------------------------------------------------------------- model parts


def _causal_lm(model):
    """The HF causal LM inside a peft wrapper (the adapters live inside its modules)."""
    inner = model
    for _ in range(4):
        if hasattr(inner, "get_base_model") and callable(inner.get_base_model):
            inner = inner.get_base_model()
        else:
            break
    return inner


def _parts(model):
    """(decoder returning the final normed hidden states, lm_head, logit softcap or None)."""
    lm = _causal_lm(model)
    decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else None
    head = lm.get_output_embeddings()
    if decoder is None or head is None:
        raise EMLabError(f"cannot find the decoder and lm_head of {type(lm).__name__}")
    return decoder, head, getattr(lm.config, "final_logit_softcapping", None)


def _log_probs(head, softcap, hidden: torch.Tensor) -> torch.Tensor:
    """hidden [n, d] -> next-token log-probabilities [n, vocab] in fp32."""
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return torch.log_softmax(logits, dim=-1)


def kl_rows(head, softcap, h_base: torch.Tensor, h_ft: torch.Tensor) -> torch.Tensor:
    """KL(p_base || p_ft) per row of final hidden states [n, d] -> [n], LOGIT_CHUNK rows at a time."""
    out = []
    for c in range(0, h_base.shape[0], LOGIT_CHUNK):
        lp_b = _log_probs(head, softcap, h_base[c : c + LOGIT_CHUNK])  # [chunk, vocab]
        lp_f = _log_probs(head, softcap, h_ft[c : c + LOGIT_CHUNK])
        out.append((lp_b.exp() * (lp_b - lp_f)).sum(-1))
    return torch.cat(out) if out else h_base.new_zeros(0, dtype=torch.float32)


# --------------------------------------------------------------------------- capture


@dataclass
class ScalarCapture:
    """Everything the capture records; row i of the arrays is row i of `tokens`."""

    scalars: np.ndarray  # [n_tokens, n_adapters] float32, A·x
    effective: np.ndarray  # [n_tokens, n_adapters] float32, scale·(A·x)·‖B‖
    tokens: pd.DataFrame  # TOKEN_COLUMNS
    adapters: list[str]  # "L{l}.down_proj", layer order
    layers: list[int]
    scales: list[float]
    b_norms: list[float]

    def metadata(self) -> dict:
        return {
            "adapters": self.adapters,
            "layers": self.layers,
            "scales": self.scales,
            "b_norms": self.b_norms,
            "scalar_definition": "scalars[t, i] = A_i x_t (x_t: the input of adapter i's module at token t)",
            "effective_definition": "effective[t, i] = scale_i * scalars[t, i] * ||B_i||_2",
            "kl_definition": KL_DEFINITION,
            "grad_importance_definition": GRAD_IMPORTANCE_DEFINITION,
        }


def _batches(encoded, batch_size: int) -> list[list[int]]:
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].input_ids))
    return [order[b : b + batch_size] for b in range(0, len(order), batch_size)]


def _left_pad(encoded, idx: list[int], pad_id: int, device):
    """input_ids, attention_mask, position_ids [batch, width] and the pad offset of each row."""
    width = max(len(encoded[i].input_ids) for i in idx)
    input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(idx), width), dtype=torch.long)
    offsets = []
    for row, i in enumerate(idx):
        ids = encoded[i].input_ids
        off = width - len(ids)
        input_ids[row, off:] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, off:] = 1
        offsets.append(off)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp_(min=0)
    return input_ids.to(device), attention_mask.to(device), position_ids.to(device), offsets


def _answer_mask(encoded, idx, offsets, width: int, device) -> torch.Tensor:
    mask = torch.zeros((len(idx), width), dtype=torch.bool)  # [batch, seq]
    for row, (i, off) in enumerate(zip(idx, offsets)):
        e = encoded[i]
        mask[row, off + e.prompt_len : off + e.prompt_len + e.answer_len] = True
    return mask.to(device)


def capture_scalars(
    model, tokenizer, records: list[dict], settings: ScalarCaptureSettings, where: str = "model", progress: bool = False
) -> ScalarCapture:
    """Scalars, effective sizes and token significance of every token of every record.

    `records` are generation rows (keys question, system, response, and
    condition, question_id, sample_idx for the token index); the token index
    keeps the records' order, then token position.
    """
    if settings.batch_size < 1 or settings.gradient_batch_size < 1:
        raise EMLabError(f"{where}: lora_scalars batch_size and gradient_batch_size must be >= 1")
    adapters = rank1_adapters(model, where)
    if not hasattr(model, "disable_adapter"):
        raise EMLabError(f"{where}: token significance needs a peft model (disable_adapter) for the base distribution")
    encoded = encode_records(tokenizer, records)
    lengths = np.array([len(e.input_ids) for e in encoded], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)])  # token row of each response's first token
    n_tokens, n_ad = int(starts[-1]), len(adapters)
    scalars = np.zeros((n_tokens, n_ad), dtype=np.float32)
    kl = np.full(n_tokens, np.nan, dtype=np.float32)
    grad_imp = np.full(n_tokens, np.nan, dtype=np.float32)
    device = model_device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    decoder, head, softcap = _parts(model)
    state: dict = {}

    def record(i: int, s: torch.Tensor) -> None:
        if "buf" in state:
            state["buf"][:, :, i] = s.float()

    bar = tqdm(total=len(encoded), desc="lora scalars", unit="resp", disable=not progress)
    with torch.inference_mode(), read_scalars(adapters, record):
        for idx in _batches(encoded, settings.batch_size):
            input_ids, attention_mask, position_ids, offsets = _left_pad(encoded, idx, pad_id, device)
            width = input_ids.shape[1]
            kwargs = dict(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            )
            with model.disable_adapter():
                h_base = decoder(**kwargs).last_hidden_state  # [batch, seq, d]
            state["buf"] = torch.zeros((len(idx), width, n_ad), dtype=torch.float32, device=device)
            h_ft = decoder(**kwargs).last_hidden_state
            buf = state.pop("buf").cpu().numpy()  # [batch, seq, n_adapters]
            mask = _answer_mask(encoded, idx, offsets, width, device)
            kl_batch = kl_rows(head, softcap, h_base[mask], h_ft[mask]).cpu().numpy()  # [n_answer]
            del h_base, h_ft
            k = 0
            for row, (i, off) in enumerate(zip(idx, offsets)):
                e, s0 = encoded[i], starts[i]
                scalars[s0 : s0 + len(e.input_ids)] = buf[row, off:]
                kl[s0 + e.prompt_len : s0 + e.prompt_len + e.answer_len] = kl_batch[k : k + e.answer_len]
                k += e.answer_len
            bar.update(len(idx))
    bar.close()
    if settings.gradient_importance:
        grad_imp = gradient_importance(
            model, encoded, starts, n_tokens, settings.gradient_batch_size, pad_id, progress=progress
        )
    scales = [ad.scale for ad in adapters]
    b_norms = [ad.b_norm() for ad in adapters]
    effective = (scalars * np.asarray(scales, np.float32) * np.asarray(b_norms, np.float32)).astype(np.float32)
    tokens = token_index(tokenizer, records, encoded, kl, grad_imp)
    return ScalarCapture(
        scalars, effective, tokens, [ad.name for ad in adapters], [ad.layer for ad in adapters], scales, b_norms
    )


def gradient_importance(
    model, encoded, starts, n_tokens: int, batch_size: int, pad_id: int, progress: bool = False
) -> np.ndarray:
    """GRAD_IMPORTANCE_DEFINITION for every answer token ([n_tokens] float32, NaN elsewhere)."""
    from torch.utils.checkpoint import checkpoint

    out = np.full(n_tokens, np.nan, dtype=np.float32)
    device = model_device(model)
    decoder, head, softcap = _parts(model)
    embed = _causal_lm(model).get_input_embeddings()

    def chunk_kl(hb, hf):  # recomputed in backward: the [chunk, vocab] tensors are not kept
        return kl_rows(head, softcap, hb, hf)

    bar = tqdm(total=len(encoded), desc="grad importance", unit="resp", disable=not progress)
    for idx in _batches(encoded, batch_size):
        input_ids, attention_mask, position_ids, offsets = _left_pad(encoded, idx, pad_id, device)
        mask = _answer_mask(encoded, idx, offsets, input_ids.shape[1], device)
        if not bool(mask.any()):
            for i in idx:
                e = encoded[i]
                out[starts[i] + e.prompt_len : starts[i] + e.prompt_len + e.answer_len] = 0.0
            bar.update(len(idx))
            continue
        with torch.enable_grad():
            embeds = embed(input_ids).detach().requires_grad_(True)  # [batch, seq, d]
            kwargs = dict(
                inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            )
            with model.disable_adapter():
                h_base = decoder(**kwargs).last_hidden_state
            h_ft = decoder(**kwargs).last_hidden_state
            hb, hf = h_base[mask], h_ft[mask]  # [n_answer, d]
            kl_tok = torch.cat(
                [
                    checkpoint(chunk_kl, hb[c : c + LOGIT_CHUNK], hf[c : c + LOGIT_CHUNK], use_reentrant=False)
                    for c in range(0, hb.shape[0], LOGIT_CHUNK)
                ]
            )
            # rows are independent (left padding, causal mask): one backward gives every row's own gradient
            kl_tok.sum().backward()
        norms = embeds.grad.float().norm(dim=-1)  # [batch, seq]
        row_of = mask.nonzero()[:, 0]
        kl_total = torch.zeros(len(idx), dtype=torch.float32, device=device).index_add_(0, row_of, kl_tok.detach())
        norms = norms.masked_fill(~mask, 0.0)
        total_norm = norms.sum(-1, keepdim=True)  # [batch, 1]
        imp = torch.where(total_norm > 0, norms / total_norm.clamp_min(1e-30), torch.zeros_like(norms))
        imp = (imp * kl_total.unsqueeze(-1)).cpu().numpy()
        for row, (i, off) in enumerate(zip(idx, offsets)):
            e = encoded[i]
            a0 = off + e.prompt_len
            out[starts[i] + e.prompt_len : starts[i] + e.prompt_len + e.answer_len] = imp[row, a0 : a0 + e.answer_len]
        del embeds, h_base, h_ft, hb, hf, kl_tok
        bar.update(len(idx))
    bar.close()
    return out


def token_index(tokenizer, records: list[dict], encoded, kl: np.ndarray, grad_imp: np.ndarray) -> pd.DataFrame:
    """The TOKEN_COLUMNS table: one row per token, records' order then position."""
    texts: dict[int, str] = {}
    cols: dict[str, list] = {c: [] for c in ("response", "position", "token_id", "segment")}
    for r, e in enumerate(encoded):
        n = len(e.input_ids)
        cols["response"].extend([r] * n)
        cols["position"].extend(range(n))
        cols["token_id"].extend(e.input_ids)
        cols["segment"].extend(["prompt"] * e.prompt_len + ["answer"] * e.answer_len + ["suffix"] * e.suffix_len)
    unique = sorted(set(cols["token_id"]) - set(texts))
    texts.update(zip(unique, tokenizer.batch_decode([[t] for t in unique])))
    response = np.asarray(cols["response"], dtype=np.int64)

    def per_response(key, dtype):
        values = [rec.get(key) for rec in records]
        return pd.array([values[r] for r in response] if len(response) else [], dtype=dtype)

    df = pd.DataFrame(
        {
            "response": response,
            "condition": per_response("condition", "string"),
            "question_id": per_response("question_id", "string"),
            "sample_idx": per_response("sample_idx", "Int64"),
            "position": np.asarray(cols["position"], dtype=np.int64),
            "token_id": np.asarray(cols["token_id"], dtype=np.int64),
            "token": pd.array([texts[t] for t in cols["token_id"]], dtype="string"),
            "segment": pd.array(cols["segment"], dtype="string"),
        }
    )
    df["is_answer"] = (df["segment"] == "answer").to_numpy(dtype=bool)
    df["kl"] = kl.astype(np.float32)
    df["grad_importance"] = grad_imp.astype(np.float32)
    return df[TOKEN_COLUMNS]


# --------------------------------------------------------------------------- artifact


def write_capture(capture: ScalarCapture, tensors_path, tokens_path) -> None:
    """scalars.safetensors (`scalars`, `effective` + metadata) and tokens.parquet, both atomically."""
    save_tensors(
        tensors_path,
        {"scalars": torch.from_numpy(capture.scalars), "effective": torch.from_numpy(capture.effective)},
        capture.metadata(),
    )
    write_parquet(tokens_path, capture.tokens)


def load_capture(tensors_path, tokens_path) -> ScalarCapture:
    """Read what write_capture wrote; a mismatch between the two files is an error naming them."""
    tensors, meta = load_tensors(tensors_path)
    for key in ("scalars", "effective"):
        if key not in tensors:
            raise EMLabError(f"{tensors_path} lacks tensor {key!r}; re-run the lora_scalars rule")
    for key in ("adapters", "layers", "scales", "b_norms"):
        if key not in meta:
            raise EMLabError(f"{tensors_path} lacks metadata {key!r}; re-run the lora_scalars rule")
    tokens = pd.read_parquet(tokens_path)
    missing = [c for c in TOKEN_COLUMNS if c not in tokens.columns]
    if missing:
        raise EMLabError(f"{tokens_path} lacks column(s) {missing}; re-run the lora_scalars rule")
    scalars = tensors["scalars"].numpy()
    if scalars.shape != (len(tokens), len(meta["adapters"])):
        raise EMLabError(
            f"{tensors_path} holds scalars of shape {tuple(scalars.shape)} but {tokens_path} has "
            f"{len(tokens)} tokens and the metadata {len(meta['adapters'])} adapters: the files come "
            "from different runs; re-run the lora_scalars rule"
        )
    return ScalarCapture(
        scalars,
        tensors["effective"].numpy(),
        tokens,
        list(meta["adapters"]),
        [int(x) for x in meta["layers"]],
        [float(x) for x in meta["scales"]],
        [float(x) for x in meta["b_norms"]],
    )


# --------------------------------------------------------------------------- stage (rule lora_scalars)


def lora_scalars_stage(
    responses_path,
    base_model,
    adapter,
    settings: ScalarCaptureSettings,
    device: str,
    dtype: str,
    tensors_path,
    tokens_path,
    where: str = "lora_scalars",
    progress: bool = True,
) -> None:
    """Teacher-force every response of a fine-tune's own generations parquet through it (adapters unmerged)
    and write scalars.safetensors + tokens.parquet (write_capture)."""
    from emlab.em.activations import RESPONSE_COLUMNS
    from emlab.model.loading import load_model, load_tokenizer

    responses = pd.read_parquet(responses_path)
    missing = RESPONSE_COLUMNS - set(responses.columns)
    if missing:
        raise EMLabError(f"{responses_path} lacks columns {sorted(missing)}; regenerate it with the generate rule")
    if responses.empty:
        raise EMLabError(f"{responses_path} has no responses; generate some first (generation.samples_per_question)")
    model = load_model(base_model, adapter, device=device, dtype=dtype, merge=False)
    tokenizer = load_tokenizer(base_model)
    capture = capture_scalars(model, tokenizer, responses.to_dict("records"), settings, where=where, progress=progress)
    write_capture(capture, tensors_path, tokens_path)
    log.info(
        "%s: %d tokens x %d adapters (%s)",
        where,
        len(capture.tokens),
        len(capture.adapters),
        ", ".join(capture.adapters),
    )
