"""Question answering from a generative bundle's own documents (edgekd.runtime.sgp, `edgekd answer`):
the ONNX scorer against the torch scorer, SGP picking the paragraph a trained tiny LM knows,
top1 / closed-book, the bundle's SGP settings, tampered or missing indexes, `compile-lm --retrieval`."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from factories import LM_CHAT_TEMPLATE, LM_CORPUS, memorize_texts, save_tiny_causal_lm
from edgekd.cli import main
from edgekd.errors import BundleError, EdgekdValueError
from edgekd.runtime.bundle import write_manifest
from edgekd.runtime.generative import GenerativeBundle, render_chat
from edgekd.runtime.manifest import DIGEST_FILE, manifest_digest
from edgekd.runtime.retrieval import BM25Index
from edgekd.runtime.sgp import (QA_SYSTEM, BundleQA, OnnxLMScorer, PromptFormat, QAResult, SGPConfig,
                                chat_prompt_format, sgp_settings)

# six made-up policy paragraphs, each with its own question and answer; "ads" is a lexical trap for
# the "settings" question (BM25 ranks it first: "delete" and "account" again and again)
PARAS = {
    "ads": "We share your data with advertising partners. Delete requests: delete, delete, delete account data, "
           "account.",
    "settings": "To delete your account, open the settings page and press remove.",
    "cookies": "Cookies remember your language and measure visits to our site.",
    "children": "Children under thirteen may not use the service without a parent.",
    "security": "We encrypt stored passwords and review access every month.",
    "contact": "Write to our privacy office by post or by email.",
}
QA = {"ads": ("Who receives my data?", "advertising partners"),
      "settings": ("How do I delete my account?", "open the settings page"),
      "cookies": ("What do cookies do?", "remember your language"),
      "children": ("Can children use the service?", "not without a parent"),
      "security": ("How are passwords stored?", "encrypted"),
      "contact": ("How can I reach the privacy office?", "by post or by email")}
SYSTEM = "Answer briefly."
TRAP_Q = QA["settings"][0]


def _chat_text(context: str, question: str, answer: str) -> str:
    msgs = [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Context: {context}\nQuestion: {question}"}]
    return render_chat(LM_CHAT_TEMPLATE, msgs, {"bos_token": "", "eos_token": ""}) + answer + "<|im_end|>\n"


@pytest.fixture(scope="module")
def qa_bundle(tmp_path_factory):
    """A tiny LM trained on the six (paragraph, question, answer) chat prompts, compiled by
    `edgekd compile-lm --retrieval` with a BM25 index of the paragraphs and SGP settings."""
    root = tmp_path_factory.mktemp("qa")
    texts = [_chat_text(PARAS[p], *QA[p]) for p in PARAS]
    src = save_tiny_causal_lm(root / "lm", max_positions=160, vocab_size=700, corpus=texts + LM_CORPUS)
    memorize_texts(src, texts, steps=120)
    BM25Index.build(list(PARAS), list(PARAS.values())).save(root / "idx")
    held = root / "held.txt"
    held.write_text("\n".join(LM_CORPUS[:2]) + "\n")
    assert main(["compile-lm", str(src), "--out", str(root / "bundle"), "--eval-data", str(held), "--precisions",
                 "fp32", "--retrieval", str(root / "idx"), "--system", SYSTEM, "--sgp-k", "6",
                 "--sgp-weight", "0.3"]) == 0
    return root / "bundle"


# --------------------------------------------------------------------------- the ONNX scorer
def _close(a: float, b: float, n: int) -> bool:
    """Two float32 computations of the same sum of ``n`` log-softmax terms: each within the
    float32 tolerance of tests/numerics.py of the exact value, scaled by its magnitude."""
    from numerics import tolerance
    import torch

    atol, _ = tolerance(torch.float32, n=n, scale=abs(b) + 1.0)
    return abs(a - b) <= 2 * atol


def test_onnx_scorer_matches_the_torch_scorer(tiny_lm_dir, lm_bundle):
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from edgekd.qa.sgp import TorchLMScorer

    torch.set_num_threads(1)
    lm = GenerativeBundle.load(lm_bundle, precision="fp32", threads=1)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float32).eval()
    tok = PreTrainedTokenizerFast.from_pretrained(tiny_lm_dir)
    ref = TorchLMScorer(model, tok, batch_size=3, max_length=lm.context_length)
    onnx = OnnxLMScorer(lm, batch_size=2)
    fmt, chat = PromptFormat(), chat_prompt_format(lm, "Be brief.")
    long = " ".join(LM_CORPUS)  # over the 64-token context: cut from the left by both
    cases = [fmt.scored(LM_CORPUS[0], "What jumps?", "the quick brown fox"),
             fmt.scored(LM_CORPUS[1], "When did stocks rise?", "on Monday"),
             fmt.scored(None, "Who lived there?", "a baker"),
             fmt.scored(LM_CORPUS[2], "Who lived there?", ""),  # an empty answer: an empty span
             chat.scored(LM_CORPUS[4], "What fell?", "Prices of oil"),
             fmt.scored(long, "What fell?", "oil")]
    texts, spans = [c[0] for c in cases], [[c[1], c[2]] for c in cases]
    assert len(tok(long)["input_ids"]) > lm.context_length
    got, want = onnx.span_logprobs(texts, spans), ref.span_logprobs(texts, spans)
    V = lm.gen["vocab_size"]
    for g_row, w_row in zip(got, want):
        for (g, gn), (w, wn) in zip(g_row, w_row):
            assert gn == wn
            assert _close(g, w, n=V * max(gn, 1)), (g, w)
    assert got[3][1] == (0.0, 0) and all(r[0][1] > 0 and math.isfinite(r[0][0]) and r[0][0] < 0 for r in got)
    prompts = [fmt.prompt(LM_CORPUS[0], "What jumps?"), fmt.prompt(None, "Who lived there?"),
               chat.prompt(LM_CORPUS[4], "What fell?"), fmt.prompt(long, "What fell?")]
    assert onnx.generate(prompts, max_new_tokens=8) == ref.generate(prompts, max_new_tokens=8)
    with pytest.raises(EdgekdValueError, match="span lists"):
        onnx.span_logprobs(["a"], [])
    with pytest.raises(EdgekdValueError, match="engine='ort'"):
        OnnxLMScorer(GenerativeBundle.load(lm_bundle, precision="fp32", engine="genai"))


def test_span_logprobs_by_hand(lm_bundle):
    """One text: the sum over the tokens starting in the span of log softmax(logits[t - 1])[id_t]."""
    lm = GenerativeBundle.load(lm_bundle, precision="fp32", threads=1)
    text, qs, as_ = PromptFormat().scored("The lazy dog.", "What jumps?", "the fox")
    enc = lm.tokenizer.encode(text)
    lg = lm.logits(enc.ids).astype(np.float64)
    top = lg.max(-1, keepdims=True)
    lp = lg - top - np.log(np.exp(lg - top).sum(-1, keepdims=True))
    for span, (total, n) in zip((qs, as_), OnnxLMScorer(lm).span_logprobs([text], [[qs, as_]])[0]):
        idx = [t for t, (s, e) in enumerate(enc.offsets) if t > 0 and span[0] <= s < span[1] and e > s]
        assert n == len(idx) > 0
        assert total == pytest.approx(sum(lp[t - 1, enc.ids[t]] for t in idx), rel=1e-9)


# --------------------------------------------------------------------------- SGP from the bundle
def test_sgp_picks_the_paragraph_the_lm_knows(qa_bundle):
    lm = GenerativeBundle.load(qa_bundle, threads=1)
    sgp = lm.manifest["retrieval"]["sgp"]
    assert sgp == {"k": 6, "weight": 0.3, "threshold": None, "terms": ["question", "answer"], "max_new_tokens": 32,
                   "prompt": "chat", "system": SYSTEM}
    index = BundleQA(lm).index
    assert index.search(TRAP_Q, k=1)[0][0] == "ads"  # the retriever is fooled
    top1 = lm.answer(TRAP_Q, "top1")
    assert top1.paragraph_id == "ads" and top1.candidates[0]["id"] == "ads"
    r = lm.answer(TRAP_Q)
    assert isinstance(r, QAResult) and r.paragraph_id == "settings" and r.answer == "open the settings page"
    assert not r.abstained and len(r.candidates) == 6
    by_id = {c["id"]: c for c in r.candidates}
    for c in r.candidates:
        assert c["lm"] == pytest.approx((c["lm_question"] + c["lm_answer"]) / 2)
        assert c["combined"] == pytest.approx(0.3 * c["retrieval_norm"] + 0.7 * c["lm"])
    assert by_id["ads"]["retrieval_norm"] == 1.0 and by_id["settings"]["lm"] > by_id["ads"]["lm"] + 1.0
    # the LM knows every paragraph's own question
    for pid in ("cookies", "contact"):
        got = lm.answer(QA[pid][0])
        assert got.paragraph_id == pid and got.answer == QA[pid][1]
    # per-call settings: the retriever alone keeps its choice; a high threshold abstains; k
    assert lm.answer(TRAP_Q, weight=1.0).paragraph_id == "ads"
    r = lm.answer(TRAP_Q, threshold=0.5)
    assert r.abstained and r.answer is None and r.score < 0.5
    assert len(lm.answer(TRAP_Q, k=2).candidates) == 2
    closed = lm.answer(TRAP_Q, "closed-book")
    assert closed.paragraph_id is None and isinstance(closed.answer, str)


def test_answer_cli(qa_bundle, capsys):
    assert main(["answer", str(qa_bundle), TRAP_Q, "--threads", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "open the settings page" and out[1].startswith("paragraph: settings (score ")
    assert main(["answer", str(qa_bundle), TRAP_Q, "--mode", "top1", "--json", "--precision", "fp32"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["mode"] == "top1" and r["paragraph_id"] == "ads" and r["candidates"][0]["id"] == "ads"
    assert main(["answer", str(qa_bundle), TRAP_Q, "--json", "--k", "3", "--terms", "question"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["paragraph_id"] == "settings" and len(r["candidates"]) == 3
    assert all(c["lm_answer"] is None and c["combined"] is not None for c in r["candidates"])
    assert main(["answer", str(qa_bundle), TRAP_Q, "--threshold", "0.9"]) == 0
    assert capsys.readouterr().out.startswith("(no answer: the best SGP score")
    for argv, err in (([" \n"], "question is empty"), ([TRAP_Q, "--k", "0"], "k: expected a positive integer"),
                      ([TRAP_Q, "--weight", "2"], "weight"), ([TRAP_Q, "--terms", "bleu"], "terms")):
        assert main(["answer", str(qa_bundle), *argv]) == 2
        assert err in capsys.readouterr().err


def test_plain_prompt_style_and_settings(rag_lm_bundle, tmp_path):
    """The recorded prompt style decides the prompts; settings are checked at load."""
    lm = GenerativeBundle.load(rag_lm_bundle, precision="fp32")
    qa = BundleQA(lm)
    assert qa.settings["prompt"] == "chat" and qa.settings["system"] == QA_SYSTEM and qa.config.k == 3
    assert qa.prompt.prompt("P.", "Q?") == ("<|im_start|>system\n" + QA_SYSTEM + "<|im_end|>\n<|im_start|>user\n"
                                            "Context: P.\nQuestion: Q?<|im_end|>\n<|im_start|>assistant\n")
    b = tmp_path / "plain"
    shutil.copytree(rag_lm_bundle, b)
    m = json.loads((b / "manifest.json").read_text())
    m["retrieval"]["sgp"] = {"prompt": "plain", "k": 2}
    write_manifest(b, m)
    qa = BundleQA(GenerativeBundle.load(b, precision="fp32"))
    assert qa.prompt == PromptFormat() and qa.config == SGPConfig(k=2)

    class Spy:
        def __init__(self, inner):
            self.inner, self.prompts = inner, []

        def generate(self, prompts, *, max_new_tokens):
            self.prompts += prompts
            return self.inner.generate(prompts, max_new_tokens=max_new_tokens)

        def span_logprobs(self, texts, spans):
            return self.inner.span_logprobs(texts, spans)

    qa.scorer = Spy(qa.scorer)
    r = qa.answer("What fell?")
    assert len(r.candidates) == 2 and qa.scorer.prompts == [
        PromptFormat().prompt(qa.index.text_of(c["id"]), "What fell?") for c in r.candidates]
    for bad, match in (({"prompt": "fancy"}, "retrieval.sgp.prompt"), ({"k": 0}, "retrieval.sgp: k"),
                       ({"weight": "high"}, "retrieval.sgp: weight"), ({"topk": 3}, "unknown setting"),
                       ({"terms": ["bleu"]}, "retrieval.sgp: terms"), ({"system": 3}, "retrieval.sgp.system")):
        m["retrieval"]["sgp"] = bad
        with pytest.raises(BundleError, match=match):
            write_manifest(b, m)
        # the same manifest written by hand (with its digest) is refused at load
        (b / "manifest.json").write_text(json.dumps(m))
        (b / DIGEST_FILE).write_text(manifest_digest(m) + "\n")
        with pytest.raises(BundleError, match=match):
            GenerativeBundle.load(b, precision="fp32")
    with pytest.raises(EdgekdValueError, match="chat template"):
        sgp_settings({"prompt": "chat"}, has_chat_template=False)
    assert sgp_settings(None, has_chat_template=False)["prompt"] == "plain"


def test_zip_bundle_answers_like_the_directory(rag_lm_bundle):
    d = GenerativeBundle.load(rag_lm_bundle, precision="fp32")
    z = GenerativeBundle.load(rag_lm_bundle.with_suffix(".zip"), precision="fp32")
    assert z.retrieval_dir is not None and z.retrieval_dir != d.retrieval_dir
    for mode in ("sgp", "top1"):
        a, b = d.answer("What fell?", mode, max_new_tokens=4), z.answer("What fell?", mode, max_new_tokens=4)
        assert a.to_json() == b.to_json()


def test_tampered_index_is_refused(rag_lm_bundle, tmp_path):
    b = tmp_path / "t"
    shutil.copytree(rag_lm_bundle, b)
    lm = GenerativeBundle.load(b, precision="fp32", verify="selected")  # the retrieval files not hashed yet
    data = b / "retrieval" / "bm25" / "data.csc.index.npy"
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="checksum mismatch for 'retrieval/bm25/data.csc.index.npy'"):
        lm.answer("What fell?")
    with pytest.raises(BundleError, match="checksum mismatch"):
        GenerativeBundle.load(b, precision="fp32")
    assert main(["answer", str(b), "What fell?"]) == 2
    # an index edited consistently with its own index.json is still refused: the manifest lists it
    idx = BM25Index.build(["x", "y"], ["evil paragraph one", "evil paragraph two"])
    shutil.rmtree(b / "retrieval")
    idx.save(b / "retrieval")
    with pytest.raises(BundleError, match="retrieval/"):
        GenerativeBundle.load(b, precision="fp32")


def test_bundle_without_retrieval(lm_bundle, capsys):
    lm = GenerativeBundle.load(lm_bundle, precision="fp32")
    assert lm.retrieval_dir is None
    for mode in ("sgp", "top1"):
        with pytest.raises(BundleError, match="no retrieval index.*compile-lm --retrieval"):
            lm.answer("What fell?", mode)
    r = lm.answer("What fell?", "closed-book", max_new_tokens=4)  # needs no index
    assert r.paragraph_id is None and isinstance(r.answer, str)
    assert main(["answer", str(lm_bundle), "What fell?"]) == 2
    assert "no retrieval index" in capsys.readouterr().err
    with pytest.raises(EdgekdValueError, match="mode"):
        lm.answer("What fell?", "oracle")
    with pytest.raises(EdgekdValueError, match="unknown setting"):
        lm.answer("What fell?", "closed-book", topk=3)


def test_compile_lm_retrieval_errors(tiny_lm_dir, tmp_path, capsys):
    held = tmp_path / "held.txt"
    held.write_text("one text\n")
    base = ["compile-lm", str(tiny_lm_dir), "--out", str(tmp_path / "b"), "--eval-data", str(held)]
    assert main(base + ["--sgp-k", "3"]) == 2
    assert "--sgp-k need --retrieval" in capsys.readouterr().err
    (tmp_path / "notidx").mkdir()
    (tmp_path / "notidx" / "docs.txt").write_text("hello")
    assert main(base + ["--retrieval", str(tmp_path / "notidx")]) == 2
    assert "not a usable retrieval index" in capsys.readouterr().err
    BM25Index.build(["a", "b"], ["one text", "two texts"], keep_texts=False).save(tmp_path / "notexts")
    assert main(base + ["--retrieval", str(tmp_path / "notexts")]) == 2
    assert "no paragraph texts" in capsys.readouterr().err
    BM25Index.build(["a", "b"], ["one text", "two texts"]).save(tmp_path / "idx")
    assert main(base + ["--retrieval", str(tmp_path / "idx"), "--sgp-weight", "1.5"]) == 2
    assert "sgp: weight" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
