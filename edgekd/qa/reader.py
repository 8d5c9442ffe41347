"""The extractive baseline: a small encoder with a span head (what an edge engineer would pick first).

MiniLM-L6 (asset ``"minilm"``, 22M parameters) or any BERT-like encoder directory, loaded as
``transformers.AutoModelForQuestionAnswering`` (a new ``qa_outputs`` layer gives start / end logits
per token), trained on the same (context, question, answer) triplets as the generative students:

- the answer's character span comes from ``answer_start`` when it matches, else from a search in the
  context (exact, then case-insensitive); a triplet whose answer is not a span of its context is
  dropped and counted (:class:`ReaderResult` ``dropped``).
- ``[CLS] question [SEP] context [SEP]`` windows of ``max_length`` tokens overlapping by
  ``doc_stride`` tokens cover long contexts (the tokenizer's ``return_overflowing_tokens``); the
  fast tokenizer's ``offset_mapping`` maps characters to tokens. A window without the whole answer
  is trained to point at ``[CLS]`` (SQuAD v2 style), as in the Hugging Face QA recipe.
- training is :func:`edgekd.training.train_loop` (AdamW, linear schedule, seeded order); a dev split
  carved from the training triplets (whole paragraphs, :func:`edgekd.qa.students.split_dev`) is
  evaluated every epoch and the weights of the lowest dev loss are kept.
- decoding (:func:`reader_answer`): over every window of a context, the best ``start <= end`` pair
  of context tokens with at most ``max_answer_tokens`` tokens by ``start_logit + end_logit``
  (``n_best`` candidates each); the answer is the context's characters between their offsets.

Saved with ``save_pretrained`` (config.json + model.safetensors) plus the tokenizer and
``reader.json`` (these settings); :func:`load_reader` reads it back.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from edgekd.errors import EdgekdValueError
from edgekd.qa.types import Triplet

__all__ = ["ReaderConfig", "ReaderResult", "locate_answer", "load_reader", "save_reader", "encode_reader",
           "train_reader", "reader_answer"]

_META = "reader.json"


@dataclass
class ReaderConfig:
    """Settings of the extractive reader (training and decoding)."""

    max_length: int = 384  # tokens per window (question + context + specials)
    doc_stride: int = 128  # tokens shared by consecutive windows of a long context
    max_answer_tokens: int = 30  # longest span decoded
    n_best: int = 20  # start / end candidates per window
    epochs: float = 3.0
    lr: float = 5e-5
    batch_size: int = 16
    dev_fraction: float = 0.1
    seed: int = 0
    warmup_ratio: float = 0.1

    def validate(self) -> None:
        for name in ("max_length", "doc_stride", "max_answer_tokens", "n_best", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise EdgekdValueError(f"ReaderConfig.{name} must be an int >= 1, got {v!r}")
        if self.doc_stride >= self.max_length:
            raise EdgekdValueError(f"ReaderConfig.doc_stride ({self.doc_stride}) must be smaller than max_length "
                                   f"({self.max_length})")
        if not (isinstance(self.dev_fraction, (int, float)) and 0 < self.dev_fraction < 1):
            raise EdgekdValueError(f"ReaderConfig.dev_fraction must be in (0, 1), got {self.dev_fraction!r}")


@dataclass
class ReaderResult:
    """What :func:`train_reader` did."""

    losses: list
    dev_before: float
    dev_after: float
    best: dict | None
    n_train: int
    n_dev: int
    dropped: int  # triplets whose answer is not a span of the context
    windows: int  # training windows (features)
    seconds: float
    config: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        d["losses"] = [round(x, 5) for x in self.losses]
        return d


def locate_answer(t: Triplet) -> int | None:
    """The character offset of ``t.answer`` in ``t.context``: ``answer_start`` when the text there
    matches, else the first exact occurrence, else the first case-insensitive one; None if absent."""
    a = t.answer.strip()
    if not a:
        return None
    s = t.answer_start
    if isinstance(s, int) and s >= 0 and t.context[s:s + len(t.answer)] == t.answer:
        return s + (len(t.answer) - len(t.answer.lstrip()))
    i = t.context.find(a)
    if i < 0:
        i = t.context.lower().find(a.lower())
    return i if i >= 0 else None


def load_reader(source: str | os.PathLike = "minilm", *, seed: int = 0):
    """``(model, tokenizer, config)`` from a saved reader, any encoder directory, or ``"minilm"``
    (asset). A plain encoder gets a new span head initialised under ``seed``; ``config`` is the saved
    :class:`ReaderConfig` of a reader, else None."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from edgekd.training import seed_everything

    if str(source) == "minilm":
        from edgekd.assets import asset_path

        source = asset_path("minilm")
    d = Path(source)
    if not (d / "config.json").is_file():
        raise EdgekdValueError(f"reader: {d} is not a model directory (no config.json); give 'minilm' or a folder "
                               "saved by save_reader / save_pretrained")
    seed_everything(seed)
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the new span head's "newly initialized" notice is expected
    try:
        model = AutoModelForQuestionAnswering.from_pretrained(str(d), dtype=torch.float32, num_labels=2)
        tok = AutoTokenizer.from_pretrained(str(d))
    except Exception as exc:
        raise EdgekdValueError(f"reader: cannot load an encoder with a span head from {d} "
                               f"({type(exc).__name__}: {exc})") from None
    finally:
        hf_logging.set_verbosity(level)
    if not getattr(tok, "is_fast", False):
        raise EdgekdValueError(f"reader: {d} has no fast tokenizer (tokenizer.json); offsets need one")
    cfg = None
    if (d / _META).is_file():
        from edgekd.settings import read_json_object

        meta = read_json_object(d / _META, "reader")
        known = {k: v for k, v in meta.get("config", {}).items() if k in ReaderConfig.__dataclass_fields__}
        cfg = ReaderConfig(**known)
    return model.eval(), tok, cfg


def save_reader(model: torch.nn.Module, tokenizer: Any, out: str | os.PathLike, config: ReaderConfig | None = None,
                extra: dict | None = None) -> Path:
    """config.json + model.safetensors + tokenizer files + reader.json (settings and ``extra``)."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(d), safe_serialization=True)
    tokenizer.save_pretrained(str(d))
    meta = {"format": "edgekd.qa.reader", "config": asdict(config or ReaderConfig()), **(extra or {})}
    tmp = d / (_META + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, d / _META)
    return d


# --------------------------------------------------------------------------------------------
# features


def encode_reader(tokenizer: Any, contexts: Sequence[str], questions: Sequence[str], config: ReaderConfig,
                  starts: Sequence[int | None] | None = None, answers: Sequence[str] | None = None) -> dict:
    """Windows of (question, context) pairs: ``input_ids`` (and ``token_type_ids``) as lists,
    ``example`` (the pair each window comes from), ``offsets`` (character spans of the context
    tokens, None elsewhere) and, with ``starts`` / ``answers``, ``start_positions`` /
    ``end_positions`` (0 = [CLS] when the answer is not wholly inside the window)."""
    config.validate()
    if len(contexts) != len(questions) or not contexts:
        raise EdgekdValueError(f"reader: need as many contexts as questions (>= 1), got {len(contexts)} and "
                               f"{len(questions)}")
    for c, q in zip(contexts, questions):
        if not isinstance(c, str) or not c.strip() or not isinstance(q, str) or not q.strip():
            raise EdgekdValueError(f"reader: empty context or question ({q!r:.40}, {c!r:.40})")
    try:
        enc = tokenizer(list(questions), list(contexts), truncation="only_second", max_length=config.max_length,
                        stride=config.doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True)
    except Exception as exc:  # a question longer than max_length leaves no room for the context
        raise EdgekdValueError(f"reader: cannot window the inputs with max_length={config.max_length}, "
                               f"doc_stride={config.doc_stride} ({type(exc).__name__}: {exc}); "
                               "raise max_length or shorten the questions") from None
    feats: dict[str, list] = {"input_ids": [], "example": [], "offsets": []}
    if "token_type_ids" in enc:
        feats["token_type_ids"] = []
    if starts is not None:
        feats["start_positions"], feats["end_positions"] = [], []
    for i in range(len(enc["input_ids"])):
        ex = enc["overflow_to_sample_mapping"][i]
        seq = enc.sequence_ids(i)
        offs = [tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][i], seq)]
        feats["input_ids"].append(enc["input_ids"][i])
        feats["example"].append(ex)
        feats["offsets"].append(offs)
        if "token_type_ids" in feats:
            feats["token_type_ids"].append(enc["token_type_ids"][i])
        if starts is not None:
            sp = ep = 0
            a0 = starts[ex]
            if a0 is not None:
                a1 = a0 + len(answers[ex].strip())
                ctx_tok = [k for k, o in enumerate(offs) if o is not None]
                if ctx_tok and offs[ctx_tok[0]][0] <= a0 and offs[ctx_tok[-1]][1] >= a1:
                    sp = next(k for k in ctx_tok if offs[k][1] > a0)
                    ep = next(k for k in reversed(ctx_tok) if offs[k][0] < a1)
            feats["start_positions"].append(sp)
            feats["end_positions"].append(ep)
    return feats


def _batch(feats: dict, idx: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    t = max(len(feats["input_ids"][i]) for i in idx)
    ids = torch.full((len(idx), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), t), dtype=torch.long)
    out = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in feats:
        out["token_type_ids"] = torch.zeros((len(idx), t), dtype=torch.long)
    for r, i in enumerate(idx):
        n = len(feats["input_ids"][i])
        ids[r, :n] = torch.tensor(feats["input_ids"][i])
        mask[r, :n] = 1
        if "token_type_ids" in feats:
            out["token_type_ids"][r, :n] = torch.tensor(feats["token_type_ids"][i])
    if "start_positions" in feats:
        out["start_positions"] = torch.tensor([feats["start_positions"][i] for i in idx])
        out["end_positions"] = torch.tensor([feats["end_positions"][i] for i in idx])
    return out


def _located(triplets: Sequence[Triplet]) -> tuple[list[Triplet], list[int], int]:
    keep, starts = [], []
    for t in triplets:
        s = locate_answer(t)
        if s is not None:
            keep.append(t)
            starts.append(s)
    return keep, starts, len(triplets) - len(keep)


def _features(tokenizer: Any, triplets: Sequence[Triplet], config: ReaderConfig) -> tuple[dict, int]:
    keep, starts, dropped = _located(triplets)
    if not keep:
        raise EdgekdValueError(f"reader: none of the {len(triplets)} triplets has its answer as a span of its "
                               "context; an extractive reader needs span answers")
    return encode_reader(tokenizer, [t.context for t in keep], [t.question for t in keep], config, starts,
                         [t.answer for t in keep]), dropped


@torch.no_grad()
def _dev_loss(model: torch.nn.Module, feats: dict, pad_id: int, batch_size: int) -> float:
    was = model.training
    model.eval()
    total, n = 0.0, len(feats["input_ids"])
    try:
        for i in range(0, n, batch_size):
            idx = list(range(i, min(n, i + batch_size)))
            b = {k: v.to(next(model.parameters()).device) for k, v in _batch(feats, idx, pad_id).items()}
            total += float(model(**b).loss) * len(idx)
    finally:
        model.train(was)
    return total / n


def train_reader(model: torch.nn.Module, tokenizer: Any, triplets: Sequence[Triplet], config: ReaderConfig | None = None,
                 *, checkpoint_dir: str | None = None, progress: bool = True) -> ReaderResult:
    """Train the span head and encoder in place on ``triplets`` (see the module doc)."""
    from edgekd.qa.students import split_dev
    from edgekd.training import LoopConfig, seed_everything, train_loop

    cfg = config or ReaderConfig()
    cfg.validate()
    if not triplets:
        raise EdgekdValueError("reader: no triplets given")
    keep, _, dropped = _located(triplets)
    if not keep:
        raise EdgekdValueError(f"reader: none of the {len(triplets)} triplets has its answer as a span of its "
                               "context; an extractive reader needs span answers")
    train, dev = split_dev(keep, cfg.dev_fraction, cfg.seed)
    f_train, _ = _features(tokenizer, train, cfg)
    f_dev, _ = _features(tokenizer, dev, cfg)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    loop = LoopConfig(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
                      warmup_ratio=cfg.warmup_ratio, eval_every="epoch", metric="neg_eval_loss", select_best=True)

    def evaluate(m: torch.nn.Module) -> dict:
        loss = _dev_loss(m, f_dev, pad, cfg.batch_size)
        return {"eval_loss": loss, "neg_eval_loss": -loss}

    seed_everything(cfg.seed)
    before = _dev_loss(model, f_dev, pad, cfg.batch_size)
    t0 = time.perf_counter()
    res = train_loop(model, len(f_train["input_ids"]), lambda idx: _batch(f_train, idx, pad), loop,
                     evaluate=evaluate, checkpoint_dir=checkpoint_dir, progress=progress, desc="qa-reader")
    model.eval()
    after = _dev_loss(model, f_dev, pad, cfg.batch_size)
    return ReaderResult(losses=list(res.losses), dev_before=before, dev_after=after, best=res.best, n_train=len(train),
                        n_dev=len(dev), dropped=dropped, windows=len(f_train["input_ids"]),
                        seconds=time.perf_counter() - t0, config=asdict(cfg))


# --------------------------------------------------------------------------------------------
# decoding


def _best_span(start: torch.Tensor, end: torch.Tensor, offs: list, cfg: ReaderConfig) -> tuple[float, int, int] | None:
    """The best (score, char start, char end) of one window, or None when no valid span exists."""
    ctx = [k for k, o in enumerate(offs) if o is not None]
    if not ctx:
        return None
    lo, hi = ctx[0], ctx[-1]
    s_cand = torch.topk(start[lo:hi + 1], min(cfg.n_best, hi - lo + 1)).indices.tolist()
    e_cand = torch.topk(end[lo:hi + 1], min(cfg.n_best, hi - lo + 1)).indices.tolist()
    best = None
    for s in s_cand:
        for e in e_cand:
            if e < s or e - s + 1 > cfg.max_answer_tokens:
                continue
            a, b = offs[lo + s], offs[lo + e]
            if a is None or b is None:
                continue
            score = float(start[lo + s] + end[lo + e])
            if best is None or score > best[0]:
                best = (score, a[0], b[1])
    return best


@torch.no_grad()
def reader_answer(model: torch.nn.Module, tokenizer: Any, context: str | Sequence[str], question: str | Sequence[str],
                  config: ReaderConfig | None = None, *, batch_size: int = 16) -> str | list[str]:
    """The best span of each context for its question (one string for a pair, a list for lists)."""
    cfg = config or ReaderConfig()
    single = isinstance(context, str)
    ctxs = [context] if single else list(context)
    qs = [question] if isinstance(question, str) else list(question)
    feats = encode_reader(tokenizer, ctxs, qs, cfg)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    dev = next(model.parameters()).device
    was = model.training
    model.eval()
    best: list[tuple[float, int, int] | None] = [None] * len(ctxs)
    try:
        n = len(feats["input_ids"])
        for i in range(0, n, batch_size):
            idx = list(range(i, min(n, i + batch_size)))
            b = {k: v.to(dev) for k, v in _batch(feats, idx, pad).items()}
            out = model(**b)
            for r, f in enumerate(idx):
                cand = _best_span(out.start_logits[r].float().cpu(), out.end_logits[r].float().cpu(),
                                  feats["offsets"][f], cfg)
                ex = feats["example"][f]
                if cand is not None and (best[ex] is None or cand[0] > best[ex][0]):
                    best[ex] = cand
    finally:
        model.train(was)
    ans = ["" if b is None else ctxs[k][b[1]:b[2]].strip() for k, b in enumerate(best)]
    return ans[0] if single else ans
