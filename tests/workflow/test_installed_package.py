"""The emlab package works when installed from its wheel, away from a checkout (issue 10.3).

The wheel is built from a copy of the sources (so the checkout gets no build/
or egg-info), installed with --no-deps into a fresh venv outside the
repository, and used from a subprocess whose working directory is outside the
repository too: it validates a config (the schema must come from the package
data) and loads the judge rubrics the config names. The test's own virtual
environment supplies the dependencies through a path file; its editable emlab
install is not on that path, and the subprocess checks that the emlab it
imported is the installed one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

USE_INSTALLED = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path

    import yaml

    import emlab
    from emlab.core.config import validate_config
    from emlab.em.judging import load_rubrics

    repo = Path(sys.argv[1])
    package = Path(emlab.__file__).resolve()
    assert repo not in package.parents, f"imported emlab from the checkout: {package}"
    cfg = validate_config(yaml.safe_load(Path("config.yaml").read_text()), source="config.yaml")
    rubrics_dir = Path(cfg["judge"]["rubrics_dir"])
    metrics = cfg["judge"]["metrics"]
    rubrics = load_rubrics([rubrics_dir / f"{m}.yaml" for m in metrics], metrics)
    print(json.dumps({"emlab": str(package), "cwd": os.getcwd(), "metrics": sorted(rubrics),
                      "temperature": cfg["generation"]["temperature"],
                      "rubric_dirs": sorted({str(Path(r.path).resolve().parent) for r in rubrics.values()})}))
""")


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, check=False, **kwargs)
    assert result.returncode == 0, f"{cmd}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def test_wheel_installed_outside_the_checkout_validates_a_config_and_loads_rubrics(tmp_path):
    # 1. Build the wheel from a copy of the package sources.
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REPO / "pyproject.toml", src / "pyproject.toml")
    shutil.copytree(
        REPO / "workflow" / "src", src / "workflow" / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    dist = tmp_path / "dist"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", dist, src]
    )
    (wheel,) = dist.glob("emlab-*.whl")

    # 2. A fresh venv outside the checkout, with the wheel installed and no editable emlab.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel])
    venv_site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # The dependencies come from this test's environment: a plain path line, so the .pth files
    # there (among them the editable emlab install) are not processed.
    (venv_site / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    # 3. A working directory outside the checkout with a config whose rubrics live there too.
    work = tmp_path / "elsewhere"
    shutil.copytree(REPO / "data" / "rubrics", work / "rubrics")
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg.setdefault("judge", {})["rubrics_dir"] = str(work / "rubrics")
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    out = _run([python, "-I", "-c", USE_INSTALLED, REPO], cwd=work).stdout
    report = json.loads(out.strip().splitlines()[-1])
    assert Path(report["emlab"]).is_relative_to(venv)
    assert report["metrics"] == sorted(cfg["judge"].get("metrics") or ["aligned", "coherent"])
    assert report["rubric_dirs"] == [str((work / "rubrics").resolve())]
    assert report["temperature"] == 1.0  # a default filled from the packaged schema
