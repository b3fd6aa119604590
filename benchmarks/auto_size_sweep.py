"""Does the planner's model size earn its keep? (issue 4 acceptance)

On Tiny Shakespeare, for each budget: ask the planner (`budgetlm.bench.auto_configure`: calibrate
this device, then `plan.auto_plan`) for the model, then train that model, the model with about half
its parameters and the one with about twice, each for the same wall-clock budget and the same batch,
and compare validation bits per byte. Each training run is a separate `budgetlm train` process; the
shared benchmark lock (the file `flock` uses) is held for each budget's calibration and three runs.

    .venv/bin/python benchmarks/auto_size_sweep.py --text ../shared/data/tinyshakespeare/input.txt \\
        --work /tmp/sweep --budgets 2m 10m --out docs/bench/auto_size_sweep.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from shakespeare_time_to_quality import locked, prepare_split, train_run

from budgetlm.config import parse_duration


def prepare(text: Path, work: Path, vocab: int) -> Path:
    """The usual 90/10 character split, prepared once per work folder (reused when present)."""
    data = work / "data"
    if (data / "manifest.json").is_file():
        return data
    data, _ = prepare_split(text, work, "--vocab-size", str(vocab), "--txt-documents", "file")
    return data


def train(data: Path, out: Path, budget: str, depth: int, seq_len: int, batch: int, micro: int) -> dict:
    summary, wall = train_run(data, out, "--budget", budget, "--model", str(depth), "--seq-len", str(seq_len),
                              "--batch-size", str(batch), "--micro-batch", str(micro))
    summary["wall_seconds"] = wall
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", required=True, help="tinyshakespeare/input.txt")
    ap.add_argument("--work", required=True, help="scratch folder (dataset and runs)")
    ap.add_argument("--budgets", nargs="+", default=["2m", "10m"])
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--lock", default="/tmp/budgetlm-bench.lock", help="flock file ('' = none)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    from budgetlm.bench import auto_configure
    from budgetlm.data.shards import read_manifest
    from budgetlm.models.presets import model_config, num_params

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("BUDGETLM_HOME", str(work / "home"))  # a fresh calibration for this sweep
    data = prepare(Path(args.text), work, args.vocab_size)
    manifest = read_manifest(data)
    vocab = int(manifest["tokenizer"]["vocab_size"])
    train_tokens = int(manifest["splits"]["train"]["tokens"])
    results = []
    for budget in args.budgets:
        # One lock for the whole budget (calibration and its three runs): the runs are compared with
        # each other, so they should see the same machine, back to back.
        with locked(args.lock):
            plan = auto_configure(parse_duration(budget), train_tokens, args.seq_len, "causal", vocab)
            d0 = plan.depth
            sizes = {d: num_params(model_config(d, vocab, max_seq_len=args.seq_len)) for d in range(1, 33)}
            smaller, larger = [d for d in sizes if d < d0], [d for d in sizes if d > d0]
            # depth 1 has no smaller neighbour on the dial: then "half" is skipped (reported as such)
            half = min(smaller, key=lambda d: abs(sizes[d] / sizes[d0] - 0.5)) if smaller else None
            double = min(larger, key=lambda d: abs(sizes[d] / sizes[d0] - 2.0))
            batch = plan.micro_batch * plan.grad_accum
            half_text = f"half depth {half} ({sizes[half] / 1e6:.2f}M)" if half else "no smaller depth"
            print(f"budget {budget}: planner depth {d0} ({sizes[d0] / 1e6:.2f}M), {half_text}, "
                  f"double depth {double} ({sizes[double] / 1e6:.2f}M); "
                  f"batch {batch} x {args.seq_len} (micro {plan.micro_batch}), {plan.precision}", flush=True)
            for role, depth in (("planner", d0), ("half", half), ("double", double)):
                if depth is None:
                    continue
                s = train(data, work / f"run-{budget}-{role}-d{depth}", budget, depth, args.seq_len, batch,
                          plan.micro_batch)
                row = {"budget": budget, "role": role, "depth": depth, "params": sizes[depth],
                       "val_bpb": s.get("val_bpb"), "tokens": s.get("tokens"), "summary": s}
                results.append(row)
                print(f"  {role:8s} depth {depth:2d} {sizes[depth] / 1e6:6.2f}M params: val bpb {row['val_bpb']}, "
                      f"tokens {row['tokens']}", flush=True)
        results.append({"budget": budget, "plan": plan.to_json()})
    print("\n| budget | model | depth | params | tokens trained | val bits/byte |")
    print("|---|---|---|---|---|---|")
    for r in results:
        if "role" in r:
            print(f"| {r['budget']} | {r['role']} | {r['depth']} | {r['params'] / 1e6:.2f}M | {r['tokens']} | "
                  f"{r['val_bpb'] if r['val_bpb'] is None else round(r['val_bpb'], 4)} |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
