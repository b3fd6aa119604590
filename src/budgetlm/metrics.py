"""Classification metrics: accuracy, precision / recall / F1 (per class and macro), confusion matrix.

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
