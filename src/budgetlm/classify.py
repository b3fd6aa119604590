"""`budgetlm classify`: label texts with a fine-tuned classifier, with probabilities.

    budgetlm classify --model RUN --text "a gripping, funny film"
    budgetlm classify --model RUN --input reviews.jsonl --json     # csv/tsv/jsonl or plain .txt lines
    budgetlm classify --model RUN1 --model RUN2 --input reviews.jsonl   # an ensemble: mean probabilities

Inference is batched with length-sorted batches (little padding) and `--quantize int8` swaps every
linear layer for its int8 dynamic-quantized form on CPU. `load_classifier` and `predict_proba` are
shared with `eval` (of a classifier), `finetune` (validation) and `serve` (/v1/classify);
`load_ensemble` with `eval`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from budgetlm import ui
from budgetlm.config import BudgetError
from budgetlm.evaluate import in_eval_mode
from budgetlm.labelled import collate, is_plain_text, length_sorted_batches, read_labelled, read_lines


@torch.no_grad()
@in_eval_mode
def predict_proba(
    model: torch.nn.Module,
    seqs: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 64,
    token_types: Sequence[Sequence[int]] | None = None,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Class probabilities (N, num_labels) for token sequences, in their original order."""
    out: np.ndarray | None = None
    for batch in length_sorted_batches([len(s) for s in seqs], batch_size):
        idx, mask, tt = collate([seqs[i] for i in batch], pad_id, [token_types[i] for i in batch] if token_types else None)
        kwargs = {"token_type_ids": tt.to(device)} if tt is not None else {}
        logits, _ = model(idx.to(device), attention_mask=mask.to(device), **kwargs)  # (B, K)
        probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        if out is None:
            out = np.zeros((len(seqs), probs.shape[1]), dtype=np.float32)
        out[batch] = probs
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


@dataclass
class LoadedClassifier:
    model: torch.nn.Module
    encoder: Any  # labelled.BudgetlmEncoder | labelled.HFEncoder
    labels: list[str]
    meta: dict[str, Any]
    device: torch.device

    def predict(self, texts: list[str], pairs: list[str] | None = None, batch_size: int = 64) -> np.ndarray:
        seqs, token_types = self.encoder(texts, pairs)
        return predict_proba(self.model, seqs, self.encoder.pad_id, batch_size, token_types, self.device)


def load_classifier(run: str | Path, device: str = "cpu", quantize: str = "none", which: str = "best") -> LoadedClassifier:
    """A fine-tuned run -> model + encoder + label names. A language model (not fine-tuned) is a
    one-line error that says what to do."""
    from budgetlm import finetune
    from budgetlm.quantize import maybe_quantize
    from budgetlm.train.checkpoint import load_meta, load_model

    meta0 = load_meta(run, which)
    if not meta0.is_classifier:
        kind = "causal" if meta0.causal else "masked"
        raise BudgetError(
            f"{run} is a {kind} language model, not a fine-tuned classifier: "
            f"run `budgetlm finetune --model {run} ...` first"
        )
    model, meta = load_model(run, device=device, which=which)
    model = maybe_quantize(model, quantize)
    encoder = finetune.make_encoder(meta)
    return LoadedClassifier(model, encoder, [str(x) for x in meta.classifier.labels], meta, torch.device(device))


@dataclass
class Ensemble:
    """Several fine-tuned classifiers with the same labels, averaged in probability: independently
    trained members make partly independent errors, so their mean is more accurate than a typical
    member (deep ensembles, Lakshminarayanan et al. 2017). Each member encodes with its own tokenizer."""

    members: list[LoadedClassifier]

    @property
    def labels(self) -> list[str]:
        return self.members[0].labels

    @property
    def meta(self):
        return self.members[0].meta

    def predict(self, texts: list[str], pairs: list[str] | None = None, batch_size: int = 64) -> np.ndarray:
        return np.mean([m.predict(texts, pairs, batch_size) for m in self.members], axis=0)


def load_ensemble(runs: Sequence[str | Path], device: str = "cpu", quantize: str = "none",
                  which: str = "best") -> LoadedClassifier | Ensemble:
    """One run -> that classifier; several -> their `Ensemble` (they must share the label list)."""
    members = [load_classifier(r, device, quantize, which) for r in runs]
    for run, m in zip(runs[1:], members[1:]):
        if m.labels != members[0].labels:
            raise BudgetError(f"{run} predicts labels {m.labels}, but {runs[0]} predicts {members[0].labels}: "
                              f"an ensemble needs classifiers fine-tuned on the same labels")
    return members[0] if len(members) == 1 else Ensemble(members)


def model_arg(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--model", required=True, action="append", help=help + "; repeat it to average several "
                        "fine-tuned classifiers (an ensemble)")


# --------------------------------------------------------------------------------------------------
# command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model_arg(parser, "fine-tuned run directory (from `budgetlm finetune`)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", help="a text to classify (repeat for several)")
    src.add_argument("--input", help="file of texts: .csv/.tsv/.jsonl (text column) or .txt (one per line)")
    parser.add_argument("--text-column", default=None, help="text column of --input (default: as fine-tuned)")
    parser.add_argument("--text-pair-column", default=None, help="second text column (sentence pairs)")
    parser.add_argument("--output", help="also write the predictions here as JSON lines")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per forward pass")
    parser.add_argument("--quantize", default="none", choices=["none", "int8"], help="int8: dynamic int8 linear layers (CPU)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | mps")


def _read_inputs(args: argparse.Namespace, meta: dict[str, Any]) -> tuple[list[str], list[str] | None]:
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
    import json
    import os
    import time

    if args.batch_size < 1:
        raise BudgetError("--batch-size must be at least 1")
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
        tmp = f"{args.output}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            for r in results:
                fh.write(json.dumps(r) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, args.output)
    if not ui.json_mode():
        shown = results[:20]
        ui.table(
            "predictions",
            ["text", "label", "p"],
            [[r["text"][:60], r["label"], f"{r['probs'][r['label']]:.3f}"] for r in shown],
        )
        if len(results) > len(shown):
            ui.info(f"... {len(results) - len(shown)} more" + (f" in {args.output}" if args.output else ""))
    counts = {name: int((preds == i).sum()) for i, name in enumerate(clf.labels)}
    ui.info(f"{len(texts)} texts in {seconds:.2f}s ({len(texts) / max(seconds, 1e-9):.0f}/s); counts {counts}")
    return {
        "model": args.model[0] if len(args.model) == 1 else args.model,
        "labels": clf.labels,
        "n": len(texts),
        "seconds": round(seconds, 4),
        "quantize": args.quantize,
        "counts": counts,
        "results": results if len(results) <= 10_000 or not args.output else [],
    }
