"""Guards on the repository layout that Snakemake relies on."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
