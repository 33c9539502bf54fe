"""What every benchmark shares: the import path and the default model folder."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "src"))

BASE_MODEL = REPO / "results" / "base_model"


def add_model_arguments(parser, questions: bool = True) -> None:
    """The options every model benchmark shares: --model and --threads (and --questions)."""
    parser.add_argument(
        "--model", default=None, help="model folder (default: results/base_model, converted if missing)"
    )
    if questions:
        parser.add_argument("--questions", default=str(REPO / "data" / "questions" / "first_plot_questions.yaml"))
    parser.add_argument("--threads", type=int, default=2)


def load_cpu_model(args):
    """(model, tokenizer) for args.model (default: results/base_model) in fp32 on the CPU, torch on args.threads."""
    import torch
    from emlab.model.loading import load_model, load_tokenizer

    args.model = args.model or default_model()
    torch.set_num_threads(args.threads)
    return load_model(args.model, device="cpu", dtype="float32"), load_tokenizer(args.model)


def default_model() -> str:
    """results/base_model (what `make run` converts); converted here first if missing."""
    if not BASE_MODEL.is_dir():
        from emlab.model.loading import convert_embedded_model

        print(f"converting the embedded SmolLM2-135M-Instruct into {BASE_MODEL} (once, ~30 s)", file=sys.stderr)
        convert_embedded_model(BASE_MODEL)
    return str(BASE_MODEL)
