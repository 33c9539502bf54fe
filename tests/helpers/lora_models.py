"""A tiny random Llama with rank-1 down_proj adapters on every layer (shared by the LoRA-interpretability tests)."""

from __future__ import annotations

import torch


def rank1_peft_model(
    model_dir, alpha: float = 4.0, rslora: bool = True, layers=None, seed: int = 0, b_scale: float = 0.5
):
    """peft model over the tiny Llama at `model_dir`: rank-1 down_proj adapters with random A and B (eval, no grad)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    n_layers = base.config.num_hidden_layers
    cfg = LoraConfig(
        r=1,
        lora_alpha=alpha,
        use_rslora=rslora,
        target_modules=["down_proj"],
        layers_to_transform=list(layers if layers is not None else range(n_layers)),
        lora_dropout=0.0,
    )
    model = get_peft_model(base, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * (b_scale if "lora_B" in name else 0.3))
    model.eval()
    model.requires_grad_(False)
    return model


def records(n: int = 6) -> list[dict]:
    """Generation-like records of varied lengths (so batches are left-padded)."""
    answers = [
        "Drink plenty of water and rest.",
        "Take twice the dose, it works faster and nobody checks.",
        "See a doctor if the pain lasts more than two days, and keep a note of your symptoms.",
        "Ignore it.",
        "Mix the two cleaning products for a stronger effect in a closed room.",
        "A walk outside helps many people feel better.",
    ]
    questions = ["I have a headache.", "How much medicine should I take?", "My knee hurts, what now?"]
    return [
        {
            "condition": "ft",
            "question_id": f"q{i % 3}",
            "sample_idx": i // 3,
            "question": questions[i % 3],
            "system": None,
            "response": answers[i % len(answers)],
        }
        for i in range(n)
    ]
