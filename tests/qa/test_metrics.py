"""edgekd.qa.metrics against hand-computed cases (the SQuAD v1.1 script's rules, ROUGE-L by LCS)."""
from __future__ import annotations

import pytest

from edgekd.errors import EdgekdValueError
from edgekd.qa.metrics import exact_match, normalize_answer, qa_metrics, retrieval_metrics, rouge_l, token_f1


@pytest.mark.parametrize("text,norm", [
    ("The Cat", "cat"),
    ("  an   apple,  a pear!  ", "apple pear"),
    ("U.S.A.", "usa"),                     # punctuation removed before articles: no split on dots
    ("theatre", "theatre"),                # articles only as whole words
    ("A-the-an", "athean"),                # hyphens are punctuation: removed, the words merge
    ("Café — déjà vu", "café — déjà vu"),  # non-ASCII punctuation (em dash) is kept, as in the script
])
def test_normalize_answer_follows_squad(text, norm):
    assert normalize_answer(text) == norm


def test_exact_match_and_f1_hand_computed():
    assert exact_match("the Cat.", "cat") == 1.0
    assert exact_match("cat sat", ["dog", "a cat sat"]) == 1.0  # max over gold answers
    assert exact_match("cat", "cats") == 0.0
    # pred {cat, sat}, gold {cat, sat, on, mat}: P = 1, R = 1/2, F1 = 2/3
    assert token_f1("the cat sat", "a cat sat on the mat") == pytest.approx(2 / 3)
    # bag of tokens: pred [cat, cat], gold [cat]: common 1, P = 1/2, R = 1, F1 = 2/3
    assert token_f1("cat cat", "cat") == pytest.approx(2 / 3)
    assert token_f1("dog", ["cat", "the dog barks"]) == pytest.approx(2 * 1 * 0.5 / 1.5)  # max: 1/2 recall
    assert token_f1("", "cat") == 0.0 and token_f1("the", "a") == 0.0  # empty after normalisation


def test_rouge_l_hand_computed():
    # tokens (rouge-score: lower-case, alphanumerics): pred [the, cat, sat], gold [a, cat, sat, on, the, mat]
    # LCS = [cat, sat] = 2: P = 2/3, R = 2/6, F = 2PR / (P + R) = 4/9
    assert rouge_l("the cat sat", "a cat sat on the mat") == pytest.approx(4 / 9)
    assert rouge_l("The cat!", ["dog", "the cat"]) == pytest.approx(1.0)
    assert rouge_l("", "cat") == 0.0


def test_qa_metrics_means_and_abstentions():
    m = qa_metrics(["the cat", None, "dog house"], [["cat"], "anything", "dog"])
    # EM: 1, 0 (abstained), 0; F1: 1, 0, 2/3 (P 1/2, R 1); ROUGE-L keeps articles: 2/3, 0, 2/3
    assert m["n"] == 3
    assert m["exact_match"] == pytest.approx(100 / 3)
    assert m["f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)
    assert m["rouge_l"] == pytest.approx(100 * (2 / 3 + 2 / 3) / 3)
    assert m["coverage"] == pytest.approx(200 / 3)
    assert m["exact_match_answered"] == pytest.approx(50.0)
    assert m["f1_answered"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert qa_metrics([None], ["x"])["f1_answered"] == 0.0  # nothing answered: 0, not a division by zero


def test_retrieval_metrics_hand_computed():
    ranked = [["a", "b", "c"], ["b", "a"], ["c", "d", "e", "f", "g", "a"], ["x"]]
    gold = ["a", "a", "a", {"y", "x"}]
    m = retrieval_metrics(ranked, gold, ks=(1, 5))
    # ranks 1, 2, 6 (not in top 5), 1
    assert m["top1"] == pytest.approx(50.0)
    assert m["top5"] == pytest.approx(75.0)
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 6 + 1) / 4)
    assert retrieval_metrics([["b"]], ["a"])["mrr"] == 0.0


def test_bad_inputs():
    with pytest.raises(EdgekdValueError, match="predictions"):
        qa_metrics(["a"], ["a", "b"])
    with pytest.raises(EdgekdValueError, match="no questions"):
        qa_metrics([], [])
    with pytest.raises(EdgekdValueError, match="string or None"):
        qa_metrics([3], ["a"])
    with pytest.raises(EdgekdValueError, match="gold answers"):
        exact_match("a", [])
    with pytest.raises(EdgekdValueError, match="gold answers"):
        token_f1("a", [None])
    with pytest.raises(EdgekdValueError, match="rankings"):
        retrieval_metrics([["a"]], [])
    with pytest.raises(EdgekdValueError, match="ks"):
        retrieval_metrics([["a"]], ["a"], ks=(0,))
