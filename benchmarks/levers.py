"""Does a training flag help? Variants against a control, paired by seed, at equal tokens.

    python benchmarks/levers.py --input ../shared/data/tinyshakespeare/input.txt --work /tmp/lev \\
        --base "--model 3 --n-embd 64 --batch-size 8 --weight-decay 0.3 --dropout 0" \\
        --max-tokens 4500000 --seeds 0 1 --variant "warmup0=--warmup 0" --variant "seq=--sampling sequential"

A time budget (`--budget 2m`) mixes two effects: what the flag does to the model and what the machine's
speed did that minute (on a 2-core VM one process can run 1.37x another, which moves a 2-minute
Tiny Shakespeare figure by up to 0.04 bits/byte). A token budget (`train --max-tokens`) removes the
second: with the same seed a run repeats to the last digit, so a difference between two variants is
the flag's own. What remains is the seed's effect, measured here as the control's spread over seeds;
a variant helps when it is better under every seed by more than that spread. Flags that change speed
(model size, precision, compile) need a time budget instead (`--budget`), and more seeds.

Runs alternate (seed 0: control, variants; seed 1: ...) so a slow stretch of the machine does not
fall on one variant only. The first variant is always the control: `--base` alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from common import locked, machine, prepare_split, train_run, write_json


def parse_variant(spec: str) -> tuple[str, list[str]]:
    name, sep, flags = spec.partition("=")
    if not sep or not name:
        raise SystemExit(f"--variant takes NAME=FLAGS, got {spec!r}")
    return name, flags.split()


def summarise(bpb: dict[str, dict[int, float]], seeds: list[int]) -> list[dict]:
    """Per variant: its figures, their mean, and the difference to the control under each seed."""
    control = bpb["control"]
    rows = []
    for name, by_seed in bpb.items():
        diffs = [round(by_seed[s] - control[s], 4) for s in seeds]
        rows.append({"variant": name, "bpb": [by_seed[s] for s in seeds],
                     "mean": round(statistics.fmean(by_seed.values()), 4), "minus_control": diffs})
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="training flags against a control, paired by seed")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="a text file: split 90/10 and prepared with defaults into WORK/data")
    src.add_argument("--data", help="an already prepared dataset folder")
    ap.add_argument("--work", required=True, help="scratch folder for the split and the runs")
    ap.add_argument("--base", default="", help="`train` flags every run gets")
    ap.add_argument("--variant", action="append", default=[], help="NAME=FLAGS added to --base (repeatable)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="one run per variant and seed")
    budget = ap.add_mutually_exclusive_group(required=True)
    budget.add_argument("--max-tokens", type=int, help="equal tokens: runs repeat exactly per seed")
    budget.add_argument("--budget", help="a wall-clock budget instead (flags that change speed)")
    ap.add_argument("--lock", default="/tmp/budgetlm-bench.lock", help="flock file shared by benchmarks")
    ap.add_argument("--out", default="", help="write the results here (JSON)")
    args = ap.parse_args(argv)

    work = Path(args.work)
    data = Path(args.data) if args.data else prepare_split(Path(args.input), work)[0]
    stop = ["--max-tokens", str(args.max_tokens)] if args.max_tokens else ["--budget", args.budget]
    variants = [("control", [])] + [parse_variant(v) for v in args.variant]
    bpb: dict[str, dict[int, float]] = {name: {} for name, _ in variants}
    runs = []
    for seed in args.seeds:
        for name, flags in variants:
            with locked(args.lock):
                res, wall = train_run(data, work / f"{name}-s{seed}", *stop, *args.base.split(), *flags,
                                      "--seed", str(seed))
            bpb[name][seed] = round(res["val_bpb"], 4)
            runs.append({"variant": name, "seed": seed, "val_bpb": bpb[name][seed], "tokens": res["tokens"],
                         "tokens_per_s": res["tokens_per_s"], "wall_s": round(wall, 1)})
            print(json.dumps(runs[-1]), flush=True)
    spread = max(bpb["control"].values()) - min(bpb["control"].values())
    rows = summarise(bpb, args.seeds)
    print(f"\n{'variant':<16} " + " ".join(f"seed {s:<4}" for s in args.seeds) + "   mean    minus control")
    for r in rows:
        print(f"{r['variant']:<16} " + " ".join(f"{b:<9.4f}" for b in r["bpb"])
              + f" {r['mean']:.4f}  {' '.join(f'{d:+.4f}' for d in r['minus_control'])}")
    print(f"the control's spread over seeds: {spread:.4f} bits/byte")
    doc = {"base": args.base, "stop": stop, "seeds": args.seeds, "variants": dict(variants), "rows": rows,
           "control_seed_spread": round(spread, 4), "runs": runs, **machine()}
    write_json(args.out, doc)
    return doc


if __name__ == "__main__":
    main()
