"""Optimizer choice: `adamw` vs `muon` at equal wall-clock on the Tiny Shakespeare 2-minute setup.

Same split and dataset as `shakespeare_time_to_quality.py` (first 90% / last 10% of the characters);
both optimizers get the same budget, model, batch and peak learning rate (the defaults), and only
`--optimizer` differs. Runs alternate (adamw, muon, adamw, muon, ...) over `--seeds` so that load from
other processes does not favour one. Each run holds /tmp/budgetlm-bench.lock.

    python benchmarks/optimizer_choice.py --input ../shared/data/tinyshakespeare/input.txt \
        --work /tmp/opt-bench --budget 2m --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from common import locked, prepare_split, train_run, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description="adamw vs muon at equal wall-clock")
    ap.add_argument("--input", required=True, help="tinyshakespeare/input.txt")
    ap.add_argument("--work", required=True, help="scratch folder")
    ap.add_argument("--budget", default="2m", help="wall-clock budget per run")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds (one run per optimizer each)")
    ap.add_argument("--optimizers", nargs="+", default=["adamw", "muon"])
    ap.add_argument("--prepare-args", default="", help="extra `prepare` flags")
    ap.add_argument("--train-args", default="", help="extra `train` flags for every run")
    ap.add_argument("--lock", default="/tmp/budgetlm-bench.lock")
    ap.add_argument("--json-out", default="")
    args = ap.parse_args()

    work = Path(args.work)
    data, _ = prepare_split(Path(args.input), work, *args.prepare_args.split())
    rows = []
    for seed in args.seeds:
        for opt in args.optimizers:
            with locked(args.lock):
                res, _ = train_run(data, work / f"run-{opt}-{seed}", "--budget", args.budget,
                                   "--optimizer", opt, "--seed", str(seed), *args.train_args.split())
            row = {"optimizer": opt, "seed": seed, "val_bpb": round(res["val_bpb"], 4), "steps": res["steps"],
                   "tokens": res["tokens"], "tokens_per_s": res["tokens_per_s"], "model": res["model"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {opt: round(statistics.mean(r["val_bpb"] for r in rows if r["optimizer"] == opt), 4)
               for opt in args.optimizers}
    write_json(args.json_out, {"budget": args.budget, "runs": rows, "mean_val_bpb": summary,
                               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})

if __name__ == "__main__":
    main()
