"""The package's layout: the stages import only the stages below them, and one door reads data.

The stage order is import-linter's layers contract in ``pyproject.toml``; CONTRIBUTING.md draws it.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ilt_audit"
READERS = {"load_card", "load_manifest"}  # what reads a card or its manifest from disk
DOOR = PACKAGE / "dataset" / "opening.py"


def _lint(project: Path) -> subprocess.CompletedProcess[str]:
    """import-linter on ``project``'s pyproject.toml, with its package first on the path."""
    code = (
        "import sys\n"
        "from importlinter.cli import lint_imports\n"
        "sys.exit(lint_imports(no_cache=True, no_logo=True))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=project, check=False
    )


def test_stages_import_only_the_stages_below_them() -> None:
    found = _lint(ROOT)
    assert found.returncode == 0, found.stdout + found.stderr


def test_an_import_up_the_stages_breaks_the_contract(tmp_path: Path) -> None:
    """The contract sees an import inside a function too (the package imports torch and the
    heavier stages lazily): the dataset stage reaching for the audit stage is refused."""
    copy = tmp_path / "project"
    copy.mkdir()
    shutil.copy(ROOT / "pyproject.toml", copy)
    shutil.copytree(PACKAGE, copy / "ilt_audit", ignore=shutil.ignore_patterns("__pycache__"))
    files = copy / "ilt_audit" / "dataset" / "files.py"
    files.write_text(
        files.read_text() + "\n\ndef _probe():\n    from ilt_audit.audit import ranking\n"
    )
    found = _lint(copy)
    assert found.returncode == 1, found.stdout + found.stderr
    assert "ilt_audit.dataset.files -> ilt_audit.audit.ranking" in found.stdout


def _calls(path: Path) -> set[str]:
    """The names of the functions a module calls (``f(…)`` or ``module.f(…)``)."""
    called = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                called.add(func.id)
            elif isinstance(func, ast.Attribute):
                called.add(func.attr)
    return called


def test_only_open_dataset_reads_a_card_or_a_manifest() -> None:
    """Every reader of a dataset goes through ``open_dataset``; the manifest module itself may
    read the card a path names (``load_manifest(path)`` is public API)."""
    allowed = {DOOR, PACKAGE / "dataset" / "manifest.py"}
    readers = sorted(
        str(path.relative_to(ROOT))
        for path in PACKAGE.rglob("*.py")
        if path not in allowed and _calls(path) & READERS
    )
    assert readers == []
    assert READERS <= _calls(DOOR)


def test_importing_the_package_and_a_card_needs_no_torch() -> None:
    """``import ilt_audit`` and opening a features card import neither torch nor the loader."""
    code = (
        "import sys\n"
        "from ilt_audit.dataset import open_dataset\n"
        f"open_dataset({str(ROOT / 'sample_manifests/penguins/card.toml')!r})\n"
        "print('torch' in sys.modules)\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert found.stdout.strip() == "False"


@pytest.mark.parametrize("package", sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py")))
def test_each_stage_says_what_it_is_for_and_what_it_may_import(package: str) -> None:
    doc = ast.get_docstring(ast.parse((PACKAGE / package / "__init__.py").read_text()))
    assert doc and "May import" in doc


def test_contributing_maps_every_module_in_its_stage() -> None:
    """CONTRIBUTING.md's map has a row per stage naming each of its modules in backticks."""
    rows = {}
    for line in (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("| `") and "/` |" in line:
            rows[line.split("`")[1].rstrip("/")] = line
    stages = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    assert sorted(rows) == stages
    missing = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.glob("*/**/*.py")
        if path.stem != "__init__"
        and f"`{path.stem}`" not in rows[path.relative_to(PACKAGE).parts[0]]
    ]
    assert missing == []
