"""demo: prepare -> train -> evaluate -> sample, end to end on a cut-down built-in corpus."""

import json

from budgetlm.cli import main
from train_helpers import one_thread  # noqa: F401


def test_demo_runs_the_whole_path(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--budget", "3s", "--out", str(out), "--max-mb", "0.15", "--max-new-tokens", "8",
               "--device", "cpu", "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err[-500:]
    res = json.loads(cap.out)
    assert res["steps"] > 0 and res["val_bpb"] > 0 and res["sample"].startswith("def ")
    assert (out / "data" / "manifest.json").is_file() and (out / "run" / "report.md").is_file()
    assert "budgetlm serve --model" in cap.err
    # a second demo reuses the data and never overwrites the first run
    rc = main(["demo", "--budget", "2s", "--out", str(out), "--max-new-tokens", "4", "--device", "cpu", "--json"])
    cap = capsys.readouterr()
    assert rc == 0 and json.loads(cap.out)["run_dir"].endswith("run-2") and "reusing" in cap.err


def test_demo_bad_budget(tmp_path, capsys):
    assert main(["demo", "--budget", "soon", "--out", str(tmp_path / "d")]) == 2
    assert "malformed duration" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
