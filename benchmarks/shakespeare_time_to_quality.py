"""Time to quality on CPU: Tiny Shakespeare, validation bits per byte after a wall-clock budget.

Split (the usual one): the first 90% of the characters train, the last 10% validate
(1,003,854 / 111,540 characters). The split files go to --work (never into the repository), are
prepared with `budgetlm prepare --val` and trained with only `--data`, `--out` and `--budget`:
every other choice (model size, batch, learning rate, precision) is budgetlm's default.

The peer: nanoGPT's char-level CPU recipe reaches 2.73 bits/byte in 1 min 51 s and 2.26 in 10 min 35 s
on the reference machine. Targets: <= 2.12 at 2 minutes and <= 2.04 at 10 minutes.

Each training run holds /tmp/budgetlm-bench.lock (flock) so that benchmarks do not overlap.

    python benchmarks/shakespeare_time_to_quality.py \
        --input ../shared/data/tinyshakespeare/input.txt --work /tmp/shakes-bench --budgets 2m 10m
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import locked, machine, prepare_split, train_run, write_json

REFERENCE = {"2m": 2.73, "10m": 2.26}  # nanoGPT char-level CPU recipe (1m51s, 10m35s) on the reference machine
TARGET = {"2m": 2.12, "10m": 2.04}  # the quality targets in docs/BENCHMARKS.md (nanoGPT README: 2.12 at 2m)


def main() -> None:
    ap = argparse.ArgumentParser(description="Tiny Shakespeare time-to-quality benchmark")
    ap.add_argument("--input", required=True, help="tinyshakespeare/input.txt")
    ap.add_argument("--work", required=True, help="scratch folder for the split, dataset and runs")
    ap.add_argument("--budgets", nargs="+", default=["2m", "10m"], help="wall-clock budgets")
    ap.add_argument("--prepare-args", default="", help="extra `prepare` flags (default: none)")
    ap.add_argument("--train-args", default="", help="extra `train` flags (default: none)")
    ap.add_argument("--lock", default="/tmp/budgetlm-bench.lock", help="flock file shared by benchmarks")
    ap.add_argument("--json-out", default="", help="write the results here")
    args = ap.parse_args()

    work = Path(args.work)
    data, prep = prepare_split(Path(args.input), work, *args.prepare_args.split())
    print(f"prepared: {prep['tokenizer']} vocab {prep['vocab_size']}, {prep['tokens']} tokens, "
          f"{prep['bytes_per_token']:.2f} bytes/token", flush=True)
    results = []
    for i, budget in enumerate(args.budgets):
        name = f"run-{budget}" + (f"-{i + 1}" if args.budgets.count(budget) > 1 else "")  # repeats keep their runs
        with locked(args.lock):
            res, wall = train_run(data, work / name, "--budget", budget, *args.train_args.split())
        row = {"budget": budget, "run": name, "val_bpb": round(res["val_bpb"], 4), "val_loss": round(res["val_loss"], 4),
               "steps": res["steps"], "tokens": res["tokens"], "train_s": res["elapsed_s"],
               "wall_s": round(wall, 1), "model": res["model"], "precision": res["precision"],
               "tokens_per_s": res["tokens_per_s"], "mfu": res.get("mfu"),
               "reference_bpb": REFERENCE.get(budget), "target_bpb": TARGET.get(budget)}
        results.append(row)
        print(json.dumps(row), flush=True)
    write_json(args.json_out, {
        "tokenizer": prep["tokenizer"], "vocab_size": prep["vocab_size"], "prepare_args": args.prepare_args,
        "train_args": args.train_args, "results": results, **machine()})

if __name__ == "__main__":
    main()
