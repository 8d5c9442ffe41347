"""Synthetic (context, question, answer) triplets from paragraphs: prompt, parse, filter, cache, save.

>>> from edgekd.qa.synth import SynthConfig, generate_triplets, save_dataset     # doctest: +SKIP
>>> from edgekd.qa.generators import OpenAICompatible
>>> gen = OpenAICompatible("http://127.0.0.1:8000/v1", "smollm2", api="chat")
>>> triplets, report = generate_triplets(paragraphs, gen, SynthConfig(per_context=2), "cache/")
>>> save_dataset(triplets, report, "synth/")   # triplets.jsonl, dataset/ (HF datasets), README.md

Prompt templates are data (:class:`PromptTemplate`: a name, a kind and a text, recorded in every
output): ``chat`` asks an instruct model for ``{n}`` question/answer pairs in one message;
``chat-example`` adds a worked example to it; ``fewshot`` is a completion prompt for base models
(two worked examples, then the paragraph and ``Question:``; the model continues the pattern, one
pair per completion, ``{n}`` sampled completions).

Each model output is parsed into ``Question: ... / Answer: ...`` pairs and the candidates pass, in
order, the filters below; the report counts what each one drops:

``parse``        completions from which no pair could be read
``length``       question of ``min/max_question_words`` words, answer of ``min/max_answer_words``,
                 the answer not the question itself
``grounded``     the answer is a span of the context (case-insensitive; ``answer_start`` is set and
                 the answer takes the context's spelling), else at least ``min_overlap`` of its
                 normalised tokens occur in the context (``answer_start = -1``)
``dedup``        the same normalised question twice for one context
``specificity``  (with a ``retrieve(question, k) -> [paragraph_id, ...]`` callable) the question's own
                 paragraph is in the retriever's top ``specificity_k``: a question that any
                 paragraph could answer is not specific
``round_trip``   (with a ``read(questions, contexts) -> answers`` callable) a reader answering the
                 question from the context agrees with the generated answer by token F1 >=
                 ``round_trip_f1``

Raw completions are cached (JSONL, one file per generator fingerprint + template + decoding
settings; one record per (context, sample), appended per batch with a single write + fsync), so a
killed run resumes without regenerating and re-filtering is free.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import string
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from edgekd.errors import EdgekdValueError
from edgekd.qa.generators import Completion, Generator
from edgekd.qa.types import Paragraph, Triplet, write_jsonl

__all__ = ["PromptTemplate", "TEMPLATES", "SynthConfig", "parse_pairs", "normalize_text", "token_f1",
           "ground_answer", "generate_triplets", "save_dataset", "bm25_retriever", "generator_reader",
           "FILTERS"]

Retriever = Callable[[str, int], Sequence[str]]
Reader = Callable[[list[str], list[str]], list[str]]
FILTERS = ("parse", "length", "grounded", "dedup", "specificity", "round_trip")


# --------------------------------------------------------------------------------------------
# templates


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt as data. ``kind``: ``"chat"`` (rendered as one user message, plus ``system`` when
    set) or ``"completion"`` (raw text). ``text`` holds ``{context}`` and, for templates that ask
    for several pairs at once, ``{n}``. ``response_prefix`` is what the prompt ends with and the
    completion continues (``"Question:"``): the parser puts it back in front of the completion.
    ``stop``: stop strings for the generator."""

    name: str
    kind: str
    text: str
    system: str = ""
    response_prefix: str = ""
    stop: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in ("chat", "completion"):
            raise EdgekdValueError(f"template {self.name!r}: kind must be 'chat' or 'completion', got {self.kind!r}")
        if "{context}" not in self.text:
            raise EdgekdValueError(f"template {self.name!r}: text must contain {{context}}")

    @property
    def multi(self) -> bool:
        """True when one completion is asked for ``{n}`` pairs."""
        return "{n}" in self.text

    def render(self, context: str, n: int = 1):
        text = self.text.replace("{context}", context.strip()).replace("{n}", str(n))
        if self.kind == "completion":
            return text
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return msgs + [{"role": "user", "content": text}]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "stop": list(self.stop)}


_CHAT = PromptTemplate(
    name="chat-v1", kind="chat",
    text=("Read the paragraph from a privacy policy and write {n} different questions that it answers. "
          "Each answer must be a short phrase copied word for word from the paragraph.\n\n"
          "Paragraph: {context}\n\n"
          "Reply in exactly this format, nothing else:\n"
          "Question: <question>\nAnswer: <short phrase from the paragraph>"),
)

_FEWSHOT = PromptTemplate(
    name="fewshot-v1", kind="completion",
    text=("Questions about privacy policy paragraphs. Each answer is a short phrase copied from the paragraph.\n\n"
          "Paragraph: We collect your name, email address and phone number when you create an account.\n"
          "Question: What information is collected when you create an account?\n"
          "Answer: your name, email address and phone number\n\n"
          "Paragraph: We keep your payment records for seven years to comply with tax laws.\n"
          "Question: How long are payment records kept?\n"
          "Answer: seven years\n\n"
          "Paragraph: {context}\n"
          "Question:"),
    response_prefix="Question:",
    stop=("\n\n", "\nParagraph:", "Paragraph:"),
)

_CHAT_EXAMPLE = PromptTemplate(
    name="chat-example-v1", kind="chat",
    text=("Write {n} questions about a privacy policy paragraph. Each answer is a short phrase copied word for "
          "word from the paragraph, never the question itself.\n\n"
          "Example paragraph: We keep your payment records for seven years to comply with tax laws.\n"
          "Question: How long are payment records kept?\n"
          "Answer: seven years\n"
          "Question: Why are payment records kept?\n"
          "Answer: to comply with tax laws\n\n"
          "Paragraph: {context}"),
)

TEMPLATES: dict[str, PromptTemplate] = {"chat": _CHAT, "chat-example": _CHAT_EXAMPLE, "fewshot": _FEWSHOT}


# --------------------------------------------------------------------------------------------
# text helpers


def normalize_text(s: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def token_f1(prediction: str, truth: str) -> float:
    """SQuAD token F1 of two answers (after :func:`normalize_text`); 1.0 when both are empty."""
    p, t = normalize_text(prediction).split(), normalize_text(truth).split()
    if not p or not t:
        return float(p == t)
    common = Counter(p) & Counter(t)
    same = sum(common.values())
    if same == 0:
        return 0.0
    prec, rec = same / len(p), same / len(t)
    return 2 * prec * rec / (prec + rec)


_LABEL_Q = r"(?:question|q)\s*\d*\s*[:.)\-]"
_LABEL_A = r"(?:answer|a)\s*\d*\s*[:.)\-]"
_PAIR = re.compile(
    rf"(?:^|\n)[ \t]*(?:\d+[.)]\s*)?{_LABEL_Q}[ \t]*(?P<q>[^\n]*?)[ \t]*(?:(?:[ \t]*\n)+[ \t]*|[ \t]+)(?:\d+[.)]\s*)?"
    rf"{_LABEL_A}[ \t]*(?P<a>[^\n]*)",
    re.IGNORECASE)


def _clean(s: str) -> str:
    s = s.strip().strip("*_`").strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
        s = s[1:-1].strip()
    return s


def parse_pairs(text: str, response_prefix: str = "") -> list[tuple[str, str]]:
    """``(question, answer)`` pairs in a model output (``Question: ... Answer: ...``, also ``Q1:``/
    ``A1:``, numbered, markdown bold, on one line or two); ``response_prefix`` is put in front
    first. Pairs with an empty question or answer are left out."""
    if response_prefix:
        text = response_prefix + text
    text = text.replace("**", "").replace("__", "")
    pairs = []
    for m in _PAIR.finditer(text):
        q, a = _clean(m.group("q")), _clean(m.group("a"))
        if q and a:
            pairs.append((q, a))
    return pairs


def ground_answer(answer: str, context: str, min_overlap: float) -> tuple[str, int, float] | None:
    """``(answer as in the context, answer_start, overlap)`` when ``answer`` is a span of
    ``context`` (whole words, case-insensitive; trailing punctuation ignored; overlap 1.0), else ``(answer, -1,
    overlap)`` when the fraction of its normalised tokens found in the context is at least
    ``min_overlap``, else None."""
    a = answer.strip().rstrip(".;,!").strip()
    if a:
        # whole words only: "no" is not a span of "not"
        m = re.search(r"(?<!\w)" + re.escape(a) + r"(?!\w)", context, flags=re.IGNORECASE)
        if m:
            return m.group(0), m.start(), 1.0
    toks = normalize_text(answer).split()
    if not toks:
        return None
    ctx = set(normalize_text(context).split())
    overlap = sum(t in ctx for t in toks) / len(toks)
    return (answer.strip(), -1, overlap) if overlap >= min_overlap else None


# --------------------------------------------------------------------------------------------
# configuration


@dataclass
class SynthConfig:
    """Settings of :func:`generate_triplets` (all recorded in the report)."""

    template: str = field(default="chat", metadata={"help": "prompt template: chat (instruct models) or "
                                                             "fewshot (base models, completion API)",
                                                     "choices": ("chat", "chat-example", "fewshot")})
    per_context: int = field(default=2, metadata={"help": "question/answer pairs asked per paragraph"})
    max_new_tokens: int = field(default=128, metadata={"help": "tokens per completion"})
    temperature: float = field(default=0.0, metadata={"help": "0: greedy; > 0: sampling"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling mass (with temperature > 0)"})
    seed: int = field(default=0, metadata={"help": "random seed of sampling"})
    batch_size: int = field(default=8, metadata={"help": "prompts per generator call (and per cache append)"})
    max_context_words: int = field(default=220, metadata={"help": "paragraphs longer than this are cut"})
    min_question_words: int = field(default=3, metadata={"help": "length filter"})
    max_question_words: int = field(default=40, metadata={"help": "length filter"})
    min_answer_words: int = field(default=1, metadata={"help": "length filter"})
    max_answer_words: int = field(default=30, metadata={"help": "length filter"})
    min_overlap: float = field(default=0.8, metadata={"help": "grounded filter: token overlap of a non-span answer"})
    specificity_k: int = field(default=5, metadata={"help": "specificity filter: own paragraph in the top k"})
    round_trip_f1: float = field(default=0.5, metadata={"help": "round-trip filter: reader F1 threshold"})

    def check(self) -> "SynthConfig":
        if self.template not in TEMPLATES:
            raise EdgekdValueError(f"synth: template must be one of {sorted(TEMPLATES)}, got {self.template!r}")
        for k in ("per_context", "max_new_tokens", "batch_size", "max_context_words", "specificity_k",
                  "min_question_words", "min_answer_words"):
            if getattr(self, k) < 1:
                raise EdgekdValueError(f"synth: {k} must be >= 1, got {getattr(self, k)}")
        if self.max_question_words < self.min_question_words or self.max_answer_words < self.min_answer_words:
            raise EdgekdValueError("synth: a max_*_words limit is below its min_*_words")
        if not (0.0 <= self.min_overlap <= 1.0) or not (0.0 <= self.round_trip_f1 <= 1.0):
            raise EdgekdValueError("synth: min_overlap and round_trip_f1 must be in [0, 1]")
        if not self.temperature >= 0:
            raise EdgekdValueError(f"synth: temperature must be >= 0, got {self.temperature}")
        tpl = TEMPLATES[self.template]
        if not tpl.multi and self.per_context > 1 and self.temperature == 0:
            raise EdgekdValueError(f"synth: template {tpl.name!r} makes one pair per completion, so per_context="
                                   f"{self.per_context} needs sampling (temperature > 0, e.g. 0.7); greedy "
                                   "decoding would repeat one completion")
        return self

    @property
    def prompt(self) -> PromptTemplate:
        return TEMPLATES[self.template]

    def generation_settings(self) -> dict[str, Any]:
        """What changes the raw completions (cache key); filter thresholds do not."""
        return {"template": self.prompt.to_json(), "per_context": self.per_context,
                "max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                "top_p": self.top_p if self.temperature > 0 else 1.0, "seed": self.seed,
                "max_context_words": self.max_context_words}


# --------------------------------------------------------------------------------------------
# cache


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class _CompletionCache:
    """``<dir>/<sha256(fingerprint + settings)[:16]>.jsonl``: one line per (context, sample),
    ``{"key", "context_id", "sample", "completion"}``; ``key`` = sha256(context text + sample + the
    file's key). A torn last line (a run killed mid-write) is cut off when the file is opened."""

    def __init__(self, cache_dir: str | Path | None, fingerprint: str, settings: dict):
        self.file_key = _sha({"generator": fingerprint, "settings": settings})
        self.path = Path(cache_dir) / f"{self.file_key[:16]}.jsonl" if cache_dir is not None else None
        self.data: dict[str, Completion] = {}
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            raw = self.path.read_bytes()
            end = raw.rfind(b"\n") + 1
            if end < len(raw):  # torn tail: keep the complete lines only
                with open(self.path, "r+b") as f:
                    f.truncate(end)
                raw = raw[:end]
            for line in raw.decode("utf-8").splitlines():
                if line.strip():
                    try:
                        d = json.loads(line)
                        self.data[d["key"]] = Completion.from_json(d["completion"])
                    except (ValueError, KeyError, TypeError):
                        raise EdgekdValueError(f"{self.path}: corrupt cache line; delete the file to regenerate") \
                            from None
        else:
            meta = self.path.with_suffix(".json")
            tmp = meta.with_name(meta.name + ".tmp")
            tmp.write_text(json.dumps({"generator": fingerprint, "settings": settings}, indent=1))
            os.replace(tmp, meta)

    def key(self, context: str, sample: int) -> str:
        return _sha({"file": self.file_key, "context": context, "sample": sample})

    def append(self, rows: list[tuple[str, str, int, Completion]]) -> None:
        for key, _, _, c in rows:
            self.data[key] = c
        if self.path is None or not rows:
            return
        blob = "".join(json.dumps({"key": k, "context_id": cid, "sample": s, "completion": c.to_json()},
                                  ensure_ascii=False) + "\n" for k, cid, s, c in rows).encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, blob)
            os.fsync(fd)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------------------------
# the pipeline


def _cut_words(text: str, n: int) -> str:
    words = text.split()
    return text if len(words) <= n else " ".join(words[:n])


def generate_triplets(paragraphs: Sequence[Paragraph], generator: Generator, config: SynthConfig | None = None,
                      cache_dir: str | Path | None = None, progress: bool = True, *,
                      retrieve: Retriever | None = None, read: Reader | None = None
                      ) -> tuple[list[Triplet], dict[str, Any]]:
    """Generate, parse and filter triplets for ``paragraphs`` (see the module doc).

    ``retrieve`` turns on the specificity filter, ``read`` the round-trip filter. Returns the kept
    triplets (``source="synthetic"``, ``context`` the full paragraph text) and a report: counts per
    filter, the generator's name/fingerprint/usage, the template and the settings."""
    config = (config or SynthConfig()).check()
    paragraphs = list(paragraphs)
    if not paragraphs:
        raise EdgekdValueError("synth: no paragraphs")
    ids = [p.id for p in paragraphs]
    if len(set(ids)) != len(ids):
        raise EdgekdValueError("synth: paragraph ids are not unique")
    tpl = config.prompt
    settings = config.generation_settings()
    cache = _CompletionCache(cache_dir, generator.fingerprint, settings)

    # (paragraph, sample index, prompt); a multi template asks for per_context pairs in one prompt
    samples = 1 if tpl.multi else config.per_context
    jobs = []
    for p in paragraphs:
        if not p.text.strip():
            raise EdgekdValueError(f"synth: paragraph {p.id!r} is empty")
        ctx = _cut_words(p.text, config.max_context_words)
        for s in range(samples):
            jobs.append((p, s, cache.key(ctx, s), tpl.render(ctx, config.per_context)))
    todo = [j for j in jobs if j[2] not in cache.data]
    cached = len(jobs) - len(todo)

    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"generating ({generator.name})", unit="prompt")
    t0 = time.perf_counter()
    for b0 in range(0, len(todo), config.batch_size):
        batch = todo[b0:b0 + config.batch_size]
        # one call per sample index: samples of one paragraph get different seeds
        by_sample: dict[int, list] = {}
        for j in batch:
            by_sample.setdefault(j[1], []).append(j)
        rows = []
        for s, js in sorted(by_sample.items()):
            outs = generator.generate([j[3] for j in js], max_new_tokens=config.max_new_tokens,
                                      temperature=config.temperature, top_p=config.top_p,
                                      stop=list(tpl.stop), seed=config.seed + 1000 * s)
            if len(outs) != len(js):
                raise EdgekdValueError(f"synth: {generator.name} returned {len(outs)} completions for {len(js)} "
                                       "prompts")
            rows += [(j[2], j[0].id, j[1], c) for j, c in zip(js, outs)]
        cache.append(rows)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    gen_seconds = time.perf_counter() - t0
    usage = generator.usage.to_json()  # before a round-trip reader that may share the generator

    # ------------------------------------------------------------------ parse
    counts: dict[str, dict[str, int]] = {}
    cands: list[dict[str, Any]] = []
    no_pair = 0
    finish = Counter()
    new_tokens = 0
    for p, s, key, _ in jobs:
        c = cache.data[key]
        finish[c.finish_reason] += 1
        new_tokens += max(c.completion_tokens, 0)
        pairs = parse_pairs(c.text, tpl.response_prefix)
        if not tpl.multi:
            pairs = pairs[:1]
        if not pairs:
            no_pair += 1
        for k, (q, a) in enumerate(pairs):
            cands.append({"p": p, "q": q, "a": a, "sample": s, "pair": k})
    counts["parse"] = {"in": len(jobs), "dropped": no_pair, "out": len(cands), "unit": "completions in, pairs out"}

    def step(name: str, keep: Callable[[dict], bool], items: list[dict]) -> list[dict]:
        out = [c for c in items if keep(c)]
        counts[name] = {"in": len(items), "dropped": len(items) - len(out), "out": len(out)}
        return out

    # ------------------------------------------------------------------ length
    def length_ok(c):
        nq, na = len(c["q"].split()), len(c["a"].split())
        return (config.min_question_words <= nq <= config.max_question_words
                and config.min_answer_words <= na <= config.max_answer_words
                and normalize_text(c["q"]) != normalize_text(c["a"]))

    cands = step("length", length_ok, cands)

    # ------------------------------------------------------------------ grounded
    def grounded(c):
        g = ground_answer(c["a"], c["p"].text, config.min_overlap)
        if g is None:
            return False
        c["a"], c["start"], c["overlap"] = g
        return True

    cands = step("grounded", grounded, cands)

    # ------------------------------------------------------------------ dedup
    seen: set[tuple[str, str]] = set()

    def first(c):
        k = (c["p"].id, normalize_text(c["q"]))
        if k in seen:
            return False
        seen.add(k)
        return True

    cands = step("dedup", first, cands)

    # ------------------------------------------------------------------ specificity
    if retrieve is not None:
        def specific(c):
            got = [str(x) for x in retrieve(c["q"], config.specificity_k)][:config.specificity_k]
            c["rank"] = got.index(c["p"].id) + 1 if c["p"].id in got else -1
            return c["rank"] > 0

        cands = step("specificity", specific, cands)
    else:
        counts["specificity"] = {"in": len(cands), "dropped": 0, "out": len(cands), "skipped": 1}

    # ------------------------------------------------------------------ round trip
    if read is not None and cands:
        preds = list(read([c["q"] for c in cands], [c["p"].text for c in cands]))
        if len(preds) != len(cands):
            raise EdgekdValueError(f"synth: the reader returned {len(preds)} answers for {len(cands)} questions")
        for c, pr in zip(cands, preds):
            c["rt_answer"], c["rt_f1"] = str(pr), token_f1(str(pr), c["a"])
        cands = step("round_trip", lambda c: c["rt_f1"] >= config.round_trip_f1, cands)
    else:
        counts["round_trip"] = {"in": len(cands), "dropped": 0, "out": len(cands), "skipped": 1}

    triplets = []
    for c in cands:
        meta = {"generator": generator.name, "template": tpl.name, "sample": c["sample"], "pair": c["pair"],
                "overlap": round(c["overlap"], 4)}
        if "rank" in c:
            meta["retrieval_rank"] = c["rank"]
        if "rt_f1" in c:
            meta["round_trip_answer"], meta["round_trip_f1"] = c["rt_answer"], round(c["rt_f1"], 4)
        tid = "syn-" + hashlib.sha256(f"{c['p'].id}\n{c['q']}".encode()).hexdigest()[:16]
        triplets.append(Triplet(c["p"].text, c["q"], c["a"], c["p"].id, "synthetic", c["start"], tid, meta))

    report = {
        "paragraphs": len(paragraphs),
        "completions": len(jobs),
        "completions_from_cache": cached,
        "completions_generated": len(todo),
        "finish_reasons": dict(finish),
        "completion_tokens_total": new_tokens,
        "generation_seconds": round(gen_seconds, 3),
        "kept": len(triplets),
        "kept_per_paragraph": round(len(triplets) / len(paragraphs), 3),
        "exact_span": sum(t.answer_start >= 0 for t in triplets),
        "filters": counts,
        "generator": {"name": generator.name, "fingerprint": generator.fingerprint, "usage": usage,
                      "usage_with_reader": generator.usage.to_json() if read is not None else None},
        "template": tpl.to_json(),
        "settings": asdict(config),
        "cache": str(cache.path) if cache.path is not None else None,
    }
    return triplets, report


# --------------------------------------------------------------------------------------------
# optional filter callables


def bm25_retriever(paragraphs: Sequence[Paragraph]) -> Retriever:
    """A BM25 ``retrieve(question, k) -> [paragraph_id, ...]`` over ``paragraphs`` (the ``bm25s``
    package, English stop words, no stemming) for the specificity filter."""
    try:
        import bm25s
    except ImportError:
        raise EdgekdValueError("the specificity filter's BM25 needs the bm25s package: pip install bm25s") from None
    paragraphs = list(paragraphs)
    ids = [p.id for p in paragraphs]
    index = bm25s.BM25()
    index.index(bm25s.tokenize([p.text for p in paragraphs], stopwords="en", show_progress=False),
                show_progress=False)
    vocab = set(index.vocab_dict)

    def retrieve(question: str, k: int) -> list[str]:
        k = min(int(k), len(ids))
        q = [t for t in bm25s.tokenize([question], stopwords="en", return_ids=False, show_progress=False)[0]
             if t in vocab]
        if not q:  # nothing but stop words and words no paragraph has
            return []
        docs, _ = index.retrieve([q], k=k, show_progress=False)
        return [ids[int(i)] for i in docs[0]]

    return retrieve


READER_TEMPLATE = ("Answer the question with a short phrase copied word for word from the paragraph.\n\n"
                   "Paragraph: {context}\n\nQuestion: {question}\nAnswer:")


def generator_reader(generator: Generator, *, max_new_tokens: int = 32, chat: bool = True) -> Reader:
    """A round-trip reader that asks ``generator`` (greedy) to answer each question from its
    paragraph; the first line of the completion is the answer."""

    def read(questions: list[str], contexts: list[str]) -> list[str]:
        prompts = []
        for q, c in zip(questions, contexts):
            text = READER_TEMPLATE.format(context=c.strip(), question=q.strip())
            prompts.append([{"role": "user", "content": text}] if chat else text)
        outs = generator.generate(prompts, max_new_tokens=max_new_tokens, temperature=0.0, stop=["\n"])
        ans = []
        for o in outs:
            t = o.text.strip()
            t = re.sub(r"^(answer\s*[:.-]\s*)", "", t, flags=re.IGNORECASE)
            ans.append(t.split("\n")[0].strip())
        return ans

    return read


# --------------------------------------------------------------------------------------------
# output


def _card(triplets: list[Triplet], report: dict[str, Any]) -> str:
    f = report["filters"]
    rows = "\n".join(f"| {name} | {f[name]['in']} | {f[name]['dropped']} | {f[name]['out']} |"
                     + (" skipped |" if f[name].get("skipped") else " |")
                     for name in FILTERS if name in f)
    g = report["generator"]
    u = g["usage"]
    tpl = report["template"]
    settings = json.dumps(report["settings"], indent=1)
    example = ""
    if triplets:
        t = triplets[0]
        ctx = t.context[:300] + ("..." if len(t.context) > 300 else "")
        example = (f"\n## Example\n\n- context ({t.context_id}): {ctx}\n"
                   f"- question: {t.question}\n- answer: {t.answer} (answer_start {t.answer_start})\n")
    return f"""---
pretty_name: edgekd synthetic legal QA triplets
task_categories:
- question-answering
language:
- en
---
# Synthetic (context, question, answer) triplets

Generated by `edgekd.qa.synth` from {report['paragraphs']} paragraphs: {report['completions']} completions,
{report['kept']} triplets kept ({report['kept_per_paragraph']} per paragraph; {report['exact_span']} answers are exact
spans of their context, the others pass the token-overlap test).

Files: `triplets.jsonl` (one `edgekd.qa.types.Triplet` a line), `dataset/` (`datasets.load_from_disk`;
`meta` is a JSON string), `report.json`.

## Filters (in order)

| filter | in | dropped | out | |
|---|---:|---:|---:|---|
{rows}

(`parse`: completions in, question/answer pairs out.)

## Generator

- name: {g['name']}
- fingerprint: `{g['fingerprint']}`
- requests {u['requests']}, prompt tokens {u['prompt_tokens']}, completion tokens {u['completion_tokens']},
  {u['seconds']} s generating ({u['completion_tokens_per_second']} completion tokens/s), retries {u['retries']}
- finish reasons: {report['finish_reasons']}
- completions from cache: {report['completions_from_cache']}

## Prompt template `{tpl['name']}` ({tpl['kind']})

```
{tpl['text']}
```

## Settings

```json
{settings}
```
{example}"""


def save_dataset(triplets: Sequence[Triplet], report: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``triplets.jsonl``, ``dataset/`` (a Hugging Face ``datasets`` directory), ``report.json``
    and ``README.md`` (the dataset card: counts per filter, generator, prompt, settings) under
    ``out_dir``; returns ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    triplets = list(triplets)
    write_jsonl(out / "triplets.jsonl", triplets)
    try:
        import datasets
    except ImportError:
        raise EdgekdValueError("save_dataset needs the datasets package: pip install datasets") from None
    rows = [{**t.to_json(), "meta": json.dumps(t.meta, ensure_ascii=False, sort_keys=True)} for t in triplets]
    cols = ("context", "question", "answer", "context_id", "source", "answer_start", "id", "meta")
    features = datasets.Features({k: datasets.Value("int64" if k == "answer_start" else "string") for k in cols})
    # columns, not rows: an empty run keeps its schema (from_list([]) has no columns)
    ds = datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in cols}, features=features)
    target = out / "dataset"
    if target.exists():
        import shutil

        shutil.rmtree(target)
    # one shard: an empty dataset would get 0 shards, which load_from_disk fails on
    ds.save_to_disk(str(target), num_shards=1)
    tmp = out / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False))
    os.replace(tmp, out / "report.json")
    (out / "README.md").write_text(_card(triplets, report), encoding="utf-8")
    return out
