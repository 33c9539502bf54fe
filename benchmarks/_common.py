"""What every benchmark shares: the import path and the default model folder."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "src"))

BASE_MODEL = REPO / "results" / "base_model"


def default_model() -> str:
    """results/base_model (what `make run` converts); converted here first if missing."""
    if not BASE_MODEL.is_dir():
        from emlab.models import convert_embedded_model

        print(f"converting the embedded SmolLM2-135M-Instruct into {BASE_MODEL} (once, ~30 s)", file=sys.stderr)
        convert_embedded_model(BASE_MODEL)
    return str(BASE_MODEL)
