"""Classification metrics: accuracy, precision / recall / F1 (per class and macro), confusion matrix;
and the SQuAD answer metrics: exact match and token F1.

Plain numpy so that `eval`, `finetune` and the benchmarks share one definition without depending on
scikit-learn at run time (the tests cross-check against `sklearn.metrics`). Conventions follow
scikit-learn's: rows of the confusion matrix are true labels, columns are predictions; a precision or
recall whose denominator is zero counts as 0 (`zero_division=0`); macro averages weigh every class
the model knows equally, including classes absent from this particular file.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int64 counts; entry [t, p] = examples of class t predicted as p."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} labels but y_pred has {p.size}")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    # bincount of the flattened (t, p) pair index is the whole confusion matrix in one pass
    flat = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]
) -> dict:
    """The metrics dict that `finetune --json`, `eval --json` and report.md show.

    Keys: accuracy, precision_macro, recall_macro, f1_macro, per_class {label: {precision, recall,
    f1, support}}, confusion_matrix (list of rows, true x predicted), labels, n.
    """
    k = len(labels)
    cm = confusion_matrix(y_true, y_pred, k)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)  # true examples per class
    predicted = cm.sum(axis=0).astype(np.float64)  # predictions per class
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    n = int(cm.sum())
    return {
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "precision_macro": float(precision.mean()) if k else 0.0,
        "recall_macro": float(recall.mean()) if k else 0.0,
        "f1_macro": float(f1.mean()) if k else 0.0,
        "per_class": {
            str(name): {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(labels)
        },
        "confusion_matrix": cm.tolist(),
        "labels": [str(x) for x in labels],
        "n": n,
    }


def metrics_table_rows(metrics: dict) -> list[list[object]]:
    """Rows (label, precision, recall, f1, support) for `ui.table`, macro average last."""
    rows: list[list[object]] = [
        [name, f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}", m["support"]]
        for name, m in metrics["per_class"].items()
    ]
    rows.append(
        [
            "macro avg",
            f"{metrics['precision_macro']:.4f}",
            f"{metrics['recall_macro']:.4f}",
            f"{metrics['f1_macro']:.4f}",
            metrics["n"],
        ]
    )
    return rows


# --------------------------------------------------------------------------------------------------
# answers: the official SQuAD v1.1 evaluation (Rajpurkar et al. 2016, evaluate-v1.1.py)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation, the articles a/an/the, and extra whitespace (SQuAD v1.1)."""
    import re
    import string

    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold answer."""
    return float(any(normalize_answer(prediction) == normalize_answer(g) for g in golds))


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    """Best bag-of-tokens F1 of the normalised prediction against the gold answers."""
    from collections import Counter

    def f1(pred: str, gold: str) -> float:
        p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
        if not gold:  # SQuAD v2.0's gold "" (no answer): right only when the prediction is empty too
            return float(not p)
        same = sum((Counter(p) & Counter(g)).values())
        if same == 0:
            return 0.0
        precision, recall = same / len(p), same / len(g)
        return 2 * precision * recall / (precision + recall)

    return max((f1(prediction, g) for g in golds), default=0.0)


def answer_metrics(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Exact match and F1 averaged over questions, in percent as the SQuAD script reports them."""
    n = max(1, len(predictions))
    return {"exact_match": 100.0 * sum(exact_match(p, g) for p, g in zip(predictions, golds)) / n,
            "f1": 100.0 * sum(token_f1(p, g) for p, g in zip(predictions, golds)) / n,
            "questions": len(predictions)}
