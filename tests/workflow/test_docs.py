"""Every documentation reference in the repository resolves inside it.

A clone of the repository is all a user has: a file that cites a note which
is not in it (the project's old external method notes, a path on a developer's
machine) sends them nowhere. Scans every file git tracks (plus new, unignored
ones) for references to .md/.rst files and checks that each exists, and that
the anchors of the docs' own links name a heading.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
THIS = Path(__file__).resolve()
# A reference: an optional ./ ../ or / prefix, path segments, a name ending .md or .rst.
REFERENCE = re.compile(r"(?<![\w.\-/])((?:\.{1,2}/|/)?(?:[\w.\-]+/)*[\w\-][\w.\-]*\.(?:md|rst))(?![\w\-])")
URL = re.compile(r"[a-z][a-z0-9+.\-]*://\S+", re.IGNORECASE)
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
# Names of the notes that lived outside the repository before docs/ existed.
EXTERNAL_NOTES = ("METHOD", "MACHINE", "CLUSTER", "STYLE")


def repo_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    files = [ROOT / name for name in out.split("\0") if name]
    return [f for f in files if f.is_file() and f.resolve() != THIS]


def text_of(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if b"\0" in data[:8192] or len(data) > 2_000_000:
        return None  # binary or a large data file
    return data.decode("utf-8", errors="replace")


def resolves(ref: str, source: Path, basenames: set[str]) -> bool:
    """A path resolves relative to the repository root or to the citing file's folder; a bare
    name (no folder) must be the name of some file in the repository."""
    if ref.startswith("/"):
        return False  # a path on someone's machine, not in the repository
    if "/" not in ref:
        return ref in basenames
    return any(
        (base / ref).resolve().is_file() and (base / ref).resolve().is_relative_to(ROOT)
        for base in (ROOT, source.parent)
    )


def github_anchor(heading: str) -> str:
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(markdown: Path) -> set[str]:
    found = set()
    in_code = False
    for line in markdown.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and re.match(r"#{1,6} ", line):
            found.add(github_anchor(line.lstrip("#")))
    return found


def test_every_doc_reference_resolves_inside_the_repository():
    files = repo_files()
    basenames = {f.name for f in files}
    broken = []
    for path in files:
        text = text_of(path)
        if text is None:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            for ref in REFERENCE.findall(URL.sub(" ", line)):
                if not resolves(ref, path, basenames):
                    broken.append(f"{path.relative_to(ROOT)}:{lineno}: {ref}")
    assert not broken, (
        "references to documents that are not in the repository (point them at a file "
        "under docs/):\n  " + "\n  ".join(broken)
    )


def test_no_file_cites_the_old_external_notes():
    pattern = re.compile(r"\b(?:" + "|".join(EXTERNAL_NOTES) + r")\.md\b")
    hits = []
    for path in repo_files():
        if path.name in {f"{name}.md" for name in EXTERNAL_NOTES}:
            continue
        text = text_of(path) or ""
        hits += [f"{path.relative_to(ROOT)}:{n}" for n, line in enumerate(text.splitlines(), 1) if pattern.search(line)]
    assert not hits, "cite the notes under docs/ instead of the old external ones:\n  " + "\n  ".join(hits)


def test_markdown_links_and_anchors_resolve():
    broken = []
    for path in repo_files():
        if path.suffix != ".md":
            continue
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            for target in MD_LINK.findall(line):
                if URL.match(target) or target.startswith("mailto:"):
                    continue
                file_part, _, anchor = target.partition("#")
                linked = (path.parent / file_part).resolve() if file_part else path
                if not linked.exists() or not linked.is_relative_to(ROOT):
                    broken.append(f"{path.relative_to(ROOT)}:{lineno}: {target} (no such file)")
                elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                    broken.append(f"{path.relative_to(ROOT)}:{lineno}: {target} (no such heading)")
    assert not broken, "broken links:\n  " + "\n  ".join(broken)


def test_docs_index_lists_every_note_and_the_readme_links_the_docs():
    notes = sorted(p.name for p in (ROOT / "docs").glob("*.md") if p.name != "README.md")
    index = (ROOT / "docs" / "README.md").read_text()
    missing = [n for n in notes if f"]({n})" not in index]
    assert not missing, f"docs/README.md does not list {missing}"
    assert "docs/README.md" in (ROOT / "README.md").read_text(), "README.md must link the docs index"


def test_reference_pattern_finds_what_it_should():
    line = "see METHOD.md, docs/judging.md and ../workflow/report/x.rst but not https://x.org/a/README.md"
    assert REFERENCE.findall(URL.sub(" ", line)) == ["METHOD.md", "docs/judging.md", "../workflow/report/x.rst"]
    assert (
        github_anchor("The single rank-1 adapter (rules `single_adapter_analysis`)")
        == "the-single-rank-1-adapter-rules-single_adapter_analysis"
    )
