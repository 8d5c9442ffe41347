"""Metrics of legal QA: SQuAD v1.1 exact match and F1, ROUGE-L, and paragraph retrieval.

- :func:`exact_match` / :func:`token_f1`: the official SQuAD v1.1 evaluation script
  (``evaluate-v1.1.py``): answers are normalised by lower-casing, removing ASCII punctuation
  (``string.punctuation``), removing the articles a/an/the and collapsing whitespace; F1 is over the
  normalised whitespace tokens (bag of tokens); both take the maximum over the gold answers.
- :func:`rouge_l`: ROUGE-L F-measure from Google's ``rouge-score`` package (its tokenizer:
  lower-case, non-alphanumerics dropped; no stemming unless ``use_stemmer``), max over gold answers.
- :func:`qa_metrics`: means over questions, in percent (as the SQuAD script reports). A question
  the system abstained on (prediction ``None``) scores 0 in ``exact_match``/``f1``/``rouge_l``;
  ``coverage`` is the share answered and ``*_answered`` the means over the answered ones only.
- :func:`retrieval_metrics`: top-k accuracy (the gold paragraph among the first k) and the mean
  reciprocal rank (0 when the gold paragraph is not in the ranked list).
"""
from __future__ import annotations

import re
import string
from collections import Counter
from typing import Iterable, Sequence

from edgekd.errors import EdgekdValueError

__all__ = ["normalize_answer", "exact_match", "token_f1", "rouge_l", "qa_metrics", "retrieval_metrics"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (SQuAD v1.1, in its order)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _golds(ground_truths: str | Sequence[str]) -> list[str]:
    if isinstance(ground_truths, str):
        return [ground_truths]
    golds = list(ground_truths)
    if not golds or not all(isinstance(g, str) for g in golds):
        raise EdgekdValueError(f"gold answers: expected a string or a non-empty list of strings, got {ground_truths!r:.80}")
    return golds


def _f1(prediction: str, gold: str) -> float:
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, ground_truths: str | Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer, else 0.0."""
    return float(max(normalize_answer(prediction) == normalize_answer(g) for g in _golds(ground_truths)))


def token_f1(prediction: str, ground_truths: str | Sequence[str]) -> float:
    """SQuAD token F1 (0..1), max over the gold answers."""
    return max(_f1(prediction, g) for g in _golds(ground_truths))


_SCORERS: dict[bool, object] = {}


def rouge_l(prediction: str, ground_truths: str | Sequence[str], *, use_stemmer: bool = False) -> float:
    """ROUGE-L F-measure (0..1) of ``rouge-score``, max over the gold answers."""
    if use_stemmer not in _SCORERS:
        try:
            from rouge_score import rouge_scorer
        except ImportError:
            raise EdgekdValueError("ROUGE-L needs the rouge-score package: pip install rouge-score") from None
        _SCORERS[use_stemmer] = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
    scorer = _SCORERS[use_stemmer]
    return max(scorer.score(g, prediction)["rougeL"].fmeasure for g in _golds(ground_truths))


def qa_metrics(predictions: Sequence[str | None], golds: Sequence[str | Sequence[str]], *,
               use_stemmer: bool = False) -> dict[str, float]:
    """Mean EM, F1 and ROUGE-L in percent over all questions (an abstention, ``None``, scores 0),
    ``coverage`` (percent answered), the same three over the answered ones, and ``n``."""
    predictions, golds = list(predictions), list(golds)
    if len(predictions) != len(golds):
        raise EdgekdValueError(f"qa_metrics: {len(predictions)} predictions for {len(golds)} questions")
    if not predictions:
        raise EdgekdValueError("qa_metrics: no questions to score")
    em, f1, rl, answered = [], [], [], []
    for k, (p, g) in enumerate(zip(predictions, golds)):
        if p is not None and not isinstance(p, str):
            raise EdgekdValueError(f"predictions[{k}]: expected a string or None (abstained), got {type(p).__name__}")
        answered.append(p is not None)
        em.append(exact_match(p, g) if p is not None else 0.0)
        f1.append(token_f1(p, g) if p is not None else 0.0)
        rl.append(rouge_l(p, g, use_stemmer=use_stemmer) if p is not None else 0.0)
    n, n_ans = len(predictions), sum(answered)

    def mean(xs: Iterable[float], m: int) -> float:
        return 100.0 * sum(xs) / m if m else 0.0

    out = {"n": n, "exact_match": mean(em, n), "f1": mean(f1, n), "rouge_l": mean(rl, n),
           "coverage": 100.0 * n_ans / n}
    out.update({"exact_match_answered": mean((e for e, a in zip(em, answered) if a), n_ans),
                "f1_answered": mean((x for x, a in zip(f1, answered) if a), n_ans),
                "rouge_l_answered": mean((x for x, a in zip(rl, answered) if a), n_ans)})
    return out


def retrieval_metrics(ranked: Sequence[Sequence[str]], gold: Sequence[str | Iterable[str]],
                      ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """``top{k}`` (percent of queries whose gold paragraph id is among the first k ranked) for each
    k, ``mrr`` (mean of 1/rank, 0 when absent; 0..1) and ``n``. ``gold[i]`` is one id or a set of
    ids (any counts)."""
    ranked, gold = list(ranked), list(gold)
    if len(ranked) != len(gold):
        raise EdgekdValueError(f"retrieval_metrics: {len(ranked)} rankings for {len(gold)} gold paragraphs")
    if not ranked:
        raise EdgekdValueError("retrieval_metrics: no queries")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise EdgekdValueError(f"ks: expected positive integers, got {k!r}")
    hits = {k: 0 for k in ks}
    rr = 0.0
    for r, g in zip(ranked, gold):
        want = {g} if isinstance(g, str) else set(g)
        rank = next((i + 1 for i, pid in enumerate(r) if pid in want), None)
        if rank is not None:
            rr += 1.0 / rank
            for k in ks:
                hits[k] += rank <= k
    n = len(ranked)
    out: dict[str, float] = {f"top{k}": 100.0 * hits[k] / n for k in ks}
    out.update(mrr=rr / n, n=n)
    return out
