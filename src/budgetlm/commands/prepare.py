"""`budgetlm prepare INPUT... --out DIR`: clean, tokenize and pack raw text into token shards
(the library: `budgetlm.data.prepare`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from budgetlm import ui
from budgetlm.config import add_dataclass_args, from_args
from budgetlm.data import shards
from budgetlm.data.prepare import PrepareConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="files or folders (recursive): .txt .md .jsonl .json .csv .tsv .parquet, "
                             "optionally .gz .xz .bz2 .zst")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="dataset folder to create (default: out/NAME, NAME from the first input)")
    parser.add_argument("--val", nargs="+", metavar="INPUT", default=None,
                        help="explicit validation inputs (then --val-fraction is ignored) (default: none: "
                             "--val-fraction of the inputs)")
    add_dataclass_args(parser, PrepareConfig)


def default_out(inputs: list[str], cfg: PrepareConfig) -> str:
    """out/gutenberg for a folder, out/imdb-train for imdb/train.jsonl, out/python-docs for a
    built-in corpus, out/NAME for a Hugging Face dataset."""
    if inputs:
        p = Path(inputs[0]).expanduser().absolute()
        name = p.name if p.is_dir() else f"{p.parent.name}-{p.name.split('.')[0]}".strip("-")
    elif cfg.builtin:
        name = cfg.builtin
    else:
        name = Path(cfg.hf_dataset.split(":")[0]).name or "dataset"
    return str(Path("out") / (name or "dataset"))


def run(args: argparse.Namespace) -> dict:
    from budgetlm import api

    cfg = from_args(PrepareConfig, args)
    out = args.out or default_out(args.inputs, cfg)
    if not args.out:
        ui.info(f"--out not given: writing to {out}")
    summary = api.prepare(args.inputs, out, cfg, args.val).summary
    rows = [[s, f"{summary['documents'][s]:,}", f"{summary['bytes'][s]:,}", f"{summary['tokens'][s]:,}",
             summary["shards"][s]] for s in shards.SPLITS]
    ui.table(f"dataset {summary['out']}", ["split", "documents", "bytes", "tokens", "shards"], rows)
    ui.info(f"tokenizer {summary['tokenizer']} ({summary['vocab_size']:,} tokens, {summary['dtype']}), "
            f"{summary['bytes_per_token']:.2f} bytes/token, {summary['seconds']:.1f}s "
            f"({summary['mb_per_s']} MB/s)")
    return summary
