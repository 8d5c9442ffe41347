"""Metrics against hand-computed values."""
import numpy as np
import pytest

from edgekd.distill.metrics import classification_metrics, explanation_agreement, feature_agreement, sign_agreement
from edgekd.errors import EdgekdValueError


def test_classification_metrics_by_hand():
    y = [0, 0, 1, 1, 2, 2]
    p = [0, 1, 1, 1, 2, 0]
    m = classification_metrics(y, p, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    # class a: tp=1 fp=1 fn=1 -> P=R=F=0.5; b: tp=2 fp=1 fn=0 -> P=2/3 R=1 F=0.8; c: tp=1 fp=0 fn=1 -> F=2/3
    assert m["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert m["per_class"]["b"]["f1"] == pytest.approx(0.8)
    assert m["per_class"]["c"]["precision"] == 1.0 and m["per_class"]["c"]["recall"] == 0.5
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # a class never predicted nor present scores 0 without warnings
    m2 = classification_metrics([0, 0], [0, 0], ["a", "b"])
    assert m2["macro_f1"] == pytest.approx(0.5)
    with pytest.raises(EdgekdValueError, match="labels but"):
        classification_metrics([0, 1], [0])


def test_feature_and_sign_agreement_by_hand():
    a = np.array([0.9, -0.5, 0.1, 0.0, -0.8])  # top-3 by |.|: 0, 4, 1
    b = np.array([0.7, 0.6, 0.0, -0.9, -0.1])  # top-3 by |.|: 3, 0, 1
    # common {0, 1} -> feature agreement 2/3; signs: 0 (+,+) agree, 1 (-,+) differ -> 1/3
    assert feature_agreement(a, b, 3) == pytest.approx(2 / 3)
    assert sign_agreement(a, b, 3) == pytest.approx(1 / 3)
    assert feature_agreement(a, a, 2) == 1.0 and sign_agreement(a, -a, 2) == 0.0
    # k larger than the text: k' = len
    assert feature_agreement([1.0, 2.0], [2.0, 1.0], 5) == 1.0
    ag = explanation_agreement([a, np.array([1.0, -2.0])], [b, np.array([-3.0, -1.0])], k=3)
    assert ag["feature_agreement"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert ag["sign_agreement"] == pytest.approx((1 / 3 + 0.5) / 2)
    with pytest.raises(EdgekdValueError, match="differ in length"):
        feature_agreement([1.0], [1.0, 2.0], 1)
    with pytest.raises(EdgekdValueError, match="k must be"):
        sign_agreement([1.0], [1.0], 0)
