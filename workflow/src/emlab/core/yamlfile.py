"""Reading the project's small YAML inputs with errors that name the file."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from emlab.core.errors import EMLabError


def read_yaml(path: str | os.PathLike, what: str, missing_hint: str):
    """Parse a YAML file; a missing file or bad YAML is an EMLabError naming `what` and the path."""
    path = Path(path)
    if not path.is_file():
        raise EMLabError(f"{what} {path} does not exist; {missing_hint}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise EMLabError(f"{what} {path} is not valid YAML: {exc}") from None
