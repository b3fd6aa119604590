"""Does the planner's model size earn its keep?

On Tiny Shakespeare (the 90/10 split of common.prepare_split, prepared with defaults), for
each budget: `budgetlm train --budget B` with no model, which calibrates this device, plans and
trains the planner's model; then the same depth with the width changed so that the model has about
half and about twice the planner's parameters, trained under the same budget with every other
choice of the planned run (batch, micro-batch, dropout, learning rate, precision, compile) kept.
Compare validation bits per byte. Each run is a separate `budgetlm train` process holding the shared
benchmark lock.

    .venv/bin/python benchmarks/auto_size_sweep.py --text ../shared/data/tinyshakespeare/input.txt \\
        --work /tmp/sweep --budgets 2m 10m --out /tmp/sweep.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from common import locked, prepare_split, train_run

from budgetlm.training.checkpoint import load_meta

# run-config fields the half/double runs copy from the planned run (everything but the model size)
KEPT = ("seq_len", "batch_size", "micro_batch", "dropout", "lr", "optimizer", "precision", "compile",
        "activation_checkpointing", "seed")


def resized(depth: int, vocab: int, seq_len: int, target_params: float) -> tuple[int, int]:
    """(width, params) at `depth` whose parameter count is closest to target_params (width a
    multiple of 32, as `train --n-embd` accepts)."""
    from budgetlm.models.presets import model_config, num_params

    best = None
    for w in range(32, 4097, 32):
        n = num_params(model_config(depth, vocab, max_seq_len=seq_len, width=w))
        if best is None or abs(n - target_params) < abs(best[1] - target_params):
            best = (w, n)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", required=True, help="tinyshakespeare/input.txt")
    ap.add_argument("--work", required=True, help="scratch folder (dataset, calibration and runs)")
    ap.add_argument("--budgets", nargs="+", default=["2m", "10m"])
    ap.add_argument("--prepare-args", default="", help="extra `prepare` flags (default: none)")
    ap.add_argument("--lock", default="/tmp/budgetlm-bench.lock", help="flock file ('' = none)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("BUDGETLM_HOME", str(work / "home"))  # a fresh calibration for this sweep
    data, prep = prepare_split(Path(args.text), work, *args.prepare_args.split())
    vocab = int(prep["vocab_size"])
    results = []
    for budget in args.budgets:
        with locked(args.lock):
            s, wall = train_run(data, work / f"run-{budget}-planner", "--budget", budget)
        cfg = json.loads((Path(s["run_dir"]) / "config.json").read_text())
        model = load_meta(s["run_dir"]).model_config  # the planned model
        depth, params = int(model["n_layer"]), int(s["params"])
        rows = [{"budget": budget, "role": "planner", "depth": depth, "params": params, "wall_s": wall,
                 "width": int(model["n_embd"]), **s}]
        print(f"budget {budget}: planner {s['model']}: val bpb {s['val_bpb']:.4f}, {s['tokens']:,} tokens",
              flush=True)
        flags = [x for k in KEPT for x in (f"--{k.replace('_', '-')}", str(cfg[k]))
                 if not isinstance(cfg[k], bool)]
        flags += ["--activation-checkpointing"] if cfg["activation_checkpointing"] else []
        for role, ratio in (("half", 0.5), ("double", 2.0)):
            width, n = resized(depth, vocab, cfg["seq_len"], ratio * params)
            with locked(args.lock):
                r, wall = train_run(data, work / f"run-{budget}-{role}", "--budget", budget,
                                    "--model", str(depth), "--n-embd", str(width), *flags)
            rows.append({"budget": budget, "role": role, "depth": depth, "width": width, "params": n,
                         "wall_s": wall, **r})
            print(f"  {role}: {r['model']} ({n / params:.2f}x): val bpb {r['val_bpb']:.4f}, "
                  f"{r['tokens']:,} tokens", flush=True)
        best = min(rows, key=lambda x: x["val_bpb"])
        print(f"  best: {best['role']}", flush=True)
        results += rows
    print("\n| budget | model | depth x width | params | tokens trained | tokens/s | val bits/byte |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['budget']} | {r['role']} | {r['depth']} x {r['width']} | {r['params'] / 1e6:.2f}M | "
              f"{r['tokens']:,} | {r['tokens_per_s']:,.0f} | {r['val_bpb']:.4f} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"prepare": prep, "runs": results}, indent=1, default=str))


if __name__ == "__main__":
    main()
