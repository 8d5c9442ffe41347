"""edgekd.metrics: against hand-computed values and against scikit-learn on random labels."""
import subprocess
import sys

import numpy as np
import pytest

from edgekd.errors import EdgekdValueError
from edgekd.metrics import (
    accuracy,
    classification_metrics,
    confusion_matrix,
    explanation_agreement,
    feature_agreement,
    macro_f1,
    precision_recall_f1,
    sign_agreement,
)


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


@pytest.mark.parametrize("seed", range(12))
def test_against_sklearn_on_random_labels(seed):
    from sklearn import metrics as skm  # a dev dependency: the reference of these tests
    rng = np.random.default_rng(seed)
    n_classes = int(rng.integers(2, 8))
    n = int(rng.integers(1, 200))
    # skewed class frequencies, so some classes are often absent from labels or predictions
    probs = rng.dirichlet(np.full(n_classes, 0.5))
    y = rng.choice(n_classes, size=n, p=probs)
    p = np.where(rng.random(n) < 0.6, y, rng.choice(n_classes, size=n, p=probs))
    labels = list(range(n_classes))
    assert accuracy(y, p) == pytest.approx(skm.accuracy_score(y, p), abs=1e-12)
    np.testing.assert_array_equal(confusion_matrix(y, p, n_classes), skm.confusion_matrix(y, p, labels=labels))
    pr, rc, f1, sup = precision_recall_f1(y, p, n_classes)
    spr, src, sf1, ssup = skm.precision_recall_fscore_support(y, p, labels=labels, zero_division=0)
    np.testing.assert_allclose(pr, spr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(rc, src, rtol=0, atol=1e-12)
    np.testing.assert_allclose(f1, sf1, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(sup, ssup)
    want = skm.f1_score(y, p, labels=labels, average="macro", zero_division=0)
    assert macro_f1(y, p, n_classes) == pytest.approx(want, abs=1e-12)
    m = classification_metrics(y, p, [f"c{c}" for c in labels])
    assert m["macro_f1"] == pytest.approx(want, abs=1e-12) and m["n"] == n
    assert [m["per_class"][f"c{c}"]["support"] for c in labels] == ssup.tolist()


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(EdgekdValueError, match="no examples"):
        macro_f1([], [], 2)
    with pytest.raises(EdgekdValueError, match="class id 3 but only 2 classes"):
        macro_f1([0, 3], [0, 1], 2)
    with pytest.raises(EdgekdValueError, match="negative class id"):
        accuracy([0, -1], [0, 1])
    with pytest.raises(EdgekdValueError, match="integer class ids"):
        accuracy([0.5, 1.0], [0, 1])
    with pytest.raises(EdgekdValueError, match="integer class ids"):
        accuracy(["a", "b"], ["a", "b"])
    with pytest.raises(EdgekdValueError, match="1-D"):
        confusion_matrix([[0, 1]], [[0, 1]])
    # whole floats and numpy ints are class ids
    assert accuracy(np.array([0.0, 1.0]), np.array([0, 1], dtype=np.int32)) == 1.0


def test_old_locations_reexport_the_same_functions():
    from edgekd.distill import metrics as old
    from edgekd.runtime import preprocess

    import edgekd.metrics as new

    assert old.classification_metrics is new.classification_metrics
    assert old.explanation_agreement is new.explanation_agreement
    assert preprocess.macro_f1 is new.macro_f1


def test_metrics_import_neither_torch_nor_sklearn():
    code = "import sys, edgekd.metrics; bad = {'torch', 'sklearn'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)
