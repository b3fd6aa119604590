"""`budgetlm answer`: extract answers from contexts with a question-answering run.

    budgetlm answer --model RUN --question "Who wrote Hamlet?" --context "Hamlet is a play by ..."
    budgetlm answer --model RUN --input questions.json --output answers.jsonl --json   # SQuAD-format file
    budgetlm answer --model RUN --input dev.json --output predictions.json   # {id: answer}: evaluate-v1.1.py's input
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from budgetlm import fsio, ui
from budgetlm.config import BudgetError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="question-answering run (from `budgetlm finetune --task qa`)")
    parser.add_argument("--question", help="the question (with --context)")
    parser.add_argument("--context", help="the text holding the answer (with --question)")
    parser.add_argument("--input", help="SQuAD-format JSON file of contexts and questions (answers optional)")
    parser.add_argument("--output", help="also write the answers here: .json = SQuAD predictions {id: answer}, "
                                         "otherwise JSON lines with scores and offsets (default: none)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file (default: off)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="windows per forward pass; >= 1 (default: 32)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | mps (default: cpu)")


def _examples(args: argparse.Namespace):
    from budgetlm.qa import Example, read_squad

    if args.input:
        if args.question or args.context:
            raise BudgetError("give --input FILE, or --question and --context, not both")
        return read_squad(args.input, need_answers=False)
    if not args.question or not args.context:
        raise BudgetError("give --question TEXT and --context TEXT (or --input FILE.json)")
    return [Example("0", args.question, args.context, [])]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from budgetlm.qa import load_qa, predict

    if args.batch_size < 1:
        raise BudgetError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.output:
        fsio.check_output_file(args.output, [args.model, args.input], overwrite=args.overwrite)
    examples = _examples(args)
    loaded = load_qa(args.model, device=args.device)
    for e in examples:
        if not e.question.strip() or not e.context.strip():
            raise BudgetError("a question and a context must both be non-empty")
    preds = [{"id": e.id, "question": e.question, **p} for e, p in zip(examples, predict(loaded, examples, args.batch_size))]
    if args.output:
        out = Path(args.output)
        fsio.atomic_write_text(out, json.dumps({p["id"]: p["answer"] for p in preds}) + "\n" if out.suffix == ".json"
                               else "".join(json.dumps(p) + "\n" for p in preds))
    for p in preds[:20]:
        ui.info(f"{p['question']!r} -> {'no answer' if p['no_answer'] else repr(p['answer'])} (score {p['score']})")
    return {"model": args.model, "answers": preds}
