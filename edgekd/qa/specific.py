"""Paragraph-specific questions: the questions of a QA set that can name their own paragraph.

PolicyQA's questions are templates ("Does the company share my data with third parties?") asked of
many paragraphs, so no retriever (and no SGP) can tell which paragraph was meant: evaluating
paragraph selection on them measures nothing. :func:`specific_questions` keeps the questions that
pass the issue's specificity test, the same one the synthetic-triplet filter uses
(:mod:`edgekd.qa.synth`): **a retriever, given the question alone, ranks the question's own
paragraph in its top ``k``** over all the paragraphs of the collection. Before that test:

- rows asking the same question of the same paragraph are merged (their gold answers pooled into
  ``meta["answers"]``);
- a question text asked of more than ``max_paragraphs_per_question`` paragraphs of the collection is
  dropped as a template (default 1: asked of one paragraph only).

What this selection implies for a table (say it next to the numbers): every kept question has its
gold paragraph in the filter retriever's top ``k``, so with the same retriever and the same ``k``,
top-``k`` recall is 100 % by construction; top-1 and MRR are not, and selecting among the ``k``
candidates (retrieve-top-1 vs SGP) is exactly what such a set measures.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Any, Sequence

from edgekd.errors import EdgekdValueError
from edgekd.qa.types import Triplet

__all__ = ["specific_questions"]


def _norm(q: str) -> str:
    return " ".join(q.lower().split()).rstrip("?. ")


def specific_questions(triplets: Sequence[Triplet], index: Any, *, k: int = 5, max_paragraphs_per_question: int = 1,
                       limit: int | None = None, seed: int = 0) -> tuple[list[Triplet], dict[str, Any]]:
    """``(kept, report)``: the paragraph-specific questions of ``triplets`` (see the module
    docstring) and the count each step dropped. ``index``: a
    :class:`~edgekd.runtime.retrieval.RetrievalIndex` over the collection's paragraphs, whose ids
    are the triplets' ``context_id``. ``limit``: a seeded sample of at most that many kept questions
    (spread evenly over the paragraphs' documents, in a stable order)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise EdgekdValueError(f"specific_questions: k must be a positive integer, got {k!r}")
    if isinstance(max_paragraphs_per_question, bool) or not isinstance(max_paragraphs_per_question, int) \
            or max_paragraphs_per_question < 1:
        raise EdgekdValueError("specific_questions: max_paragraphs_per_question must be a positive integer, "
                               f"got {max_paragraphs_per_question!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise EdgekdValueError(f"specific_questions: limit must be a positive integer or None, got {limit!r}")
    triplets = list(triplets)
    if not triplets:
        raise EdgekdValueError("specific_questions: no triplets given")
    ids = set(getattr(index, "ids", []) or [])
    missing = sorted({t.context_id for t in triplets if t.context_id not in ids})
    if missing:
        raise EdgekdValueError(f"specific_questions: {len(missing)} context ids are not in the index "
                               f"(first: {missing[0]!r}); index the same collection the questions come from")
    report: dict[str, Any] = {"rows": len(triplets), "k": k, "max_paragraphs_per_question": max_paragraphs_per_question,
                              "retriever": type(index).__name__}
    # 1. merge (question, paragraph) duplicates, pooling the gold answers
    merged: dict[tuple[str, str], Triplet] = {}
    answers: dict[tuple[str, str], list[str]] = defaultdict(list)
    for t in triplets:
        key = (_norm(t.question), t.context_id)
        merged.setdefault(key, t)
        for a in (t.meta.get("answers") or [t.answer]):
            if a not in answers[key]:
                answers[key].append(a)
    pairs = [replace(t, meta={**t.meta, "answers": answers[key]}) for key, t in merged.items()]
    report["distinct_question_paragraph_pairs"] = len(pairs)
    # 2. templates: the same question asked of many paragraphs
    paras_of: dict[str, set[str]] = defaultdict(set)
    for t in pairs:
        paras_of[_norm(t.question)].add(t.context_id)
    rare = [t for t in pairs if len(paras_of[_norm(t.question)]) <= max_paragraphs_per_question]
    report["dropped_template"] = len(pairs) - len(rare)
    # 3. the retriever, given the question alone, ranks its own paragraph in the top k
    kept: list[Triplet] = []
    ranks: list[int] = []
    if rare:
        hits = index.search_batch([t.question for t in rare], k=k)
        for t, h in zip(rare, hits):
            got = [pid for pid, _ in h]
            if t.context_id in got:
                r = got.index(t.context_id) + 1
                kept.append(replace(t, meta={**t.meta, "filter_rank": r}))
                ranks.append(r)
    report["dropped_not_in_top_k"] = len(rare) - len(kept)
    report["kept"] = len(kept)
    report["filter_top1"] = sum(r == 1 for r in ranks)
    if limit is not None and len(kept) > limit:
        from edgekd.qa.cli_train import select_triplets

        kept = select_triplets(kept, sample=limit, seed=seed)  # spread over the documents, in input order
        report["sampled"] = len(kept)
    return kept, report
