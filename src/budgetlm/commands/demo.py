"""`budgetlm demo`: the whole path on the built-in corpus, no download needed.

1. prepare the built-in `python` corpus (the Python reference, the standard library's docstrings and
   its source code, ~12 MB, from this interpreter) into token shards, reusing them when already there;
2. train a small causal model under a short wall-clock budget (default 3 minutes; `--budget`), the
   model sized automatically for the budget and this machine (the plan is printed first);
3. evaluate it on the held-out split (loss, bits per byte);
4. print a sample, and the commands to generate more, evaluate and serve.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from budgetlm import ui
from budgetlm.config import BudgetError, parse_duration


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--budget", default="3m", help="training budget, e.g. 30s, 3m, 1h (default: 3m)")
    parser.add_argument("--out", default="runs/demo", help="folder for the dataset and the run (default: runs/demo)")
    parser.add_argument("--prompt", default="def ", help="text the sample continues (default: 'def ')")
    parser.add_argument("--max-new-tokens", type=int, default=120, metavar="N", help="length of the sample in tokens (default: 120)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps | xla (default: auto)")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="random seed of training and sampling (default: 0)")
    parser.add_argument("--max-mb", type=float, default=0.0, metavar="MB",
                        help="use at most this many MB of the corpus; smaller is faster to prepare (default: 0 = all)")


def _fresh_run_dir(root: Path) -> Path:
    """runs/demo/run, run-2, run-3, ...: a demo never overwrites an earlier run."""
    cand, i = root / "run", 1
    while cand.exists():
        i += 1
        cand = root / f"run-{i}"
    return cand


def _data(out: Path, max_mb: float):
    from budgetlm import api
    from budgetlm.data.shards import Dataset

    data = out / "data"
    if (data / "manifest.json").is_file():
        ui.info(f"[bold]1/4 data[/] reusing {data}")
        return Dataset.open(data)
    ui.info("[bold]1/4 data[/] preparing the built-in python corpus (docs and standard-library source)")
    # the vocabulary is sized to the corpus by prepare
    return api.prepare(out=str(data), builtin="python", tokenizer="bpe", max_mb=max_mb)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from budgetlm import api

    parse_duration(args.budget)
    if args.max_new_tokens < 1:
        raise BudgetError("--max-new-tokens must be at least 1")
    root = Path(args.out)
    data = _data(root, args.max_mb)
    run_dir = _fresh_run_dir(root)
    ui.info(f"[bold]2/4 train[/] {args.budget} budget -> {run_dir}")
    summary = api.train(data=str(data.path), out=str(run_dir), budget=args.budget, device=args.device, seed=args.seed)

    ui.info("[bold]3/4 evaluate[/] held-out python docs and source")
    rows = [["validation loss", f"{summary.val_loss:.4f}"],
            ["bits per byte", f"{summary.val_bpb:.4f}" if summary.val_bpb is not None else "-"],
            ["training tokens", f"{summary.tokens:,}"], ["optimizer steps", summary.steps]]
    ui.table("demo model", ["metric", "value"], rows)

    ui.info("[bold]4/4 sample[/]")
    model = api.load(run_dir)
    sample = args.prompt + model.generate(args.prompt, args.max_new_tokens, temperature=0.8, top_k=50, seed=args.seed)
    ui.console().print(sample, markup=False, highlight=False)
    ui.info("")
    ui.info(f"more text:  budgetlm generate --model {run_dir} --prompt 'class '")
    ui.info(f"evaluate:   budgetlm eval --model {run_dir} --data {data.path}")
    ui.info(f"serve:      budgetlm serve --model {run_dir}   (then POST /v1/completions)")
    return {**summary.to_json(), "data": str(data.path), "sample": sample}
