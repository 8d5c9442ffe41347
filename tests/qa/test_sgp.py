"""edgekd.qa.sgp: SGP picks the paragraph an (oracle-ish) LM knows holds the answer; the torch
scorer's log-probabilities against a float64 computation by hand; the four modes; bad settings."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from factories import llama_word_tokenizer, tiny_llama
from numerics import assert_close_f64
from edgekd.errors import EdgekdValueError
from edgekd.qa.sgp import PromptFormat, QAResult, SGPConfig, TorchLMScorer, answer_questions, sgp_select
from edgekd.runtime.retrieval import BM25Index

IDS = ["ads", "delete", "cookies"]
TEXTS = ["We share data with advertising partners. Delete nothing here, delete delete.",
         "You can remove your account in the settings page.",
         "Cookies track visits to our site."]
GOLD = {"How do I delete my account?": ("delete", "in the settings page")}
FMT = PromptFormat()


class OracleLM:
    """A fake LM that 'knows' the answer: it answers with the gold answer from the gold paragraph
    and 'unknown' elsewhere; the gold paragraph explains the question well (log p -0.1 per
    token), others badly (-3); its own answer is confident from the gold paragraph only."""

    def __init__(self, gold_text: str, answer: str):
        self.gold_text, self.answer = gold_text, answer
        self.prompts: list[str] = []
        self.scored: list[str] = []

    def generate(self, prompts, *, max_new_tokens):
        self.prompts += list(prompts)
        return [self.answer if self.gold_text in p else "unknown" for p in prompts]

    def span_logprobs(self, texts, spans):
        self.scored += list(texts)
        out = []
        for t, row in zip(texts, spans):
            good = self.gold_text in t
            out.append([(-0.1 * max(b - a, 1) if good else -3.0 * max(b - a, 1), max(b - a, 1)) for a, b in row])
        return out


@pytest.fixture(scope="module")
def index():
    return BM25Index.build(IDS, TEXTS)


def test_sgp_picks_the_paragraph_the_lm_can_answer_from(index):
    q = "How do I delete my account?"
    hits = index.search(q, k=3)
    assert hits[0][0] == "ads"  # the lexical retriever is fooled by the repeated "delete"
    lm = OracleLM(TEXTS[1], "in the settings page")
    top1 = answer_questions("top1", [q], lm, index=index)[0]
    assert top1.paragraph_id == "ads" and top1.answer == "unknown"
    r = answer_questions("sgp", [q], lm, index=index, config=SGPConfig(k=3, weight=0.2))[0]
    assert r.paragraph_id == "delete" and r.answer == "in the settings page" and not r.abstained
    by_id = {c["id"]: c for c in r.candidates}
    # combined = w * minmax(retrieval) + (1 - w) * mean(lm_question, lm_answer), by hand
    raw = np.array([s for _, s in hits])
    for pid, s in hits:
        rn = (s - raw.min()) / (raw.max() - raw.min())
        lm_mean = -0.1 if pid == "delete" else -3.0
        assert by_id[pid]["retrieval_norm"] == pytest.approx(rn)
        assert by_id[pid]["combined"] == pytest.approx(0.2 * rn + 0.8 * lm_mean)
    assert r.score == pytest.approx(by_id["delete"]["combined"])
    # the retriever alone (weight 1) keeps its own choice
    assert answer_questions("sgp", [q], lm, index=index, config=SGPConfig(k=3, weight=1.0))[0].paragraph_id == "ads"
    # question term only: one generation, from the chosen paragraph
    lm2 = OracleLM(TEXTS[1], "in the settings page")
    r2 = answer_questions("sgp", [q], lm2, index=index, config=SGPConfig(k=3, weight=0.2, terms=("question",)))[0]
    assert r2.paragraph_id == "delete" and r2.answer == "in the settings page" and len(lm2.prompts) == 1


def test_abstention_threshold(index):
    q = "How do I delete my account?"
    lm = OracleLM("no such paragraph", "x")  # every candidate scores -3
    r = answer_questions("sgp", [q], lm, index=index, config=SGPConfig(k=3, weight=0.0, threshold=-1.0))[0]
    assert r.abstained and r.answer is None and r.score == pytest.approx(-3.0)
    r = answer_questions("sgp", [q], lm, index=index, config=SGPConfig(k=3, weight=0.0, threshold=-5.0))[0]
    assert not r.abstained and r.answer == "unknown"
    json.dumps(r.to_json(), allow_nan=False)


def test_modes_build_the_right_prompts(index):
    lm = OracleLM(TEXTS[2], "they track visits")
    qs = ["What do cookies do?", "Who gets my data?"]
    closed = answer_questions("closed-book", qs, lm)
    assert [r.paragraph_id for r in closed] == [None, None]
    assert lm.prompts == [FMT.prompt(None, q) for q in qs] and "Context" not in lm.prompts[0]
    lm.prompts.clear()
    oracle = answer_questions("oracle", qs, lm, contexts=[TEXTS[2], TEXTS[0]], context_ids=["cookies", "ads"])
    assert [r.answer for r in oracle] == ["they track visits", "unknown"]
    assert lm.prompts[0] == "Context: " + TEXTS[2] + "\nQuestion: What do cookies do?\nAnswer:"
    top1 = answer_questions("top1", qs, lm, index=index)
    assert [r.paragraph_id for r in top1] == [index.search(q, 1)[0][0] for q in qs]


def test_prompt_spans():
    text, qs, as_ = FMT.scored("Some paragraph.", "Why?", "Because.")
    assert text[qs[0]:qs[1]] == " Why?" and text[as_[0]:as_[1]] == " Because."
    text, qs, as_ = FMT.scored(None, "Why?", "")
    assert text[qs[0]:qs[1]] == " Why?" and as_[0] == as_[1]
    text, qs, _ = PromptFormat(question_prefix="\nQ:").scored("P", "Why?", "x")
    assert text[qs[0]:qs[1]] == "Why?"


def test_byte_level_tokenizer_counts_every_question_token():
    """With a GPT-2-style byte-level BPE (offsets not trimmed), the first question token "Ġhow"
    starts at the space before the question: it is still counted."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["Context", ":", "Ġcookies", "Ċ", "Question", "Ġhow", "Ġare", "Ġyou", "Answer", "Ġfine"]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="Context", eos_token="Context")
    text, qs, as_ = FMT.scored("cookies", "how are you", "fine")
    enc = fast(text, return_offsets_mapping=True)
    starts = [s for s, _ in enc["offset_mapping"]]
    assert sum(qs[0] <= s < qs[1] for s in starts) == 3 and sum(as_[0] <= s < as_[1] for s in starts) == 1


def test_bad_settings_and_inputs(index):
    lm = OracleLM("x", "y")
    for bad in (dict(k=0), dict(weight=1.5), dict(weight=True), dict(threshold=float("nan")), dict(terms=("bleu",)),
                dict(terms=()), dict(max_new_tokens=0)):
        with pytest.raises(EdgekdValueError, match="SGPConfig"):
            SGPConfig(**bad)
    assert SGPConfig(terms="answer").terms == ("answer",)
    with pytest.raises(EdgekdValueError, match="mode"):
        answer_questions("rag", ["q?"], lm)
    with pytest.raises(EdgekdValueError, match="index"):
        answer_questions("sgp", ["q?"], lm)
    with pytest.raises(EdgekdValueError, match="contexts"):
        answer_questions("oracle", ["q?"], lm)
    with pytest.raises(EdgekdValueError, match="non-empty"):
        answer_questions("closed-book", ["  "], lm)
    with pytest.raises(EdgekdValueError, match="at least one"):
        answer_questions("closed-book", [], lm)
    with pytest.raises(EdgekdValueError, match="texts"):
        answer_questions("top1", ["q?"], lm, index=BM25Index.build(IDS, TEXTS, keep_texts=False))


# ------------------------------------------------------------------------------ the torch scorer
W = [f"w{i}" for i in range(44)]
WFMT = PromptFormat(context_prefix="w1 ", question_prefix=" w2 ", answer_prefix=" w3", closed_prefix="w2 ")


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(seed=3), llama_word_tokenizer()


def _manual_logprob(model, tok, text, span):
    """log p of the tokens that start inside ``span``, from one unpadded float64 forward."""
    enc = tok(text, return_offsets_mapping=True)
    ids = torch.tensor([enc["input_ids"]])
    m64 = tiny_llama(seed=3).double()
    m64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    with torch.no_grad():
        logp = torch.log_softmax(m64(input_ids=ids).logits[0].double(), -1)
    total, n = torch.zeros((), dtype=torch.float64), 0
    for t, (s, e) in enumerate(enc["offset_mapping"]):
        if t > 0 and span[0] <= s < span[1] and e > s:
            total = total + logp[t - 1, enc["input_ids"][t]]
            n += 1
    return total, n


def test_torch_scorer_matches_a_float64_computation(lm):
    model, tok = lm
    scorer = TorchLMScorer(model, tok, batch_size=2)
    cases = [(" ".join(W[5:15]), " ".join(W[20:24]), " ".join(W[30:33])),
             (" ".join(W[6:9]), W[25], " ".join(W[34:40])),  # shorter: padded in the batch
             (" ".join(W[10:30]), " ".join(W[11:14]), W[41])]
    texts, spans = [], []
    for c, q, a in cases:
        t, qs, as_ = WFMT.scored(c, q, a)
        texts.append(t)
        spans.append([qs, as_])
    got = scorer.span_logprobs(texts, spans)
    for (t, sp), row in zip(zip(texts, spans), got):
        for span, (total, n) in zip(sp, row):
            ref, n_ref = _manual_logprob(model, tok, t, span)
            assert n == n_ref == len(t[span[0]:span[1]].split())
            # a sum of n log-softmax values, each a reduction over the 48-token vocabulary
            assert_close_f64(torch.tensor(total, dtype=torch.float32), ref, n=48 * n, scale=abs(float(ref)) + 1)


def test_torch_scorer_generates_greedily_and_left_truncates(lm):
    model, tok = lm
    scorer = TorchLMScorer(model, tok, batch_size=3)
    prompts = [WFMT.prompt(" ".join(W[5:9]), W[20]), WFMT.prompt(" ".join(W[5:30]), W[21]), WFMT.prompt(None, W[22])]
    got = scorer.generate(prompts, max_new_tokens=4)
    for p, g in zip(prompts, got):
        ids = torch.tensor([tok(p)["input_ids"]])
        with torch.no_grad():
            ref = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4,
                                 do_sample=False, pad_token_id=0)
        assert g == tok.decode(ref[0, ids.shape[1]:], skip_special_tokens=True).split("\n")[0].strip()
    # longer than the model's 64 positions: the paragraph's start is cut, the question stays scored
    long = " ".join(W[4:44] * 3)
    t, qs, as_ = WFMT.scored(long, W[20], W[21])
    (lq, nq), (la, na) = scorer.span_logprobs([t], [[qs, as_]])[0]
    assert nq == 1 and na == 1 and math.isfinite(lq) and math.isfinite(la)
    assert len(scorer.generate([WFMT.prompt(long, W[20])], max_new_tokens=4)) == 1


def test_sgp_end_to_end_with_the_torch_scorer(lm, tmp_path):
    model, tok = lm
    scorer = TorchLMScorer(model, tok, batch_size=4)
    ids = ["a", "b", "c", "d"]
    texts = [" ".join(W[i:i + 6]) for i in (4, 12, 20, 28)]
    idx = BM25Index.build(ids, texts)
    res = answer_questions("sgp", [W[13] + " " + W[14], W[29]], scorer, index=idx, prompt=WFMT,
                           config=SGPConfig(k=3, weight=0.5, max_new_tokens=3))
    for r in res:
        assert isinstance(r, QAResult) and r.paragraph_id in ids and len(r.candidates) == 3
        for c in r.candidates:
            assert math.isfinite(c["lm_question"]) and c["lm_question"] < 0
            assert c["combined"] == pytest.approx(0.5 * c["retrieval_norm"] + 0.5 * c["lm"])
        json.dumps(r.to_json(), allow_nan=False)
    one = sgp_select(W[29], idx.search(W[29], 3), [idx.text_of(i) for i, _ in idx.search(W[29], 3)],
                     [r["answer"] for r in res[1].candidates], scorer, SGPConfig(k=3, weight=0.5), WFMT)
    assert one.paragraph_id == res[1].paragraph_id and one.score == pytest.approx(res[1].score, rel=1e-5)


def test_torch_scorer_bad_inputs(lm):
    model, tok = lm
    with pytest.raises(EdgekdValueError, match="batch_size"):
        TorchLMScorer(model, tok, batch_size=0)
    with pytest.raises(EdgekdValueError, match="span lists"):
        TorchLMScorer(model, tok).span_logprobs(["w5 w6"], [])

    class Slow:
        is_fast = False

    with pytest.raises(EdgekdValueError, match="fast tokenizer"):
        TorchLMScorer(model, Slow())
