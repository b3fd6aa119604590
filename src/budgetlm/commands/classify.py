"""`budgetlm classify`: label texts with a fine-tuned classifier, with probabilities.

    budgetlm classify --model RUN --text "a gripping, funny film"
    budgetlm classify --model RUN --input reviews.jsonl --json     # csv/tsv/jsonl or plain .txt lines
    budgetlm classify --model RUN1 --model RUN2 --input reviews.jsonl   # an ensemble: mean probabilities
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from budgetlm import fsio, ui
from budgetlm.commands.eval import model_arg
from budgetlm.config import BudgetError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model_arg(parser, "fine-tuned run directory (from `budgetlm finetune`)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", help="a text to classify (repeat for several)")
    src.add_argument("--input", help="file of texts: .csv/.tsv/.jsonl (text column) or .txt (one per line)")
    parser.add_argument("--text-column", default=None, help="text column of --input (default: as fine-tuned)")
    parser.add_argument("--text-pair-column", default=None, help="second text column of sentence pairs (default: as fine-tuned)")
    parser.add_argument("--output", help="also write the predictions here as JSON lines (default: none)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file (default: off)")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N", help="texts per forward pass; >= 1 (default: 64)")
    parser.add_argument("--quantize", default="none", choices=["none", "int8"],
                        help="int8: dynamic int8 linear layers, CPU (default: none)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | mps (default: cpu)")


def _read_inputs(args: argparse.Namespace, meta) -> tuple[list[str], list[str] | None]:
    from budgetlm.labelled import is_plain_text, read_labelled, read_lines

    if args.text:
        return list(args.text), None
    path = Path(args.input)
    if is_plain_text(path):
        return read_lines(path), None
    info = meta.classifier
    text_col = args.text_column or info.text_column
    pair_col = args.text_pair_column if args.text_pair_column is not None else info.text_pair_column
    data = read_labelled(path, text_col, pair_col, info.label_column, need_labels=False)
    return data.texts, data.pairs


def run(args: argparse.Namespace) -> dict[str, Any]:
    from budgetlm.classify import load_ensemble

    if args.batch_size < 1:
        raise BudgetError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.output:
        fsio.check_output_file(args.output, [args.input, *args.model], overwrite=args.overwrite)
    clf = load_ensemble(args.model, device=args.device, quantize=args.quantize)
    texts, pairs = _read_inputs(args, clf.meta)
    t0 = time.perf_counter()
    probs = clf.predict(texts, pairs, args.batch_size)
    seconds = time.perf_counter() - t0
    preds = probs.argmax(-1)
    results = [
        {"text": t, "label": clf.labels[p], "probs": {name: round(float(x), 6) for name, x in zip(clf.labels, row)}}
        for t, p, row in zip(texts, preds, probs)
    ]
    if args.output:
        fsio.atomic_write_text(args.output, "".join(json.dumps(r) + "\n" for r in results))
    if not ui.json_mode():
        shown = results[:20]
        ui.table("predictions", ["text", "label", "p"],
                 [[r["text"][:60], r["label"], f"{r['probs'][r['label']]:.3f}"] for r in shown])
        if len(results) > len(shown):
            ui.info(f"... {len(results) - len(shown)} more" + (f" in {args.output}" if args.output else ""))
    counts = {name: int((preds == i).sum()) for i, name in enumerate(clf.labels)}
    ui.info(f"{len(texts)} texts in {seconds:.2f}s ({len(texts) / max(seconds, 1e-9):.0f}/s); counts {counts}")
    return {"model": args.model[0] if len(args.model) == 1 else args.model, "labels": clf.labels, "n": len(texts),
            "seconds": round(seconds, 4), "quantize": args.quantize, "counts": counts,
            "results": results if len(results) <= 10_000 or not args.output else []}
