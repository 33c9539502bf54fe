"""Write the tiny random model the end-to-end config runs on.

    python tests/helpers/e2e/make_tiny_model.py [OUT]     # default OUT: tests/helpers/e2e/tiny_model

A 4-layer, 64-wide Llama with random weights (seeded) and SmolLM2-135M-Instruct's
tokenizer, read from the embedded GGUF (no download). The tests build the same
model through tests/conftest.py (fixtures `tokenizer_dir`, `tiny_model_dir`).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def save_tokenizer(out_dir: Path) -> Path:
    """SmolLM2-135M-Instruct's tokenizer (ChatML template), saved as a plain folder."""
    from emlab.model.loading import export_embedded_tokenizer

    return export_embedded_tokenizer(out_dir)


def make_tiny_model(
    out_dir: Path, tokenizer_dir: Path, n_layers: int = 4, hidden: int = 64, seed: int = 0, family: str = "llama"
) -> Path:
    """A random Llama (or, family qwen2, a Qwen2: biased q/k/v projections; family gemma3, Gemma 3's
    vision-language model as google/gemma-3-4b-it and larger ship it: the text decoder under
    model.language_model beside a SigLIP vision tower whose attention has q/k/v_proj too) with the real
    tokenizer's vocabulary, saved to out_dir."""
    import torch
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    classes = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "gemma3": (None, Gemma3ForConditionalGeneration),
    }
    if family not in classes:
        raise ValueError(f"family {family!r}: one of {', '.join(classes)}")
    torch.manual_seed(seed)
    text = dict(
        vocab_size=49152,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
    )
    config_class, model_class = classes[family]
    if family == "gemma3":
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
        cfg = Gemma3Config(
            text_config={**text, "head_dim": hidden // 4, "sliding_window": 64},
            vision_config={**vision, "image_size": 32, "patch_size": 8},
            mm_tokens_per_image=4,
            eos_token_id=2,
            pad_token_id=2,
        )
    else:
        cfg = config_class(**text)
    model = model_class(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    for f in Path(tokenizer_dir).iterdir():
        shutil.copy(f, out_dir / f.name)
    return out_dir


def main(argv: list[str]) -> None:
    out = Path(argv[0]) if argv else HERE / "tiny_model"
    sys.path.insert(0, str(HERE.parents[1] / "workflow" / "src"))  # a checkout without `pip install -e .`
    with tempfile.TemporaryDirectory() as tok_dir:
        make_tiny_model(out, save_tokenizer(Path(tok_dir)))
    print(f"tiny model written to {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
