"""Every test gets its own BUDGETLM_HOME: calibration files written by `bench`, `plan` or an
auto-planned `train` go to a temporary folder, never to the user's ~/.cache/budgetlm."""

import pytest


@pytest.fixture(autouse=True)
def budgetlm_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("budgetlm_home")
    monkeypatch.setenv("BUDGETLM_HOME", str(home))
    return home
