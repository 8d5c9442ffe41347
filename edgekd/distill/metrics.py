"""Classification metrics and explanation agreement.

Agreement follows Krishna et al. 2022, "The Disagreement Problem in Explainable Machine Learning":
for two explanations ``a`` and ``b`` of the same text and ``k`` top features by absolute value,

* feature agreement: ``|top_k(a) ∩ top_k(b)| / k``;
* sign agreement: ``|{f in top_k(a) ∩ top_k(b) : sign(a_f) == sign(b_f)}| / k``.

Texts shorter than ``k`` words use ``k' = len(text)``. Scores are averaged over texts.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from edgekd.errors import EdgekdValueError


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], label_names: Sequence[str] | None = None
) -> dict:
    """Accuracy, macro-F1 and per-class precision / recall / F1 / support (scikit-learn)."""
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise EdgekdValueError(f"classification_metrics: {y_true.shape[0]} labels but {y_pred.shape[0]} predictions")
    if y_true.size == 0:
        raise EdgekdValueError("classification_metrics: no examples")
    n_classes = len(label_names) if label_names is not None else int(max(y_true.max(), y_pred.max())) + 1
    names = list(label_names) if label_names is not None else [str(i) for i in range(n_classes)]
    labels = list(range(n_classes))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {
            names[c]: {"precision": float(p[c]), "recall": float(r[c]), "f1": float(f[c]), "support": int(s[c])}
            for c in labels
        },
        "n": int(y_true.size),
    }


def _top_k(x: np.ndarray, k: int) -> np.ndarray:
    # stable: ties broken by position, so results are reproducible
    order = np.argsort(-np.abs(x), kind="stable")
    return order[:k]


def feature_agreement(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Feature agreement of two explanations of one text at top-``k``."""
    a, b, k = _check_pair(a, b, k)
    return len(set(_top_k(a, k).tolist()) & set(_top_k(b, k).tolist())) / k


def sign_agreement(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Sign agreement of two explanations of one text at top-``k``."""
    a, b, k = _check_pair(a, b, k)
    common = set(_top_k(a, k).tolist()) & set(_top_k(b, k).tolist())
    return sum(1 for f in common if np.sign(a[f]) == np.sign(b[f])) / k


def _check_pair(a, b, k: int) -> tuple[np.ndarray, np.ndarray, int]:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise EdgekdValueError(f"agreement: explanations differ in length ({a.size} vs {b.size})")
    if a.size == 0:
        raise EdgekdValueError("agreement: empty explanation")
    if k < 1:
        raise EdgekdValueError(f"agreement: k must be >= 1, got {k}")
    return a, b, min(k, a.size)


def explanation_agreement(
    teacher: Sequence[np.ndarray], student: Sequence[np.ndarray], k: int = 5
) -> dict[str, float]:
    """Mean feature and sign agreement at top-``k`` over paired per-text explanations."""
    if len(teacher) != len(student):
        raise EdgekdValueError(f"explanation_agreement: {len(teacher)} teacher vs {len(student)} student explanations")
    if not len(teacher):
        raise EdgekdValueError("explanation_agreement: no explanations")
    fa = [feature_agreement(t, s, k) for t, s in zip(teacher, student)]
    sa = [sign_agreement(t, s, k) for t, s in zip(teacher, student)]
    return {"feature_agreement": float(np.mean(fa)), "sign_agreement": float(np.mean(sa)), "k": k, "n": len(fa)}


__all__ = [
    "classification_metrics",
    "feature_agreement",
    "sign_agreement",
    "explanation_agreement",
]
