"""Fine-tuned classifiers at work: load one (or an ensemble), predict class probabilities, and
measure accuracy, precision, recall and F1 on a labelled file.

Inference is batched with length-sorted batches (little padding); `quantize="int8"` swaps every
linear layer for its int8 dynamic-quantized form on CPU. `predict_proba` is shared with `finetune`
(validation) and `serve` (/v1/classify); `evaluate_classifier` is `budgetlm eval` of a classifier.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from budgetlm.config import BudgetError
from budgetlm.evaluate import in_eval_mode
from budgetlm.labelled import BudgetlmEncoder, HFEncoder, collate, encode_labels, length_sorted_batches, read_labelled
from budgetlm.metrics import classification_metrics


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
    from budgetlm.quantize import maybe_quantize
    from budgetlm.training.checkpoint import load_meta, load_model

    meta0 = load_meta(run, which)
    if not meta0.is_classifier:
        kind = "causal" if meta0.causal else "masked"
        raise BudgetError(
            f"{run} is a {kind} language model, not a fine-tuned classifier: "
            f"run `budgetlm finetune --model {run} ...` first"
        )
    model, meta = load_model(run, device=device, which=which)
    model = maybe_quantize(model, quantize)
    encoder = make_encoder(meta)
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


def make_encoder(meta):
    """The tokenizer + input layout a classifier (a `CheckpointMeta`) was fine-tuned with."""
    info = meta.classifier
    if meta.kind == "hf-classifier":
        from budgetlm.hf import require_transformers

        tok = require_transformers().AutoTokenizer.from_pretrained(str(meta.run_dir / "hf_tokenizer"))
        return HFEncoder(tok, info.max_len, info.truncate)
    from budgetlm.data.tokenizer import load_tokenizer

    if not meta.tokenizer_path:
        raise BudgetError(f"{meta.run_dir} has no tokenizer.json next to its checkpoint")
    return BudgetlmEncoder(load_tokenizer(meta.tokenizer_path), meta.causal, info.max_len, info.truncate)


def evaluate_classifier(runs: Sequence[str | Path], path: str | Path, text_column: str | None = None,
                        pair_column: str | None = None, label_column: str | None = None, batch_size: int = 64,
                        device: str = "cpu", quantize: str = "none", which: str = "best") -> dict[str, Any]:
    """Accuracy, precision, recall, F1 and the confusion matrix of a fine-tuned run (several runs: an
    ensemble) on a labelled file; columns default to those the classifier was fine-tuned with."""
    if batch_size < 1:
        raise BudgetError(f"--batch-size must be at least 1, got {batch_size}")
    clf = load_ensemble(list(runs), device=device, quantize=quantize, which=which)
    info = clf.meta.classifier
    data = read_labelled(path, text_column or info.text_column,
                         info.text_pair_column if pair_column is None else pair_column,
                         label_column or info.label_column)
    y = encode_labels(data.labels, clf.labels, data.source)
    t0 = time.perf_counter()
    probs = clf.predict(data.texts, data.pairs, batch_size)
    seconds = time.perf_counter() - t0
    met = classification_metrics(y, probs.argmax(-1), clf.labels)
    return {"objective": "classification", "model": str(runs[0]) if len(runs) == 1 else [str(r) for r in runs],
            "file": str(path), "source": data.source, "examples": len(y), "quantize": quantize,
            "seconds": round(seconds, 4), **met}
