"""Guards on the repository layout that Snakemake relies on."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_workflow_folder_is_not_a_python_package():
    # A package named `workflow` would shadow Snakemake's global `workflow` object.
    assert not (REPO / "workflow" / "__init__.py").exists()


def test_no_rule_file_imports_workflow():
    offenders = []
    for smk in list((REPO / "rules").glob("*.smk")) + [REPO / "Snakefile"]:
        for line in smk.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("import workflow", "from workflow")):
                offenders.append(f"{smk.name}: {stripped}")
    assert offenders == []


def _input_lists(node) -> bool:
    """Whether an expression reads a rule's input (smk.input..., snakemake.input...)."""
    import ast

    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and sub.attr == "input":
            base = sub.value
            if isinstance(base, ast.Name) and base.id in ("smk", "snakemake"):
                return True
    return False


def test_no_script_pairs_input_files_by_position():
    """A rule's several files of one kind are matched to their runs or conditions by the id each file
    carries (emlab.core.keyed), never by position: zipping an input list with a params list once gave every
    monitor run another run's drift table. No script may zip (or index by enumerate over) its inputs."""
    import ast

    offenders = []
    for path in sorted((REPO / "workflow" / "scripts").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("zip", "enumerate"):
                if any(_input_lists(arg) for arg in node.args):
                    offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, f"input files paired by position: {offenders}"
