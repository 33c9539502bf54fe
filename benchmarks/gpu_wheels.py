"""Prepare .whl/ for a GPU machine without network (make gpu-wheels; run here, with PyPI).

    .venv/bin/python benchmarks/gpu_wheels.py [--dest .whl]

The machine lent for `make gpu-check` has torch, transformers, peft,
safetensors, pandas, pyarrow, scikit-learn, matplotlib and pytest, but not
snakemake, jsonschema, openai or skops, and at most 64 MiB travels with the
command. So this writes into the git-ignored folder .whl/:

  - the cp312 manylinux x86_64 wheels of snakemake, jsonschema, openai and skops
    at the versions of requirements.lock, with their dependencies, less every
    package the GPU image already has (IMAGE_HAS; torch and friends stay out);
  - SmolLM2-135M-Instruct's tokenizer folder (.whl/tokenizer), exported from the
    embedded GGUF (the 93 MB model wheel cannot travel); tests/conftest.py reads
    it through EMLAB_TOKENIZER_DIR.

and fails if the folder is over 50 MiB.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "src"))
WANTED = ("snakemake", "jsonschema", "openai", "skops")
SDIST_ONLY = ("connection_pool",)  # built into a wheel here first, then found by --find-links
LIMIT_MIB = 50
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any")

# The GPU image's packages (the device notes' "Python packages already there", nvidia-h200 'cuda' image,
# as read 2026-11-17). Their wheels are deleted: the image's own versions are used.
IMAGE_HAS = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split()


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(names) -> dict[str, str]:
    """name -> version from requirements.lock (the versions the tests passed with)."""
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line.strip())
        if m:
            pins[normalise(m.group(1))] = m.group(2)
    missing = [n for n in names if normalise(n) not in pins]
    if missing:
        raise SystemExit(f"requirements.lock has no pin for {missing}; run make lock first")
    return {n: pins[normalise(n)] for n in names}


def wheel_name(path: Path) -> str:
    return normalise(path.name.split("-")[0])


def export_tokenizer(out: Path) -> None:
    from emlab.model.loading import export_embedded_tokenizer

    if out.exists():
        shutil.rmtree(out)
    export_embedded_tokenizer(out)


def size_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", default=str(REPO / ".whl"))
    args = ap.parse_args(argv)
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    sdists = lock_pins(SDIST_ONLY)
    subprocess.run(
        [*pip, "wheel", "-q", "--no-deps", "-w", str(dest), *(f"{n}=={v}" for n, v in sdists.items())], check=True
    )
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run(
        [
            *pip,
            "download",
            "-q",
            "--only-binary=:all:",
            "--python-version",
            "3.12",
            "--implementation",
            "cp",
            *platforms,
            "-d",
            str(dest),
            "--find-links",
            str(dest),
            *(f"{n}=={v}" for n, v in lock_pins(WANTED).items()),
        ],
        check=True,
    )
    have = {normalise(n) for n in IMAGE_HAS}
    removed = []
    for whl in sorted(dest.glob("*")):
        if whl.is_file() and (whl.suffix != ".whl" or wheel_name(whl) in have):
            removed.append(whl.name)
            whl.unlink()
    export_tokenizer(dest / "tokenizer")
    kept = sorted(p.name for p in dest.glob("*.whl"))
    total = size_mib(dest)
    print(f"{dest}: {len(kept)} wheels + tokenizer/, {total:.1f} MiB (removed {len(removed)} the image has)")
    for name in kept:
        print("  ", name)
    if total > LIMIT_MIB:
        print(
            f"gpu-wheels: {total:.1f} MiB is over {LIMIT_MIB} MiB; at most 64 MiB travels with a device command",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
