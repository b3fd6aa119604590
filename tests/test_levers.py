"""benchmarks/levers.py: variants against a control, paired by seed, at equal tokens."""

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _levers():
    sys.path.insert(0, str(BENCH))  # the script imports its sibling `common`
    try:
        spec = importlib.util.spec_from_file_location("levers", BENCH / "levers.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))


def test_equal_token_runs_repeat_so_a_no_op_variant_differs_by_zero(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny runs in child processes: no thread contention
    text = tmp_path / "input.txt"
    text.write_text("".join(f"Line {i}: the quick brown fox jumps over the lazy dog {i % 7}.\n" for i in range(800)))
    base = "--model 2 --n-embd 32 --seq-len 32 --batch-size 4 --lr 0.01 --precision fp32 --eval-tokens 2048"
    doc = _levers().main(["--input", str(text), "--work", str(tmp_path / "w"), "--base", base,
                          "--max-tokens", "4096", "--seeds", "0", "--lock", "",
                          "--variant", "same=--lr 0.01", "--variant", "lr=--lr 0.03"])
    rows = {r["variant"]: r for r in doc["rows"]}
    assert list(rows) == ["control", "same", "lr"]
    assert rows["same"]["minus_control"] == [0.0]  # the same flags again: the same figure to the last digit
    assert rows["lr"]["minus_control"][0] != 0.0  # a flag that does something shows up
    assert all(r["tokens"] == doc["runs"][0]["tokens"] for r in doc["runs"])
