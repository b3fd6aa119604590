"""Every test gets its own BUDGETLM_HOME: calibration files written by `bench`, `plan` or an
auto-planned `train` go to a temporary folder, never to the user's ~/.cache/budgetlm."""

import pytest


@pytest.fixture(autouse=True)
def budgetlm_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("budgetlm_home")
    monkeypatch.setenv("BUDGETLM_HOME", str(home))
    return home


def pytest_configure(config):
    config.addinivalue_line("markers", "faults: slow fault-injection cases (kills during writes, a full disk)")


def pytest_terminal_summary(terminalreporter):
    """The fault suite's one-line count (tests/test_faults.py), when it ran."""
    import sys

    mod = sys.modules.get("test_faults")
    if mod is not None and mod.TALLY["tried"]:
        terminalreporter.write_line(mod.pytest_terminal_summary_line())
