"""`budgetlm eval --model RUN (--data DIR | --text FILE...)`: loss, perplexity and bits per byte of a
language model, masked-LM accuracy, a fine-tuned classifier's accuracy, precision, recall and F1
on a labelled file (several --model runs: an ensemble), or a question-answering run's exact match and
F1 on a SQuAD-format file."""

from __future__ import annotations

import argparse
from typing import Any

from budgetlm import ui
from budgetlm.config import BudgetError


def model_arg(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--model", required=True, action="append",
                        help=help + "; repeat it to average several fine-tuned classifiers (an ensemble)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model_arg(parser, "run directory (or checkpoint directory, or a local Hugging Face Llama folder) to evaluate")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--data", help="prepared dataset folder: evaluate its --split")
    src.add_argument("--text", nargs="+", metavar="FILE",
                     help="UTF-8 text files (language models) or one labelled .csv/.tsv/.jsonl file (classifiers)")
    parser.add_argument("--split", default="val", choices=["val", "train"], help="split of --data to evaluate (default: val)")
    parser.add_argument("--max-tokens", type=int, default=0, metavar="N", help="evaluate at most this many tokens (default: 0 = all)")
    parser.add_argument("--batch-size", type=int, default=8, metavar="N", help="windows (or texts) per forward pass (default: 8)")
    parser.add_argument("--which", default="latest", choices=["latest", "best"], help="checkpoint to load (default: latest)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps | xla (default: auto)")
    parser.add_argument("--precision", default="fp32", help="auto | fp32 | bf16 | fp16 (default: fp32, exact numbers)")
    parser.add_argument("--beams", type=int, default=1, metavar="N",
                        help="sequence-to-sequence runs: beam width when decoding --text SRC TGT (default: 1 = greedy)")
    parser.add_argument("--quantize", default="none", choices=["none", "int8"],
                        help="fine-tuned classifiers: int8 dynamic quantization of linear layers, CPU (default: none)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from budgetlm.evaluate import evaluate_run
    from budgetlm.training.checkpoint import load_meta, load_model

    meta = load_meta(args.model[0], args.which)
    if meta.is_classifier:
        return _classifier(args)
    if meta.qa is not None:
        return _qa(args)
    if meta.seq2seq is not None and args.text:
        return _seq2seq(args)
    if len(args.model) > 1:
        raise BudgetError("several --model runs make an ensemble of fine-tuned classifiers; "
                          f"{args.model[0]} is a language model: evaluate one at a time")
    if not args.data and not args.text:
        raise BudgetError("give --data DIR (its val split) or --text FILE... to evaluate")
    from budgetlm.data.tokenizer import load_tokenizer
    from budgetlm.runtime import detect_device_type

    device = detect_device_type(args.device)
    model, meta = load_model(args.model[0], device=device, which=args.which)
    tok = load_tokenizer(meta.tokenizer_path) if meta.tokenizer_path else None
    result = evaluate_run(model, meta, tok, device, args.data, args.text, args.split, args.batch_size,
                          args.max_tokens, args.precision)
    result["model"] = args.model[0]
    rows = [[k, f"{v:.4f}" if isinstance(v, float) else v] for k, v in result.items()
            if k in ("loss", "perplexity", "bits_per_byte", "accuracy", "tokens", "bytes")]
    ui.table(f"eval {args.model[0]} on {result['data']}", ["metric", "value"], rows)
    return result


def _classifier(args: argparse.Namespace) -> dict[str, Any]:
    """A fine-tuned classifier (or an ensemble) on one labelled file."""
    from budgetlm.classify import evaluate_classifier
    from budgetlm.metrics import metrics_table_rows

    paths = list(args.text or []) or ([args.data] if args.data else [])
    if len(paths) != 1:
        raise BudgetError("evaluating a classifier needs one labelled file: --text FILE (.csv/.tsv/.jsonl)")
    device = "cpu" if args.device in (None, "auto") else args.device
    res = evaluate_classifier(args.model, paths[0], batch_size=args.batch_size, device=device,
                              quantize=args.quantize, which=args.which)
    ui.table(f"{res['source']}: {res['examples']:,} examples", ["class", "precision", "recall", "f1", "support"],
             metrics_table_rows(res))
    ui.info(f"accuracy {res['accuracy']:.4f}  f1_macro {res['f1_macro']:.4f}  "
            f"({res['examples'] / max(res['seconds'], 1e-9):.0f} examples/s{', int8' if args.quantize == 'int8' else ''})")
    return res


def _qa(args: argparse.Namespace) -> dict[str, Any]:
    """A question-answering run on one SQuAD-format file: exact match and F1."""
    from budgetlm.qa import evaluate_qa

    if len(args.model) > 1 or args.data or len(args.text or []) != 1:
        raise BudgetError("evaluating a question-answering run needs one --model and one SQuAD-format file: --text FILE.json")
    device = "cpu" if args.device in (None, "auto") else args.device
    res = evaluate_qa(args.model[0], args.text[0], batch_size=args.batch_size, device=device, which=args.which)
    ui.info(f"{res['source']}: {res['questions']:,} questions, exact match {res['exact_match']:.2f}, "
            f"F1 {res['f1']:.2f} ({res['seconds']:.1f}s)")
    for part, what in (("has_answer", "answerable"), ("no_answer", "unanswerable")):
        if f"{part}_questions" in res:
            ui.info(f"  {res[f'{part}_questions']:,} {what}: exact match {res[f'{part}_exact_match']:.2f}, "
                    f"F1 {res[f'{part}_f1']:.2f}")
    return {"model": args.model[0], **res}


def _seq2seq(args: argparse.Namespace) -> dict[str, Any]:
    """A sequence-to-sequence run on sources and references: BLEU, chrF, exact match, F1."""
    from budgetlm.seq2seq import evaluate_seq2seq

    if len(args.model) > 1 or len(args.text) > 2:
        raise BudgetError("evaluating a sequence-to-sequence run needs one --model and --text SOURCE TARGET "
                          "(two aligned files) or --text FILE (source and target columns)")
    device = "cpu" if args.device in (None, "auto") else args.device
    from budgetlm.training.checkpoint import load_meta

    rc = load_meta(args.model[0], args.which).run_config
    info = {"source_column": rc.get("source_column", "source"), "target_column": rc.get("target_column", "target")}
    res = evaluate_seq2seq(args.model[0], args.text[0], args.text[1] if len(args.text) == 2 else "", args.beams,
                           device, args.which, **info)
    ui.info(f"{res['pairs']:,} pairs, beams {res['beams']}: BLEU {res['bleu']:.2f}, chrF {res['chrf']:.2f}, "
            f"exact match {res['exact_match']:.2f}, F1 {res['f1']:.2f} ({res['seconds']:.1f}s)")
    return {"model": args.model[0], **res}
