"""The code's shape, kept by tests: module sizes, function sizes and the import layers.

The layers contract itself (.importlinter) runs in the README's test command (`make test` runs
`lint-imports` before pytest); here a copy of the source with one upward import shows it would fail."""

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "budgetlm"
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80


def _sources():
    return sorted(SRC.rglob("*.py"))


def test_no_file_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in _sources() if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert not long, f"files over {MAX_FILE_LINES} lines: {long}"


def test_no_function_over_80_lines():
    long = {}
    for p in _sources():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long[f"{p.relative_to(ROOT)}:{node.name}"] = n
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def _lint(src_root: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    env = {**os.environ, "PYTHONPATH": str(src_root)}
    return subprocess.run([str(exe), "--config", str(ROOT / ".importlinter"), "--no-cache"],
                          capture_output=True, text=True, env=env, cwd=ROOT)


def test_an_upward_import_breaks_the_layers_contract(tmp_path):
    """models may import only torch: a model module importing the API must fail the contract."""
    copy = tmp_path / "src"
    shutil.copytree(SRC, copy / "budgetlm", ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / "budgetlm" / "models" / "presets.py"
    target.write_text(target.read_text() + "\nfrom budgetlm import api  # noqa: E402,F401\n")
    proc = _lint(copy)
    assert proc.returncode != 0
    assert "budgetlm.models.presets -> budgetlm.api" in proc.stdout
