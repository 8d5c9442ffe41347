"""Classification metrics and explanation agreement: numpy only (no torch, no scikit-learn), so the
runtime, the benchmarks and every training loop score predictions with the same code.

Classification (``y_true``/``y_pred`` are integer class ids in ``0..num_classes-1``):

* accuracy: ``mean(y_true == y_pred)``;
* per class ``c``: precision ``tp / (tp + fp)``, recall ``tp / (tp + fn)``,
  F1 ``2 tp / (2 tp + fp + fn)``; a ratio whose denominator is 0 counts as 0
  (scikit-learn's ``zero_division=0``);
* macro-F1: the unweighted mean of the per-class F1 over all ``num_classes`` classes, including
  classes absent from both ``y_true`` and ``y_pred`` (they score 0), as scikit-learn's
  ``f1_score(..., labels=range(num_classes), average="macro", zero_division=0)``.

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


def _labels(y_true, y_pred, num_classes: int | None, what: str) -> tuple[np.ndarray, np.ndarray, int]:
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    if t.ndim != 1 or p.ndim != 1:
        raise EdgekdValueError(f"{what}: labels and predictions must be 1-D, got shapes {t.shape} and {p.shape}")
    if t.shape != p.shape:
        raise EdgekdValueError(f"{what}: {t.shape[0]} labels but {p.shape[0]} predictions")
    if t.size == 0:
        raise EdgekdValueError(f"{what}: no examples")
    for name, a in (("labels", t), ("predictions", p)):
        if a.dtype.kind == "f" and not np.all(np.isfinite(a) & (a == np.round(a))):
            raise EdgekdValueError(f"{what}: {name} must be integer class ids")
        if a.dtype.kind not in "iufb":
            raise EdgekdValueError(f"{what}: {name} must be integer class ids, got dtype {a.dtype}")
    t = t.astype(np.int64)
    p = p.astype(np.int64)
    lo = int(min(t.min(), p.min()))
    if lo < 0:
        raise EdgekdValueError(f"{what}: negative class id {lo}")
    hi = int(max(t.max(), p.max()))
    if num_classes is None:
        num_classes = hi + 1
    elif hi >= num_classes:
        raise EdgekdValueError(f"{what}: class id {hi} but only {num_classes} classes")
    return t, p, int(num_classes)


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Fraction of predictions equal to the label."""
    t, p, _ = _labels(y_true, y_pred, None, "accuracy")
    return float(np.mean(t == p))


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int | None = None) -> np.ndarray:
    """``[num_classes, num_classes]`` int64 counts; row = true class, column = predicted class."""
    t, p, n = _labels(y_true, y_pred, num_classes, "confusion_matrix")
    return np.bincount(t * n + p, minlength=n * n).reshape(n, n).astype(np.int64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def precision_recall_f1(
    y_true: Sequence[int], y_pred: Sequence[int], num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall, F1 (float64) and support (int64), each of length ``num_classes``."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)  # tp + fp
    support = cm.sum(axis=1)  # tp + fn
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support.astype(np.float64))
    f1 = _ratio(2 * tp, predicted + support)
    return precision, recall, f1, support


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int | None = None) -> float:
    """Macro-averaged F1 over ``num_classes`` classes (default: the largest id seen + 1; classes absent
    from both count as 0)."""
    return float(np.mean(precision_recall_f1(y_true, y_pred, num_classes)[2]))


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], label_names: Sequence[str] | None = None
) -> dict:
    """Accuracy, macro-F1 and per-class precision / recall / F1 / support, keyed by label name."""
    n_classes = len(label_names) if label_names is not None else None
    t, p, n_classes = _labels(y_true, y_pred, n_classes, "classification_metrics")
    names = list(label_names) if label_names is not None else [str(i) for i in range(n_classes)]
    pr, rc, f1, sup = precision_recall_f1(t, p, n_classes)
    return {
        "accuracy": float(np.mean(t == p)),
        "macro_f1": float(np.mean(f1)),
        "per_class": {
            names[c]: {"precision": float(pr[c]), "recall": float(rc[c]), "f1": float(f1[c]), "support": int(sup[c])}
            for c in range(n_classes)
        },
        "n": int(t.size),
    }


# ------------------------------------------------------------------------------ explanation agreement
def _top_k(x: np.ndarray, k: int) -> np.ndarray:
    # stable: ties broken by position, so results are reproducible
    order = np.argsort(-np.abs(x), kind="stable")
    return order[:k]


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


def feature_agreement(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Feature agreement of two explanations of one text at top-``k``."""
    a, b, k = _check_pair(a, b, k)
    return len(set(_top_k(a, k).tolist()) & set(_top_k(b, k).tolist())) / k


def sign_agreement(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Sign agreement of two explanations of one text at top-``k``."""
    a, b, k = _check_pair(a, b, k)
    common = set(_top_k(a, k).tolist()) & set(_top_k(b, k).tolist())
    return sum(1 for f in common if np.sign(a[f]) == np.sign(b[f])) / k


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
    "accuracy",
    "confusion_matrix",
    "precision_recall_f1",
    "macro_f1",
    "classification_metrics",
    "feature_agreement",
    "sign_agreement",
    "explanation_agreement",
]
