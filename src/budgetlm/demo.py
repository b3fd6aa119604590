"""`budgetlm demo`: the whole path on the built-in corpus, no download needed.

1. prepare the built-in `python-docs` corpus (the Python reference and standard-library docstrings of
   this interpreter) into token shards, reusing them when already there;
2. train a small causal model under a short wall-clock budget (default 3 minutes; `--budget`), the
   model sized automatically for the budget and this machine (the plan is printed first);
3. evaluate it on the held-out split (loss, bits per byte);
4. print a sample, and the commands to generate more, evaluate and serve.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from budgetlm import ui
from budgetlm.config import BudgetError, parse_duration

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--budget", default="3m", help="training budget, e.g. 30s, 3m, 1h (default: 3m)")
    parser.add_argument("--out", default="runs/demo", help="folder for the dataset and the run (default: runs/demo)")
    parser.add_argument("--prompt", default="def ", help="text the sample continues")
    parser.add_argument("--max-new-tokens", type=int, default=120, help="length of the sample in tokens")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps | xla")
    parser.add_argument("--seed", type=int, default=0, help="random seed (training and sampling)")
    parser.add_argument("--max-mb", type=float, default=0.0,
                        help="use at most this many MB of the corpus (0 = all; smaller is faster to prepare)")


def _fresh_run_dir(root: Path) -> Path:
    """runs/demo/run, run-2, run-3, ...: a demo never overwrites an earlier run."""
    cand, i = root / "run", 1
    while cand.exists():
        i += 1
        cand = root / f"run-{i}"
    return cand


def _prepare(out: Path, max_mb: float) -> Path:
    from budgetlm.data.prepare import PrepareConfig, prepare_dataset

    data = out / "data"
    if (data / "manifest.json").is_file():
        ui.info(f"[bold]1/4 data[/] reusing {data}")
        return data
    ui.info("[bold]1/4 data[/] preparing the built-in python-docs corpus")
    # the vocabulary is sized to the corpus by prepare (4,096 for the whole corpus, 1,024 for --max-mb < 1)
    prepare_dataset([], str(data), PrepareConfig(builtin="python-docs", tokenizer="bpe", max_mb=max_mb))
    return data


def run(args: argparse.Namespace) -> dict[str, Any]:
    from budgetlm.train import cli as train_cli  # first: it sets the OpenMP policy before torch loads

    import torch

    from budgetlm.data.tokenizer import SPECIAL_TOKENS, load_tokenizer
    from budgetlm.generate import TextStream, generate_tokens
    from budgetlm.train.checkpoint import load_model

    parse_duration(args.budget)
    if args.max_new_tokens < 1:
        raise BudgetError("--max-new-tokens must be at least 1")
    root = Path(args.out)
    data = _prepare(root, args.max_mb)

    run_dir = _fresh_run_dir(root)
    ui.info(f"[bold]2/4 train[/] {args.budget} budget -> {run_dir}")
    targs = argparse.Namespace(**dataclasses.asdict(train_cli.TrainConfig()))
    targs.data, targs.out, targs.budget = str(data), str(run_dir), args.budget
    targs.device, targs.seed = args.device, args.seed
    summary = train_cli.run(targs)

    ui.info("[bold]3/4 evaluate[/] held-out python-docs text")
    rows = [["validation loss", f"{summary['val_loss']:.4f}"],
            ["bits per byte", f"{summary['val_bpb']:.4f}" if "val_bpb" in summary else "-"],
            ["training tokens", f"{summary['tokens']:,}"], ["optimizer steps", summary["steps"]]]
    ui.table("demo model", ["metric", "value"], rows)

    ui.info("[bold]4/4 sample[/]")
    model, meta = load_model(run_dir)
    tok = load_tokenizer(meta["tokenizer_path"])
    eot = tok.token_to_id(SPECIAL_TOKENS["eot"])
    prompt_ids = tok.encode(args.prompt, add_special_tokens=False).ids or [eot]
    gen = torch.Generator().manual_seed(args.seed)
    stream = TextStream(tok)
    for t in generate_tokens(model, prompt_ids, args.max_new_tokens, temperature=0.8, top_k=50,
                             generator=gen, stop_ids=[eot]):
        stream.push(t)
    sample = args.prompt + stream.text()
    ui.console().print(sample, markup=False, highlight=False)
    ui.info("")
    ui.info(f"more text:  budgetlm generate --model {run_dir} --prompt 'class '")
    ui.info(f"evaluate:   budgetlm eval --model {run_dir} --data {data}")
    ui.info(f"serve:      budgetlm serve --model {run_dir}   (then POST /v1/completions)")
    return {**summary, "data": str(data), "sample": sample}
