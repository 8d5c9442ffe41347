"""The Selective Generative Paradigm (SGP) of Ace-Attorney (Italiani et al. 2025), RECONSTRUCTED.

Only the paper's abstract is public: it says that at inference the retriever and the small
generative model together select the paragraph to answer from. Everything below is our
reconstruction of that sentence, not the authors' algorithm:

1. the retriever returns the top ``k`` candidate paragraphs with scores; the scores are min-max
   normalised over the k candidates into ``r_i`` in [0, 1] (all equal -> all 1);
2. the small LM (a :class:`LMScorer`) scores each candidate ``p_i`` with, per ``terms``:

   - ``"question"``: the length-normalised log-likelihood of the question given the paragraph,
     ``log p(q | p_i) / |q|`` (query likelihood, as in the zero-shot passage re-ranker UPR of
     Sachan et al. 2022), and/or
   - ``"answer"``: the LM first answers from each candidate (greedy), then
     ``log p(a_i | p_i, q) / |a_i|``, its confidence in its own answer;

   ``lm_i`` is the mean of the chosen terms (nats per token, <= 0). Both come from ONE forward
   pass per candidate over ``prompt(p_i, q) + " " + a_i`` (the question's and the answer's
   tokens are found through the tokenizer's character offsets);
3. ``s_i = weight * r_i + (1 - weight) * lm_i``; the answer is the one generated from the best
   candidate, and the system abstains (answer ``None``) when ``s_best < threshold``.

``weight`` and ``threshold`` are to be chosen on a dev split (PolicyQA dev, or generated dev
triplets), never on the test split. The comparison modes of :func:`answer_questions`:
``closed-book`` (no paragraph), ``top1`` (the retriever's first paragraph), ``oracle`` (the gold
paragraph) and ``sgp``.

The scorer is an interface (:class:`LMScorer`: ``generate`` and ``span_logprobs``), so that the
torch causal LM here (:class:`TorchLMScorer`) and an ONNX LM on the device plug in alike.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from edgekd.errors import EdgekdValueError

__all__ = ["PromptFormat", "RenderedPromptFormat", "SGPConfig", "LMScorer", "TorchLMScorer", "QAResult", "MODES", "TERMS",
           "sgp_select", "answer_questions"]

MODES = ("closed-book", "top1", "oracle", "sgp")
TERMS = ("question", "answer")


@dataclass(frozen=True)
class PromptFormat:
    """How a (paragraph, question) becomes a prompt: ``context_prefix + paragraph +
    question_prefix + question + answer_prefix`` (closed-book: ``closed_prefix + question +
    answer_prefix``); an answer follows after one space. It must be the format the student was
    trained with."""

    context_prefix: str = "Context: "
    question_prefix: str = "\nQuestion: "
    answer_prefix: str = "\nAnswer:"
    closed_prefix: str = "Question: "

    def prompt(self, context: str | None, question: str) -> str:
        if context is None:
            return self.closed_prefix + question + self.answer_prefix
        return self.context_prefix + context + self.question_prefix + question + self.answer_prefix

    def scored(self, context: str | None, question: str, answer: str) -> tuple[str, tuple[int, int], tuple[int, int]]:
        """``(text, question_span, answer_span)``: the prompt followed by ``" " + answer``, and the
        character spans of the question and of the answer (each with the space before it)."""
        head = self.closed_prefix if context is None else self.context_prefix + context + self.question_prefix
        # the space before the question belongs to its first token in byte-level BPE tokenizers
        # (GPT-2, SmolLM2: "Ġword", whose offset starts at the space unless trimmed)
        q0 = len(head) - 1 if head.endswith(" ") else len(head)
        q1 = len(head) + len(question)
        prompt = self.prompt(context, question)
        text = prompt + " " + answer if answer else prompt  # no answer: an empty span
        return text, (q0, q1), (len(prompt), len(text))


class RenderedPromptFormat:
    """A prompt format given by a function ``render(context, question) -> prompt`` (a chat
    template, e.g. :func:`edgekd.qa.students.qa_prompt` bound to a tokenizer, the format the QA
    students are trained with). The question's span is found as its last occurrence in the
    rendered prompt; the answer follows with ``answer_sep`` (``""`` after a chat template's
    assistant header, which ends with a newline). ``render(None, question)`` must give the
    closed-book prompt when that mode is used."""

    def __init__(self, render, answer_sep: str = ""):
        if not callable(render):
            raise EdgekdValueError(f"RenderedPromptFormat: render must be callable, got {type(render).__name__}")
        self.render = render
        self.answer_sep = answer_sep

    def prompt(self, context: str | None, question: str) -> str:
        return self.render(context, question)

    def scored(self, context: str | None, question: str, answer: str) -> tuple[str, tuple[int, int], tuple[int, int]]:
        prompt = self.prompt(context, question)
        q0 = prompt.rfind(question)
        if q0 < 0:
            raise EdgekdValueError("RenderedPromptFormat: the rendered prompt does not contain the question verbatim")
        if q0 > 0 and prompt[q0 - 1] == " ":
            q0 -= 1  # the space before the question belongs to its first token (byte-level BPE)
        text = prompt + self.answer_sep + answer if answer else prompt
        return text, (q0, q0 + len(question) + (prompt[q0] == " ")), (len(prompt), len(text))


@dataclass
class SGPConfig:
    """SGP settings (see the module docstring). ``weight``: share of the normalised retriever
    score (0 = the LM alone picks, 1 = the retriever alone); ``threshold``: abstain when the best
    combined score is below it (None: never abstain); ``terms``: the LM terms used."""

    k: int = 5
    weight: float = 0.5
    threshold: float | None = None
    terms: tuple[str, ...] = ("question", "answer")
    max_new_tokens: int = 32

    def __post_init__(self):
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise EdgekdValueError(f"SGPConfig.k: expected a positive integer, got {self.k!r}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or not 0 <= self.weight <= 1:
            raise EdgekdValueError(f"SGPConfig.weight: expected a number in [0, 1], got {self.weight!r}")
        if self.threshold is not None and (not isinstance(self.threshold, (int, float))
                                           or isinstance(self.threshold, bool) or not math.isfinite(self.threshold)):
            raise EdgekdValueError(f"SGPConfig.threshold: expected a finite number or None, got {self.threshold!r}")
        if isinstance(self.terms, str):
            self.terms = tuple(t.strip() for t in self.terms.split(",") if t.strip())
        self.terms = tuple(self.terms)
        bad = [t for t in self.terms if t not in TERMS]
        if bad or len(set(self.terms)) != len(self.terms):
            raise EdgekdValueError(f"SGPConfig.terms: expected distinct items of {TERMS}, got {self.terms!r}")
        if not self.terms and self.weight < 1:
            raise EdgekdValueError("SGPConfig.terms: empty terms leave only the retriever: set weight=1 "
                                   "(or use mode top1)")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise EdgekdValueError(f"SGPConfig.max_new_tokens: expected a positive integer, got {self.max_new_tokens!r}")


@runtime_checkable
class LMScorer(Protocol):
    """What SGP needs from a language model (torch here, ONNX on the device)."""

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int) -> list[str]:
        """Greedy continuation of each prompt, cut at the first newline and stripped."""
        ...

    def span_logprobs(self, texts: Sequence[str], spans: Sequence[Sequence[tuple[int, int]]]) -> list[list[tuple[float, int]]]:
        """For each text and each character span of it: ``(sum of log p(token | prefix), n tokens)``
        over the tokens that start inside the span; one forward pass per text."""
        ...


class TorchLMScorer:
    """:class:`LMScorer` over a Hugging Face causal LM and its fast tokenizer (one that returns
    character offsets). Batches of ``batch_size`` texts; texts longer than ``max_length`` tokens
    lose tokens from the left (the start of the paragraph), so the question and answer stay."""

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 8, max_length: int | None = None,
                 device: str | None = None):
        import torch

        if not getattr(tokenizer, "is_fast", False):
            raise EdgekdValueError("TorchLMScorer: needs a fast tokenizer (tokenizer.json) for character offsets")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise EdgekdValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.device = torch.device(device) if device else next(model.parameters()).device
        limit = getattr(model.config, "max_position_embeddings", None) or 2048
        self.max_length = int(min(max_length or limit, limit))
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.pad_id = tokenizer.pad_token_id

    def _encode(self, texts: Sequence[str], side: str, room: int = 0, offsets: bool = False):
        tok = self.tokenizer
        old = tok.padding_side, tok.truncation_side
        tok.padding_side, tok.truncation_side = side, "left"
        try:
            return tok(list(texts), return_tensors="pt", padding=True, truncation=True,
                       max_length=self.max_length - room, return_offsets_mapping=offsets,
                       return_special_tokens_mask=offsets)
        finally:
            tok.padding_side, tok.truncation_side = old

    def span_logprobs(self, texts: Sequence[str], spans: Sequence[Sequence[tuple[int, int]]]) -> list[list[tuple[float, int]]]:
        import torch

        texts = list(texts)
        if len(texts) != len(spans):
            raise EdgekdValueError(f"span_logprobs: {len(texts)} texts for {len(spans)} span lists")
        out: list[list[tuple[float, int]]] = []
        for s in range(0, len(texts), self.batch_size):
            enc = self._encode(texts[s:s + self.batch_size], "right", offsets=True)
            ids = enc["input_ids"].to(self.device)
            mask = enc["attention_mask"].to(self.device)
            with torch.no_grad():
                logits = self.model(input_ids=ids, attention_mask=mask).logits
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            tok_lp = logp.gather(-1, ids[:, 1:, None])[..., 0].cpu().double().numpy()  # log p(token t | < t), t >= 1
            starts = enc["offset_mapping"][:, :, 0].numpy()
            ends = enc["offset_mapping"][:, :, 1].numpy()
            real = (enc["attention_mask"].numpy() == 1) & (enc["special_tokens_mask"].numpy() == 0) & (ends > starts)
            for r, row_spans in enumerate(spans[s:s + self.batch_size]):
                row = []
                for a, b in row_spans:
                    sel = real[r] & (starts[r] >= a) & (starts[r] < b)
                    sel[0] = False  # the first token has no prefix to be predicted from
                    idx = np.nonzero(sel)[0]
                    row.append((float(tok_lp[r, idx - 1].sum()), int(idx.size)))
                out.append(row)
        return out

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int = 32) -> list[str]:
        import torch

        prompts = list(prompts)
        out: list[str] = []
        for s in range(0, len(prompts), self.batch_size):
            enc = self._encode(prompts[s:s + self.batch_size], "left", room=max_new_tokens)
            ids = enc["input_ids"].to(self.device)
            mask = enc["attention_mask"].to(self.device)
            with torch.no_grad():
                gen = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                          do_sample=False, pad_token_id=self.pad_id)
            for row in gen[:, ids.shape[1]:]:
                text = self.tokenizer.decode(row, skip_special_tokens=True)
                out.append(text.split("\n", 1)[0].strip())
        return out


@dataclass
class QAResult:
    """One question's outcome: ``answer`` (None when SGP abstained), the paragraph it was
    answered from (None closed-book), the combined ``score`` (SGP) and each candidate's scores."""

    question: str
    answer: str | None
    paragraph_id: str | None = None
    abstained: bool = False
    score: float | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for c in d["candidates"]:
            for k, v in c.items():
                if isinstance(v, float) and not math.isfinite(v):
                    c[k] = None  # JSON has no infinity: an empty answer's log-probability
        return d


def _minmax(x: np.ndarray) -> np.ndarray:
    span = float(x.max() - x.min()) if x.size else 0.0
    return (x - x.min()) / span if span > 0 else np.ones_like(x)


def _mean_lp(total: float, n: int) -> float:
    return total / n if n else float("-inf")


def sgp_select(question: str, candidates: Sequence[tuple[str, float]], texts: Sequence[str], answers: Sequence[str],
               scorer: LMScorer, config: SGPConfig, prompt: PromptFormat = PromptFormat()) -> QAResult:
    """SGP for one question, given its ``candidates`` ``[(id, retriever score)]``, their ``texts``
    and the ``answers`` generated from each (``""`` where only the question term is used)."""
    return _sgp_many([question], [list(candidates)], [list(texts)], [list(answers)], scorer, config, prompt)[0]


def _sgp_many(questions, cands, texts, answers, scorer, config, prompt) -> list[QAResult]:
    flat_text, flat_spans, where = [], [], []
    for qi, q in enumerate(questions):
        for ci, (ctx, ans) in enumerate(zip(texts[qi], answers[qi])):
            text, qspan, aspan = prompt.scored(ctx, q, ans)
            flat_text.append(text)
            flat_spans.append([qspan, aspan])
            where.append((qi, ci))
    lps = scorer.span_logprobs(flat_text, flat_spans) if config.terms and flat_text else [[(0.0, 0)] * 2] * len(flat_text)
    per_q: list[list[tuple[float, float]]] = [[] for _ in questions]
    for (qi, ci), ((qs, qn), (as_, an)) in zip(where, lps):
        per_q[qi].append((_mean_lp(qs, qn), _mean_lp(as_, an)))
    results = []
    for qi, q in enumerate(questions):
        r = np.array([s for _, s in cands[qi]], dtype=np.float64)
        rn = _minmax(r)
        rows = []
        for ci, ((pid, raw), (lq, la)) in enumerate(zip(cands[qi], per_q[qi])):
            terms = [v for t, v in (("question", lq), ("answer", la)) if t in config.terms]
            lm = float(np.mean(terms)) if terms else 0.0
            combined = config.weight * float(rn[ci]) + (1 - config.weight) * lm
            rows.append({"id": pid, "retrieval": float(raw), "retrieval_norm": float(rn[ci]),
                         "lm_question": lq, "lm_answer": la if "answer" in config.terms else None,
                         "lm": lm, "combined": combined, "answer": answers[qi][ci]})
        best = max(range(len(rows)), key=lambda i: (rows[i]["combined"], -i))
        score = rows[best]["combined"]
        abstain = config.threshold is not None and not score >= config.threshold
        results.append(QAResult(q, None if abstain else rows[best]["answer"], rows[best]["id"], abstain, score, rows))
    return results


def _progress(it, total, desc, show):
    if not show:
        return it
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return it
    return tqdm(it, total=total, desc=desc, leave=False)


def answer_questions(mode: str, questions: Sequence[str], scorer: LMScorer, *, index: Any = None,
                     contexts: Sequence[str] | None = None, context_ids: Sequence[str] | None = None,
                     config: SGPConfig | None = None, prompt: PromptFormat = PromptFormat(),
                     chunk: int = 32, progress: bool = False) -> list[QAResult]:
    """Answer ``questions`` in ``mode``:

    - ``"closed-book"``: from the question alone;
    - ``"top1"``: from the retriever's first paragraph (``index``: a
      :class:`~edgekd.runtime.retrieval.RetrievalIndex` holding the paragraph texts);
    - ``"oracle"``: from the gold paragraph of each question (``contexts``, optional ``context_ids``);
    - ``"sgp"``: the Selective Generative Paradigm (``index`` and ``config``).
    """
    if mode not in MODES:
        raise EdgekdValueError(f"mode: expected one of {MODES}, got {mode!r}")
    questions = list(questions)
    if not questions:
        raise EdgekdValueError("questions: expected at least one question")
    for k, q in enumerate(questions):
        if not isinstance(q, str) or not q.strip():
            raise EdgekdValueError(f"questions[{k}]: expected a non-empty string, got {q!r:.60}")
    config = config or SGPConfig()
    if mode in ("top1", "sgp"):
        if index is None or not hasattr(index, "search_batch"):
            raise EdgekdValueError(f"mode {mode}: needs a retrieval index (edgekd qa index)")
        if getattr(index, "texts", None) is None:
            raise EdgekdValueError(f"mode {mode}: the index holds no paragraph texts; rebuild it with them")
    if mode == "oracle":
        if contexts is None or len(contexts) != len(questions):
            raise EdgekdValueError("mode oracle: needs one gold context per question (contexts=)")
    out: list[QAResult] = []
    starts = range(0, len(questions), chunk)
    for s in _progress(starts, len(starts), f"qa {mode}", progress):
        qs = questions[s:s + chunk]
        if mode == "closed-book":
            answers = scorer.generate([prompt.prompt(None, q) for q in qs], max_new_tokens=config.max_new_tokens)
            out += [QAResult(q, a) for q, a in zip(qs, answers)]
        elif mode == "oracle":
            ctx = list(contexts[s:s + chunk])
            ids = list(context_ids[s:s + chunk]) if context_ids is not None else [None] * len(qs)
            answers = scorer.generate([prompt.prompt(c, q) for c, q in zip(ctx, qs)], max_new_tokens=config.max_new_tokens)
            out += [QAResult(q, a, i) for q, a, i in zip(qs, answers, ids)]
        elif mode == "top1":
            hits = index.search_batch(qs, k=1)
            ctx = [index.text_of(h[0][0]) for h in hits]
            answers = scorer.generate([prompt.prompt(c, q) for c, q in zip(ctx, qs)], max_new_tokens=config.max_new_tokens)
            out += [QAResult(q, a, h[0][0], score=h[0][1], candidates=[{"id": h[0][0], "retrieval": h[0][1]}])
                    for q, a, h in zip(qs, answers, hits)]
        else:
            out += _sgp_chunk(qs, index, scorer, config, prompt)
    return out


def _sgp_chunk(qs, index, scorer, config, prompt) -> list[QAResult]:
    hits = index.search_batch(qs, k=config.k)
    texts = [[index.text_of(pid) for pid, _ in h] for h in hits]
    if "answer" in config.terms:
        flat = [prompt.prompt(c, q) for q, cs in zip(qs, texts) for c in cs]
        gen = iter(scorer.generate(flat, max_new_tokens=config.max_new_tokens))
        answers = [[next(gen) for _ in cs] for cs in texts]
        return _sgp_many(qs, hits, texts, answers, scorer, config, prompt)
    # question term only: pick the paragraph first, then answer from the chosen one alone
    results = _sgp_many(qs, hits, texts, [[""] * len(cs) for cs in texts], scorer, config, prompt)
    todo = [i for i, r in enumerate(results) if not r.abstained]
    gen = scorer.generate([prompt.prompt(index.text_of(results[i].paragraph_id), qs[i]) for i in todo],
                          max_new_tokens=config.max_new_tokens) if todo else []
    for i, a in zip(todo, gen):
        results[i].answer = a
        for c in results[i].candidates:
            if c["id"] == results[i].paragraph_id:
                c["answer"] = a
    return results
