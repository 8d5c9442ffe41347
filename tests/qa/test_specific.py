"""edgekd.qa.specific.specific_questions (template and retrieval filters, answer pooling, sampling,
bad inputs) and edgekd.qa.sgp.RenderedPromptFormat (spans inside a chat-rendered prompt)."""
from __future__ import annotations

import pytest

from edgekd.errors import EdgekdValueError
from edgekd.qa.sgp import RenderedPromptFormat, SGPConfig, answer_questions
from edgekd.qa.specific import specific_questions
from edgekd.qa.types import Triplet
from edgekd.runtime.retrieval import BM25Index

PARAS = {
    "a#0": "We keep payment records for seven years after the last purchase.",
    "a#1": "Cookies remember your language and the contents of your basket.",
    "b#0": "You may close your account from the settings page at any time.",
    "b#1": "We share purchase data with delivery partners to ship your parcels.",
}


def T(q, cid, a):
    return Triplet(context=PARAS[cid], question=q, answer=a, context_id=cid)


@pytest.fixture(scope="module")
def index():
    return BM25Index.build(list(PARAS), list(PARAS.values()))


def test_filters_templates_and_unretrievable_questions(index):
    trips = [
        T("How long are payment records kept?", "a#0", "seven years"),
        T("How long are payment records kept?", "a#0", "for seven years"),  # same pair: answers pooled
        T("Do you share my data?", "a#1", "no"),  # a template: asked of two paragraphs
        T("Do you share my data?", "b#1", "delivery partners"),
        T("What do cookies remember?", "a#1", "your language"),
        T("Where is the moon?", "b#0", "settings page"),  # specific text, but BM25 cannot find b#0
    ]
    kept, rep = specific_questions(trips, index, k=1)
    assert [t.question for t in kept] == ["How long are payment records kept?", "What do cookies remember?"]
    assert kept[0].meta["answers"] == ["seven years", "for seven years"] and kept[0].meta["filter_rank"] == 1
    assert rep["rows"] == 6 and rep["distinct_question_paragraph_pairs"] == 5
    assert rep["dropped_template"] == 2 and rep["dropped_not_in_top_k"] == 1 and rep["kept"] == 2
    # a looser template limit keeps the shared question when BM25 finds each paragraph
    kept2, rep2 = specific_questions(trips, index, k=4, max_paragraphs_per_question=2)
    assert rep2["dropped_template"] == 0
    assert {t.context_id for t in kept2 if t.question == "Do you share my data?"} <= {"a#1", "b#1"}


def test_limit_samples_over_documents_deterministically(index):
    trips = [T(f"How long are payment records kept, case {i}?", "a#0", "seven years") for i in range(3)]
    trips += [T(f"Can I close my account from the settings page, case {i}?", "b#0", "settings page") for i in range(3)]
    a, rep = specific_questions(trips, index, k=2, limit=2, seed=3)
    b, _ = specific_questions(trips, index, k=2, limit=2, seed=3)
    assert [t.question for t in a] == [t.question for t in b] and rep["sampled"] == 2
    assert {t.context_id.split("#")[0] for t in a} == {"a", "b"}  # one per document


def test_bad_inputs(index):
    with pytest.raises(EdgekdValueError, match="no triplets"):
        specific_questions([], index)
    with pytest.raises(EdgekdValueError, match="k must be"):
        specific_questions([T("x?", "a#0", "y")], index, k=0)
    with pytest.raises(EdgekdValueError, match="limit"):
        specific_questions([T("x?", "a#0", "y")], index, limit=0)
    with pytest.raises(EdgekdValueError, match="not in the index"):
        specific_questions([Triplet(context="c", question="q?", answer="a", context_id="zz#9")], index)


def _chat(context, question):
    head = "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\n"
    body = f"Question: {question}" if context is None else f"Context: {context}\nQuestion: {question}"
    return head + body + "<|im_end|>\n<|im_start|>assistant\n"


def test_rendered_prompt_spans():
    fmt = RenderedPromptFormat(_chat)
    q = "What do cookies remember?"
    text, qs, as_ = fmt.scored(PARAS["a#1"], q, "your language")
    assert text[qs[0]:qs[1]] == " " + q  # the space before the question belongs to its first token
    assert text[as_[0]:as_[1]] == "your language" and text.startswith(fmt.prompt(PARAS["a#1"], q))
    text, qs, as_ = fmt.scored(None, q, "")
    assert text[qs[0]:qs[1]] == " " + q and as_[0] == as_[1] == len(text)
    # a question that also occurs inside the paragraph: the last occurrence (the question turn) counts
    text, qs, _ = fmt.scored("Q: What? " + q, q, "x")
    assert qs[0] > text.index("Question:")
    with pytest.raises(EdgekdValueError, match="callable"):
        RenderedPromptFormat("not a function")
    with pytest.raises(EdgekdValueError, match="verbatim"):
        RenderedPromptFormat(lambda c, q: "no question here").scored("c", "Why?", "x")


class _Echo:
    """An LM that answers with the first word of the paragraph in the prompt and scores nothing."""

    def generate(self, prompts, *, max_new_tokens):
        return [p.split("Context: ", 1)[1].split()[0] if "Context: " in p else "?" for p in prompts]

    def span_logprobs(self, texts, spans):
        return [[(-1.0, 1) for _ in s] for s in spans]


def test_rendered_format_drives_every_mode(index):
    fmt = RenderedPromptFormat(_chat)
    q = ["How long are payment records kept?"]
    assert answer_questions("top1", q, _Echo(), index=index, prompt=fmt)[0].answer == "We"
    assert answer_questions("closed-book", q, _Echo(), prompt=fmt)[0].answer == "?"
    r = answer_questions("sgp", q, _Echo(), index=index, prompt=fmt, config=SGPConfig(k=2, weight=0.5))[0]
    assert r.paragraph_id == "a#0" and len(r.candidates) == 2
