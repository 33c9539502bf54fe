"""The package has the shape of the study (docs/stages.md, "The package"): one folder per part,
each importing only from the folders before it, the plan-time folders (core/, plan/) without torch,
and no import cycle, counting the imports inside functions too. The DAG is planned with a torch
that cannot be imported."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "workflow" / "src"
PKG = SRC / "emlab"
# Each folder may import from folders of a lower rank only (same rank: neither imports the other).
RANK = {"core": 0, "plan": 1, "model": 2, "em": 3, "lora": 4, "monitor": 4, "interventions": 5, "rehearsal": 6}
PLAN_TIME = ("core", "plan")
MODEL_LIBRARIES = ("torch", "safetensors.torch", "transformers", "peft", "accelerate")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str) -> tuple[set[str], set[str]]:
    """(emlab modules, other modules) imported anywhere in module `name`, inside functions too."""
    path = MODULES[name]
    return _imports_of(path, name.split(".") if path.name == "__init__.py" else name.split(".")[:-1], name)


def _imports_of(path: Path, package: list[str], name: str = "") -> tuple[set[str], set[str]]:
    """(emlab modules, other modules) imported anywhere in the file `path` of `package`, inside functions too."""
    ours, other = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            if target == "emlab" or target.startswith("emlab."):
                while target not in MODULES:
                    target = target.rpartition(".")[0]
                if target != name:
                    ours.add(target)
            else:
                other.add(target)
    return ours, other


GRAPH = {name: _imports(name)[0] for name in MODULES}


def _folder(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def test_the_package_has_at_most_12_top_level_entries_and_every_module_sits_in_a_part():
    entries = sorted(p.name for p in PKG.iterdir() if p.name != "__pycache__" and not p.name.endswith(".egg-info"))
    assert len(entries) <= 12, entries
    loose = [p.name for p in PKG.glob("*.py") if p.name != "__init__.py"]
    assert not loose, f"modules outside the study's parts: {loose}"
    assert set(entries) - {"__init__.py"} == set(RANK), entries


def test_each_part_imports_only_the_parts_before_it():
    wrong = []
    for name, deps in GRAPH.items():
        here = _folder(name)
        for dep in deps:
            there = _folder(dep)
            if here and there and here != there and RANK[there] >= RANK[here]:
                wrong.append(f"{name} -> {dep}")
    assert not wrong, "imports against the layering (docs/stages.md):\n" + "\n".join(sorted(wrong))


def test_plan_time_parts_never_import_torch_or_a_model_library():
    wrong = []
    for name in MODULES:
        if _folder(name) in PLAN_TIME:
            for dep in _imports(name)[1]:
                if any(dep == lib or dep.startswith(lib + ".") for lib in MODEL_LIBRARIES):
                    wrong.append(f"{name} imports {dep}")
    assert not wrong, wrong


SCRIPTS = REPO / "workflow" / "scripts"


def _uses_a_model_library(script: Path) -> list[str]:
    """The model libraries a script's imports reach, following emlab imports inside functions too (all that a
    call could import); the runner, which imports torch for the scripts that need it, is not followed."""
    todo, seen, found = list(_imports_of(script, [])[0]), set(), set()
    found |= _imports_of(script, [])[1]
    while todo:
        name = todo.pop()
        if name in seen or name == "emlab.model.runner":
            continue
        seen.add(name)
        ours, other = _imports(name)
        todo += ours
        found |= other
    return sorted(d for d in found if any(d == lib or d.startswith(lib + ".") for lib in MODEL_LIBRARIES))


def test_scripts_that_reach_no_model_library_skip_torch_and_the_others_pin_its_threads():
    """`run_script(..., uses_torch=False)` skips importing torch (most of a small job's start-up). A script may
    declare it only if nothing it can import reaches a model library, and must declare it if so."""
    wrong = []
    for script in sorted(SCRIPTS.glob("*.py")):
        declared_free = "uses_torch=False" in script.read_text()
        reached = _uses_a_model_library(script)
        if declared_free and reached:
            wrong.append(f"{script.name} declares uses_torch=False but reaches {reached}")
        elif not declared_free and not reached:
            wrong.append(f"{script.name} reaches no model library: declare run_script(..., uses_torch=False)")
    assert not wrong, "\n".join(wrong)
    assert _uses_a_model_library(SCRIPTS / "generate.py")  # the check sees a model job as one


def test_model_scripts_import_only_the_runner_before_it_hands_them_to_the_warm_worker():
    """A model job reaches `run_script` (which may hand it to the warm worker, emlab.model.worker) before it
    imports anything heavy: at module level only the standard library and emlab.model.runner; the rest is
    imported inside `main`. Otherwise every job would still pay the imports the worker saves."""
    allowed = {"sys", "json", "functools", "pathlib", "emlab.model.runner"}
    wrong = []
    for script in sorted(SCRIPTS.glob("*.py")):
        if "uses_torch=False" in script.read_text():
            continue
        tree = ast.parse(script.read_text())
        for node in tree.body:  # module level only
            if isinstance(node, ast.Import):
                names = {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {node.module or ""}
            else:
                continue
            if names - allowed:
                wrong.append(f"{script.name}:{node.lineno} imports {sorted(names - allowed)} at module level")
    assert not wrong, "\n".join(wrong)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_counting_imports_inside_functions():
    assert not _cycles(GRAPH)


def test_the_cycle_finder_finds_a_planted_cycle():
    planted = dict(GRAPH)
    planted["emlab.core.errors"] = GRAPH["emlab.core.errors"] | {"emlab.em.generation"}
    assert any("emlab.core.errors" in c and "emlab.em.generation" in c for c in _cycles(planted))


def test_the_dag_is_planned_with_a_torch_that_cannot_be_imported(tmp_path):
    poisoned = tmp_path / "poison" / "torch"
    poisoned.mkdir(parents=True)
    (poisoned / "__init__.py").write_text('raise ImportError("torch is not importable in this test")\n')
    env = dict(os.environ, PYTHONPATH=str(poisoned.parent))
    check = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert check.returncode != 0 and "not importable" in check.stderr
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--quiet",
            "rules",
            "--directory",
            str(tmp_path / "work"),
            "--snakefile",
            str(REPO / "Snakefile"),
            "--configfile",
            str(REPO / "config.yaml"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert re.search(r"^total\s+\d+", run.stdout, re.M), run.stdout[-2000:]


RULES = sorted((REPO / "rules").glob("*.smk"))


def test_rule_files_use_named_input_functions_not_lambdas():
    found = [f"{p.name}:{i}" for p in RULES for i, line in enumerate(p.read_text().splitlines(), 1) if "lambda" in line]
    assert not found, f"inline lambdas (name a get_* function instead): {found}"


GROUP_STRING = re.compile(r"""(\.group|\[["']group["']\])\s*(==|!=|\bin\b|\bnot in\b)\s*[\(\[]?\s*["']""")


def test_condition_groups_are_compared_through_the_registry_not_as_strings():
    files = (
        RULES + [REPO / "Snakefile"] + sorted(PKG.rglob("*.py")) + sorted((REPO / "workflow" / "scripts").glob("*.py"))
    )
    found = [
        f"{p.relative_to(REPO)}:{i}"
        for p in files
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if GROUP_STRING.search(line)
    ]
    assert not found, f"a condition group compared with a string (use emlab.plan.conditions.Group): {found}"
    assert GROUP_STRING.search('if c.group == "steering":') and GROUP_STRING.search("if c.group in ('ablation', 'x'):")


def test_tests_mirror_the_package():
    folders = {p.name for p in (REPO / "tests").iterdir() if p.is_dir() and p.name != "__pycache__"}
    extra = folders - set(RANK) - {"helpers", "workflow", "benchmarks"}
    assert not extra, f"test folders that mirror no part of the package: {sorted(extra)}"
    assert not list((REPO / "tests").glob("test_*.py")), "a test module outside the mirrored folders"
    helpers = [
        p
        for p in (REPO / "tests").rglob("*.py")
        if not p.name.startswith("test_")
        and p.name not in ("conftest.py", "__init__.py")
        and "helpers" not in p.relative_to(REPO / "tests").parts
    ]
    assert not helpers, f"test helpers outside tests/helpers/: {helpers}"
