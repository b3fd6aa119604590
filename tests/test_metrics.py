"""Metric arithmetic against hand-computed cases, cross-checked with scikit-learn."""

import numpy as np
import pytest

from budgetlm.metrics import classification_metrics, confusion_matrix, metrics_table_rows


def test_binary_hand_computed():
    # true:  1 1 1 0 0 ; pred: 1 0 1 0 1  -> TP=2 FN=1 FP=1 TN=1
    m = classification_metrics([1, 1, 1, 0, 0], [1, 0, 1, 0, 1], ["neg", "pos"])
    assert m["confusion_matrix"] == [[1, 1], [1, 2]]
    assert m["accuracy"] == pytest.approx(3 / 5)
    pos = m["per_class"]["pos"]
    assert pos["precision"] == pytest.approx(2 / 3)
    assert pos["recall"] == pytest.approx(2 / 3)
    assert pos["f1"] == pytest.approx(2 / 3)
    assert pos["support"] == 3
    neg = m["per_class"]["neg"]
    assert neg["precision"] == pytest.approx(1 / 2)
    assert neg["recall"] == pytest.approx(1 / 2)
    assert m["precision_macro"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["f1_macro"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["n"] == 5


def test_three_classes_with_a_never_predicted_class():
    # class 2 is never predicted: precision 0 by convention (zero_division=0), recall 0
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 0, 1, 0, 1, 0]
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[2, 0, 0], [1, 1, 0], [1, 1, 0]]
    assert m["per_class"]["a"]["precision"] == pytest.approx(2 / 4)
    assert m["per_class"]["a"]["recall"] == pytest.approx(1.0)
    assert m["per_class"]["a"]["f1"] == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert m["per_class"]["b"]["precision"] == pytest.approx(1 / 2)
    assert m["per_class"]["b"]["recall"] == pytest.approx(1 / 2)
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert m["recall_macro"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert m["accuracy"] == pytest.approx(3 / 6)


def test_agrees_with_sklearn_on_random_labels():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, size=300)
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, 4, size=300))
    m = classification_metrics(y_true, y_pred, ["w", "x", "y", "z"])
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(y_true, y_pred))
    for avg in ("precision", "recall", "f1"):
        fn = getattr(sk, f"{avg}_score")
        assert m[f"{avg}_macro"] == pytest.approx(fn(y_true, y_pred, average="macro", zero_division=0))
    assert m["confusion_matrix"] == sk.confusion_matrix(y_true, y_pred, labels=[0, 1, 2, 3]).tolist()


def test_confusion_matrix_rejects_out_of_range_and_length_mismatch():
    with pytest.raises(ValueError):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError):
        confusion_matrix([0, 1], [0], 2)


def test_table_rows_end_with_macro_average():
    m = classification_metrics([0, 1], [0, 1], ["n", "p"])
    rows = metrics_table_rows(m)
    assert [r[0] for r in rows] == ["n", "p", "macro avg"]
    assert rows[-1][3] == "1.0000"
