"""benchmarks/levers.py: variants against a control, paired by seed, at equal tokens."""

from bench_helpers import load_benchmark


def test_equal_token_runs_repeat_so_a_no_op_variant_differs_by_zero(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny runs in child processes: no thread contention
    text = tmp_path / "input.txt"
    text.write_text("".join(f"Line {i}: the quick brown fox jumps over the lazy dog {i % 7}.\n" for i in range(800)))
    base = "--model 2 --n-embd 32 --seq-len 32 --batch-size 4 --lr 0.01 --precision fp32 --eval-tokens 2048"
    doc = load_benchmark("levers").main(["--input", str(text), "--work", str(tmp_path / "w"), "--base", base,
                          "--max-tokens", "4096", "--seeds", "0", "--lock", "",
                          "--variant", "same=--lr 0.01", "--variant", "lr=--lr 0.03"])
    rows = {r["variant"]: r for r in doc["rows"]}
    assert list(rows) == ["control", "same", "lr"]
    assert rows["same"]["minus_control"] == [0.0]  # the same flags again: the same figure to the last digit
    assert rows["lr"]["minus_control"][0] != 0.0  # a flag that does something shows up
    assert all(r["tokens"] == doc["runs"][0]["tokens"] for r in doc["runs"])
