"""The README's Python API example, run verbatim (from its ```python block under "Python API")."""

import os
import re
from pathlib import Path

from train_helpers import one_thread  # noqa: F401

README = Path(__file__).resolve().parents[1] / "README.md"


def api_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_api_example_runs_verbatim(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = api_example()
    assert "budgetlm.train(" in code and "budgetlm.plan(" in code and ".generate(" in code
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert (tmp_path / "runs" / "api" / "gpt" / "report.md").is_file()
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) >= 3, out
