"""The Selective Generative Paradigm (SGP) of Ace-Attorney (Italiani et al. 2025), RECONSTRUCTED,
and question answering from a generative bundle's own documents on the device. Torch-free.

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

The scorer is an interface (:class:`LMScorer`: ``generate`` and ``span_logprobs``): the torch
causal LM (:class:`edgekd.qa.sgp.TorchLMScorer`, SDK) and the ONNX decoder of a generative bundle
(:class:`OnnxLMScorer`, here) plug in alike.

**Answering from a bundle.** A generative bundle compiled with ``edgekd compile-lm --retrieval
INDEX_DIR`` holds a retrieval index (:mod:`edgekd.runtime.retrieval`, with its paragraph texts)
under ``retrieval/`` and its SGP settings in ``manifest["retrieval"]["sgp"]``
(:data:`SGP_SETTING_KEYS`: ``k``, ``weight``, ``threshold``, ``terms``, ``max_new_tokens``,
``prompt`` = ``"plain"`` (:class:`PromptFormat`) or ``"chat"`` (the bundle's chat template: a
system line, then one user turn ``"Context: ...\\nQuestion: ..."``, the format of
:func:`edgekd.qa.students.qa_prompt`), ``system``). :class:`BundleQA` (or
``GenerativeBundle.answer``, ``edgekd answer BUNDLE "question"``) loads the index from the
bundle's verified files and answers with :func:`answer_questions` over an :class:`OnnxLMScorer`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from edgekd.errors import BundleError, EdgekdValueError

if TYPE_CHECKING:  # pragma: no cover
    from edgekd.runtime.generative import GenerativeBundle

__all__ = ["PromptFormat", "RenderedPromptFormat", "SGPConfig", "LMScorer", "OnnxLMScorer", "QAResult", "BundleQA",
           "MODES", "TERMS", "BUNDLE_MODES", "PROMPT_STYLES", "QA_SYSTEM", "SGP_SETTING_KEYS", "sgp_select",
           "answer_questions", "sgp_settings", "chat_prompt_format"]

MODES = ("closed-book", "top1", "oracle", "sgp")
TERMS = ("question", "answer")
BUNDLE_MODES = ("sgp", "top1", "closed-book")  # a bundle has no gold paragraph: no oracle
PROMPT_STYLES = ("plain", "chat")
#: the system line of the QA students' chat prompts (:func:`edgekd.qa.students.qa_prompt`)
QA_SYSTEM = "Answer the question with the exact words of the context: a short span, nothing else."


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
        if not isinstance(self.terms, (list, tuple)):
            raise EdgekdValueError(f"SGPConfig.terms: expected distinct items of {TERMS}, got {self.terms!r:.80}")
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
    """What SGP needs from a language model (torch on the host, ONNX on the device)."""

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int) -> list[str]:
        """Greedy continuation of each prompt, cut at the first newline and stripped."""
        ...

    def span_logprobs(self, texts: Sequence[str], spans: Sequence[Sequence[tuple[int, int]]]) -> list[list[tuple[float, int]]]:
        """For each text and each character span of it: ``(sum of log p(token | prefix), n tokens)``
        over the tokens that start inside the span; one forward pass per text."""
        ...


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
    """``it`` wrapped by ``show``: a callable ``(iterable, total, desc) -> iterable`` (a progress
    bar, e.g. tqdm's), True (one ``desc: k/total`` line on stderr, rewritten) or False."""
    if callable(show):
        return show(it, total, desc)
    if not show:
        return it

    def counted():
        import sys

        for k, x in enumerate(it, 1):
            yield x
            print(f"\r{desc}: {k}/{total}", end="\n" if k == total else "", file=sys.stderr, flush=True)

    return counted()


def answer_questions(mode: str, questions: Sequence[str], scorer: LMScorer, *, index: Any = None,
                     contexts: Sequence[str] | None = None, context_ids: Sequence[str] | None = None,
                     config: SGPConfig | None = None, prompt: PromptFormat = PromptFormat(),
                     chunk: int = 32, progress: Any = False) -> list[QAResult]:
    """Answer ``questions`` in ``mode`` (``chunk`` questions at a time; ``progress``: False, True
    or a wrapper ``(iterable, total, desc) -> iterable`` such as a progress bar):

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


# ------------------------------------------------------------------------------ the ONNX scorer
def _check_positive(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise EdgekdValueError(f"{name}: expected a positive integer, got {v!r}")
    return v


class OnnxLMScorer:
    """:class:`LMScorer` over a :class:`~edgekd.runtime.generative.GenerativeBundle` (engine
    ``ort``), the torch-free twin of :class:`edgekd.qa.sgp.TorchLMScorer`:

    - ``generate``: greedy, ``batch_size`` prompts per decoding batch, each stopped at its first
      newline (the text before it, stripped); a prompt that does not fit with ``max_new_tokens``
      keeps its last tokens (the question and the answer prefix stay);
    - ``span_logprobs``: each text tokenized by the bundle's tokenizer with character offsets
      (special tokens added as for a prompt string; longer than the context: tokens cut from the
      left, so the paragraph's start goes), one forward pass for the logits of every position,
      log-softmax in float64 on the rows needed, summed over the tokens (not special, not
      empty) that start inside each span; the first token is never scored (no prefix).
    """

    def __init__(self, bundle: "GenerativeBundle", *, batch_size: int = 8):
        from tokenizers import Tokenizer

        if getattr(bundle, "engine", None) != "ort":
            raise EdgekdValueError("OnnxLMScorer: needs a GenerativeBundle loaded with engine='ort' "
                                   "(span log-probabilities need the full-sequence logits)")
        self.bundle = bundle
        self.batch_size = _check_positive("batch_size", batch_size)
        self.context_length = int(bundle.context_length)
        # a private copy of the bundle's tokenizer that truncates from the left (as TorchLMScorer does)
        self._tok = Tokenizer.from_str(bundle.tokenizer.to_str())
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=self.context_length, direction="left")

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int = 32) -> list[str]:
        prompts = list(prompts)
        _check_positive("max_new_tokens", max_new_tokens)
        out: list[str] = []
        for s in range(0, len(prompts), self.batch_size):
            gens = self.bundle.generate(prompts[s:s + self.batch_size], max_new_tokens=max_new_tokens, stop=("\n",),
                                        truncate=True)
            out += [g.text.split("\n", 1)[0].strip() for g in gens]
        return out

    def span_logprobs(self, texts: Sequence[str], spans: Sequence[Sequence[tuple[int, int]]]) -> list[list[tuple[float, int]]]:
        texts = list(texts)
        if len(texts) != len(spans):
            raise EdgekdValueError(f"span_logprobs: {len(texts)} texts for {len(spans)} span lists")
        out: list[list[tuple[float, int]]] = []
        for text, row_spans in zip(texts, spans):
            if not isinstance(text, str):
                raise EdgekdValueError(f"span_logprobs: expected strings, got {type(text).__name__}")
            enc = self._tok.encode(text, add_special_tokens=True)
            ids = np.asarray(enc.ids, dtype=np.int64)
            offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
            starts, ends = offsets[:, 0], offsets[:, 1]
            real = (np.asarray(enc.special_tokens_mask, dtype=np.int64) == 0) & (ends > starts)
            chosen = []
            for a, b in row_spans:
                sel = real & (starts >= a) & (starts < b)
                if sel.size:
                    sel[0] = False  # the first token has no prefix to be predicted from
                chosen.append(np.nonzero(sel)[0])
            need = np.unique(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
            tok_lp: dict[int, float] = {}
            if need.size:
                logits = self.bundle.logits(ids.tolist())  # (T, V): one forward pass
                rows = logits[need - 1].astype(np.float64)  # the logits that predict each needed token
                top = rows.max(axis=-1, keepdims=True)
                lse = top[:, 0] + np.log(np.exp(rows - top).sum(axis=-1))
                lp = rows[np.arange(need.size), ids[need]] - lse
                tok_lp = dict(zip(need.tolist(), lp.tolist()))
            out.append([(float(sum(tok_lp[i] for i in idx.tolist())), int(idx.size)) for idx in chosen])
        return out


# ------------------------------------------------------------------------------ bundle settings
#: the keys of ``manifest["retrieval"]["sgp"]`` and their defaults (``prompt`` defaults to
#: ``"chat"`` when the bundle has a chat template, else ``"plain"``)
SGP_SETTING_KEYS = {"k": 5, "weight": 0.5, "threshold": None, "terms": ["question", "answer"], "max_new_tokens": 32,
                    "prompt": None, "system": QA_SYSTEM}


def sgp_settings(settings: Mapping[str, Any] | None, *, has_chat_template: bool,
                 what: str = "retrieval.sgp") -> dict[str, Any]:
    """``settings`` completed with the defaults of :data:`SGP_SETTING_KEYS` and checked (unknown
    keys, :class:`SGPConfig`'s rules, the prompt style, a chat style needs the bundle's chat
    template); returns a JSON-ready dict. Raises :class:`~edgekd.errors.EdgekdValueError`."""
    if settings is None:
        settings = {}
    if not isinstance(settings, Mapping):
        raise EdgekdValueError(f"{what}: expected a JSON object of SGP settings, got {type(settings).__name__}")
    unknown = sorted(set(settings) - set(SGP_SETTING_KEYS))
    if unknown:
        raise EdgekdValueError(f"{what}: unknown setting(s) {unknown} (known: {sorted(SGP_SETTING_KEYS)})")
    s = {**SGP_SETTING_KEYS, **{k: v for k, v in settings.items()}}
    if s["prompt"] is None:
        s["prompt"] = "chat" if has_chat_template else "plain"
    if s["prompt"] not in PROMPT_STYLES:
        raise EdgekdValueError(f"{what}.prompt: expected one of {list(PROMPT_STYLES)}, got {s['prompt']!r:.60}")
    if s["prompt"] == "chat" and not has_chat_template:
        raise EdgekdValueError(f"{what}.prompt: 'chat' needs the bundle's chat template, and this model has none; "
                               "use 'plain'")
    if not isinstance(s["system"], str) or len(s["system"]) > 4096:
        raise EdgekdValueError(f"{what}.system: expected a string (at most 4096 characters), got {s['system']!r:.60}")
    try:
        cfg = SGPConfig(k=s["k"], weight=s["weight"], threshold=s["threshold"], terms=s["terms"],
                        max_new_tokens=s["max_new_tokens"])
    except EdgekdValueError as exc:
        raise EdgekdValueError(f"{what}: {str(exc).replace('SGPConfig.', '')}") from None
    return {"k": cfg.k, "weight": cfg.weight, "threshold": cfg.threshold, "terms": list(cfg.terms),
            "max_new_tokens": cfg.max_new_tokens, "prompt": s["prompt"], "system": s["system"]}


def chat_prompt_format(bundle: "GenerativeBundle", system: str = QA_SYSTEM) -> RenderedPromptFormat:
    """The QA students' chat prompt (:func:`edgekd.qa.students.qa_prompt`) through the bundle's
    chat template: a ``system`` message (none when empty), then the user turn ``"Context:
    ...\\nQuestion: ..."`` (closed-book: ``"Question: ..."``), then the assistant header; the
    answer follows it directly."""
    def render(context: str | None, question: str) -> str:
        user = f"Question: {question}" if context is None else f"Context: {context.strip()}\nQuestion: {question}"
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return bundle.render_chat(msgs)

    return RenderedPromptFormat(render, answer_sep="")


class BundleQA:
    """Question answering from a generative bundle's own retrieval index (see the module doc).

    ``mode``: ``"sgp"`` (default), ``"top1"`` or ``"closed-book"`` (no index needed); the bundle's
    recorded SGP settings are the defaults, any of them can be overridden per call. The index is
    loaded on first use from the bundle's ``retrieval/`` folder, whose files are checked against
    the manifest's checksums then (and each against ``index.json``'s)."""

    def __init__(self, bundle: "GenerativeBundle", *, batch_size: int = 8):
        self.bundle = bundle
        r = bundle.manifest.get("retrieval")
        self.has_retrieval = bool(r)
        self.settings = sgp_settings((r or {}).get("sgp"), has_chat_template=bundle.has_chat_template)
        self.config = SGPConfig(k=self.settings["k"], weight=self.settings["weight"],
                                threshold=self.settings["threshold"], terms=tuple(self.settings["terms"]),
                                max_new_tokens=self.settings["max_new_tokens"])
        self.prompt = (chat_prompt_format(bundle, self.settings["system"]) if self.settings["prompt"] == "chat"
                       else PromptFormat())
        self.scorer = OnnxLMScorer(bundle, batch_size=batch_size)
        self._index = None

    @property
    def index(self):
        """The bundle's retrieval index (loaded once)."""
        if self._index is None:
            from edgekd.runtime.retrieval import load_index

            folder = self.bundle.retrieval_dir
            if folder is None:
                raise BundleError(f"bundle: {self.bundle.source} has no retrieval index (its manifest has no "
                                  "'retrieval' section); compile it with `edgekd compile-lm --retrieval INDEX_DIR`, "
                                  "or use mode 'closed-book'")
            try:
                index = load_index(folder, threads=self.bundle.threads)
            except BundleError:
                raise
            except EdgekdValueError as exc:
                raise BundleError(f"bundle: its retrieval index cannot be used: {exc}") from None
            if index.texts is None:
                raise BundleError("bundle: its retrieval index holds no paragraph texts (rebuild the index with "
                                  "them and compile again)")
            self._index = index
        return self._index

    def answer(self, question: str, mode: str = "sgp", *, k: int | None = None, **overrides: Any) -> QAResult:
        """Answer one ``question``; ``k`` and ``overrides`` (``weight``, ``threshold``, ``terms``,
        ``max_new_tokens``) replace the bundle's SGP settings for this call."""
        return self.answer_many([question], mode, k=k, **overrides)[0]

    def answer_many(self, questions: Sequence[str], mode: str = "sgp", *, k: int | None = None,
                    **overrides: Any) -> list[QAResult]:
        if mode not in BUNDLE_MODES:
            raise EdgekdValueError(f"mode: expected one of {list(BUNDLE_MODES)}, got {mode!r:.40}")
        if isinstance(questions, str):
            questions = [questions]
        qs = []
        for q in questions:
            if not isinstance(q, str) or not q.strip():
                raise EdgekdValueError(f"question: expected a non-empty question, got {q!r:.60}")
            qs.append(q.strip())
        bad = sorted(set(overrides) - {"weight", "threshold", "terms", "max_new_tokens"})
        if bad:
            raise EdgekdValueError(f"answer: unknown setting(s) {bad} (k, weight, threshold, terms, max_new_tokens)")
        if k is not None:
            overrides["k"] = k
        config = dataclasses.replace(self.config, **overrides) if overrides else self.config
        index = self.index if mode != "closed-book" else None
        return answer_questions(mode, qs, self.scorer, index=index, config=config, prompt=self.prompt)
