"""Generative QA students: a causal LM pruned from the teacher, trained on (context, question, answer) triplets.

The paper's student (Ace-Attorney, Italiani et al. 2025) is a small generative model that reads a
paragraph and a question and writes the answer. Here:

- :func:`qa_prompt` renders (context, question) as the prompt string: the tokenizer's chat template
  when it has one (system line, user turn with the context and the question, then the assistant
  header), else a plain ``Context: ... Question: ... Answer:`` block. :func:`qa_pairs` makes the
  (prompt, completion) pairs whose completion is the answer span (EOS appended by
  :func:`edgekd.llm.encode_pairs`, which masks the prompt tokens out of the loss).
- :func:`make_student`: keep ``keep_layers`` decoder blocks of the teacher, ranked by ShortGPT block
  influence (:func:`edgekd.llm.block_influence`) on QA prompts + answers (or evenly spaced).
- :func:`train_qa_student`: SFT (``loss="ce"``, the answer's cross-entropy) or token-level KD from the
  teacher (``"forward_kl"``/``"fkl"``, ``"reverse_kl"``/``"rkl"``, ``"jsd"``, ... of :mod:`edgekd.llm.losses`,
  with ``ce_weight`` of CE mixed in) on :func:`edgekd.llm.train_causal_lm`. A dev split is carved from
  the training triplets (whole paragraphs go to one side) and the checkpoint with the lowest dev
  answer loss is kept.
- :func:`answer`: batched greedy generation (left padding), the answer cut at the first newline.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import torch

from edgekd.errors import EdgekdValueError
from edgekd.qa.types import Triplet
from edgekd.runtime.sgp import QA_SYSTEM  # the one system line, shared with the bundles' chat prompts

__all__ = ["QA_SYSTEM", "LOSS_ALIASES", "QAStudentConfig", "QAStudentResult", "qa_prompt", "qa_pairs", "encode_qa",
           "split_dev", "make_student", "train_qa_student", "answer", "resolve_loss"]

LOSS_ALIASES = {"fkl": "forward_kl", "rkl": "reverse_kl", "sft": "ce"}


def resolve_loss(loss: str) -> str:
    """``fkl`` -> ``forward_kl``, ``rkl`` -> ``reverse_kl``, ``sft`` -> ``ce``; other names unchanged."""
    if not isinstance(loss, str) or not loss:
        raise EdgekdValueError(f"loss must be a name such as 'ce', 'fkl' or 'forward_kl', got {loss!r}")
    return LOSS_ALIASES.get(loss, loss)


def _check_text(name: str, s: Any) -> str:
    if not isinstance(s, str) or not s.strip():
        raise EdgekdValueError(f"qa_prompt: {name} must be a non-empty string, got {s!r:.60}")
    return s.strip()


def _has_chat(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _user_turn(context: str, question: str) -> str:
    return f"Context: {context}\nQuestion: {question}"


def qa_prompt(tokenizer: Any, context: str, question: str, *,
              shots: Sequence[tuple[str, str, str]] = ()) -> str:
    """The prompt of (``context``, ``question``): chat template with :data:`QA_SYSTEM` when the
    tokenizer has one, else ``"<system>\\n\\nContext: ...\\nQuestion: ...\\nAnswer:"``.
    ``shots``: (context, question, answer) examples shown first (few-shot prompting of a teacher)."""
    context, question = _check_text("context", context), _check_text("question", question)
    shots = [tuple(_check_text(n, v) for n, v in zip(("shot context", "shot question", "shot answer"), s))
             for s in shots]
    if _has_chat(tokenizer):
        msgs = [{"role": "system", "content": QA_SYSTEM}]
        for c, q, a in shots:
            msgs += [{"role": "user", "content": _user_turn(c, q)}, {"role": "assistant", "content": a}]
        msgs.append({"role": "user", "content": _user_turn(context, question)})
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    parts = [QA_SYSTEM, ""]
    for c, q, a in shots:
        parts += [_user_turn(c, q) + "\nAnswer: " + a, ""]
    parts.append(_user_turn(context, question) + "\nAnswer:")
    return "\n".join(parts)


def _completion(tokenizer: Any, answer_text: str) -> str:
    # a plain prompt ends with "Answer:", so the answer starts after a space; a chat prompt ends with a newline
    return answer_text.strip() if _has_chat(tokenizer) else " " + answer_text.strip()


def qa_pairs(tokenizer: Any, triplets: Sequence[Triplet]) -> list[tuple[str, str]]:
    """(prompt, completion) pairs of ``triplets`` (completion = the answer; EOS is added by encode_pairs)."""
    out = []
    for t in triplets:
        out.append((qa_prompt(tokenizer, t.context, t.question), _completion(tokenizer, _check_text("answer", t.answer))))
    return out


def encode_qa(tokenizer: Any, triplets: Sequence[Triplet], max_length: int) -> dict[str, torch.Tensor]:
    """Token tensors of the triplets for :func:`edgekd.llm.train_causal_lm`: prompt and padding
    labelled -100, answer tokens + EOS trained. A prompt longer than ``max_length`` leaves no answer
    token and raises (shorten the contexts or raise ``max_length``)."""
    from edgekd.llm.trainer import encode_pairs

    _check_triplets(triplets)
    if not isinstance(max_length, int) or max_length < 8:
        raise EdgekdValueError(f"max_length must be an int >= 8, got {max_length!r}")
    pairs = qa_pairs(tokenizer, triplets)
    for (p, _), t in zip(pairs, triplets):
        n = len(tokenizer(p, add_special_tokens=False)["input_ids"])
        if n >= max_length:
            raise EdgekdValueError(f"triplet {t.id or t.question[:40]!r}: its prompt is {n} tokens, max_length is "
                                   f"{max_length}; raise max_length or drop long contexts")
    return encode_pairs(tokenizer, pairs, max_length)


def _check_triplets(triplets: Sequence[Triplet]) -> None:
    if not triplets:
        raise EdgekdValueError("no triplets given (need at least 2: one to train on, one for the dev split)")
    for t in triplets:
        if not isinstance(t, Triplet):
            raise EdgekdValueError(f"expected Triplet records, got {type(t).__name__}")


# --------------------------------------------------------------------------------------------
# settings


@dataclass
class QAStudentConfig:
    """Settings of :func:`train_qa_student` (and of ``edgekd qa train --kind generative``)."""

    loss: str = "ce"  # "ce" (SFT) or a KD loss: forward_kl (fkl), reverse_kl (rkl), jsd, tv, akl, ...
    ce_weight: float = 0.5  # KD only: (1 - w) KD + w CE on the answer tokens
    temperature: float = 1.0  # KD temperature
    max_length: int = 384  # tokens of prompt + answer; longer prompts raise
    epochs: float = 3.0
    lr: float = 5e-5
    batch_size: int = 4
    grad_accum: int = 1
    dev_fraction: float = 0.1  # share of the triplets (whole paragraphs) held out for checkpoint selection
    seed: int = 0
    warmup_ratio: float = 0.05

    def validate(self) -> None:
        self.loss = resolve_loss(self.loss)
        if not (isinstance(self.dev_fraction, (int, float)) and 0 < self.dev_fraction < 1):
            raise EdgekdValueError(f"QAStudentConfig.dev_fraction must be in (0, 1), got {self.dev_fraction!r}")
        if not isinstance(self.max_length, int) or self.max_length < 8:
            raise EdgekdValueError(f"QAStudentConfig.max_length must be an int >= 8, got {self.max_length!r}")

    def llm_config(self):
        """The :class:`edgekd.llm.LLMTrainConfig` these settings mean (dev loss selects the checkpoint)."""
        from edgekd.llm.trainer import LLMTrainConfig
        from edgekd.training import LoopConfig

        self.validate()
        loop = LoopConfig(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, grad_accum=self.grad_accum,
                          seed=self.seed, warmup_ratio=self.warmup_ratio, weight_decay=0.0, eval_every="epoch",
                          metric="neg_eval_loss", select_best=True)
        cfg = LLMTrainConfig(loss=self.loss, temperature=self.temperature,
                             ce_weight=self.ce_weight if self.loss != "ce" else 0.0, loop=loop)
        cfg.validate()
        return cfg


@dataclass
class QAStudentResult:
    """What :func:`train_qa_student` did: the loop's step losses, the dev answer loss before / after
    (the selected checkpoint's), the split sizes."""

    losses: list
    dev_before: float
    dev_after: float
    best: dict | None
    n_train: int
    n_dev: int
    tokens_trained: int
    seconds: float
    config: dict

    def to_json(self) -> dict:
        d = asdict(self)
        d["losses"] = [round(x, 5) for x in self.losses]
        return d


def split_dev(triplets: Sequence[Triplet], fraction: float, seed: int = 0) -> tuple[list[Triplet], list[Triplet]]:
    """(train, dev): about ``fraction`` of the triplets, whole paragraphs (``context_id`` or the context
    text) on one side so a dev question never shares its paragraph with a training one; at least one
    triplet on each side. With a single paragraph, single triplets are split instead."""
    _check_triplets(triplets)
    if len(triplets) < 2:
        raise EdgekdValueError(f"need at least 2 triplets (one to train on, one for the dev split), got {len(triplets)}")
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(triplets):
        groups.setdefault(t.context_id or t.context, []).append(i)
    keys = list(groups)
    rng = random.Random(seed)
    rng.shuffle(keys)
    if len(keys) == 1:
        keys = [str(i) for i in range(len(triplets))]
        groups = {str(i): [i] for i in range(len(triplets))}
        rng.shuffle(keys)
    want = max(1, int(round(fraction * len(triplets))))
    dev_idx: list[int] = []
    for k in keys[:-1]:  # the last group always trains
        if len(dev_idx) >= want:
            break
        dev_idx += groups[k]
    dev_set = set(dev_idx)
    return ([t for i, t in enumerate(triplets) if i not in dev_set], [t for i, t in enumerate(triplets) if i in dev_set])


# --------------------------------------------------------------------------------------------
# the student


def make_student(teacher: torch.nn.Module, keep_layers: int, calibration: Sequence[Triplet] | Mapping[str, torch.Tensor],
                 *, tokenizer: Any = None, method: str = "block-influence", max_length: int = 384,
                 batch_size: int = 4) -> tuple[torch.nn.Module, list[int]]:
    """A student with ``keep_layers`` of the teacher's decoder blocks and the kept indices.

    ``calibration``: triplets (rendered as QA prompt + answer with ``tokenizer``) or token tensors
    (``input_ids`` / ``attention_mask``). ``method``: ``"block-influence"`` (ShortGPT) or ``"even"``."""
    from edgekd.llm import prune as P

    n = getattr(getattr(teacher, "config", None), "num_hidden_layers", None)
    if n is None:
        raise EdgekdValueError("make_student: the teacher must be a Hugging Face causal LM with num_hidden_layers")
    if not isinstance(keep_layers, int) or isinstance(keep_layers, bool) or not 1 <= keep_layers <= n:
        raise EdgekdValueError(f"make_student: keep_layers must be an int in [1, {n}] (the teacher has {n} layers), "
                               f"got {keep_layers!r}")
    if method == "even":
        keep = P.evenly_spaced_layers(n, keep_layers)
    elif method == "block-influence":
        if isinstance(calibration, Mapping):
            data = calibration
        else:
            if tokenizer is None:
                raise EdgekdValueError("make_student: calibration triplets need the tokenizer")
            data = encode_qa(tokenizer, list(calibration), max_length)
        batches = P.calibration_batches(data["input_ids"], data.get("attention_mask"), batch_size=batch_size)
        keep = P.select_layers(P.block_influence(teacher, batches), keep_layers)
    else:
        raise EdgekdValueError(f"make_student: method must be 'block-influence' or 'even', got {method!r}")
    return P.prune_depth(teacher, keep), keep


@torch.no_grad()
def _dev_loss(model: torch.nn.Module, data: Mapping[str, torch.Tensor], batch_size: int) -> float:
    from edgekd.llm.trainer import evaluate_perplexity

    return float(evaluate_perplexity(model, data, batch_size)["eval_loss"])


def train_qa_student(student: torch.nn.Module, tokenizer: Any, triplets: Sequence[Triplet], *,
                     teacher: torch.nn.Module | None = None, config: QAStudentConfig | None = None,
                     checkpoint_dir: str | None = None, progress: bool = True) -> QAStudentResult:
    """Train ``student`` in place on ``triplets`` (see the module doc): SFT with ``config.loss="ce"``
    (no teacher), else token-level KD from ``teacher`` (same tokenizer / vocabulary) plus
    ``config.ce_weight`` CE. The dev split (``config.dev_fraction`` of the triplets, whole paragraphs)
    is evaluated every epoch and the best dev answer loss's weights are kept."""
    import time

    from edgekd.llm.trainer import train_causal_lm

    cfg = config or QAStudentConfig()
    lcfg = cfg.llm_config()
    if cfg.loss == "ce" and teacher is not None:
        raise EdgekdValueError("train_qa_student: loss='ce' is SFT without a teacher; pass teacher=None "
                               "or a KD loss such as 'fkl'")
    if cfg.loss != "ce" and teacher is None:
        raise EdgekdValueError(f"train_qa_student: loss={cfg.loss!r} distils from a teacher; pass teacher=")
    train, dev = split_dev(list(triplets), cfg.dev_fraction, cfg.seed)
    d_train = encode_qa(tokenizer, train, cfg.max_length)
    d_dev = encode_qa(tokenizer, dev, cfg.max_length)
    if teacher is not None:
        teacher.eval()
    t0 = time.perf_counter()
    res = train_causal_lm(student, d_train, teacher=teacher, config=lcfg, eval_data=d_dev,
                          checkpoint_dir=checkpoint_dir, progress=progress, desc=f"qa-{cfg.loss}")
    student.eval()
    before = res.eval_before["eval_loss"] if res.eval_before else math.nan
    after = res.eval_after["eval_loss"] if res.eval_after else _dev_loss(student, d_dev, lcfg.eval_batch_size)
    return QAStudentResult(losses=list(res.loop.losses), dev_before=before, dev_after=after, best=res.loop.best,
                           n_train=len(train), n_dev=len(dev), tokens_trained=res.tokens_trained,
                           seconds=time.perf_counter() - t0, config=asdict(cfg))


# --------------------------------------------------------------------------------------------
# inference


def _clean(text: str) -> str:
    text = text.strip()
    return text.split("\n", 1)[0].strip()


@torch.no_grad()
def answer(model: torch.nn.Module, tokenizer: Any, context: str | Sequence[str], question: str | Sequence[str],
           max_new_tokens: int = 32, *, batch_size: int = 8, shots: Sequence[tuple[str, str, str]] = (),
           max_prompt_tokens: int | None = None) -> str | list[str]:
    """Greedy answers of ``model``: one string for a (context, question) pair, a list for lists of them.

    Prompts are left-padded into batches of ``batch_size``; each answer is the decoded continuation
    up to EOS, stripped and cut at its first newline. ``shots``: few-shot examples (:func:`qa_prompt`).
    ``max_prompt_tokens``: keep only the last tokens of longer prompts (the question stays)."""
    single = isinstance(context, str)
    ctxs = [context] if single else list(context)
    qs = [question] if isinstance(question, str) else list(question)
    if len(ctxs) != len(qs):
        raise EdgekdValueError(f"answer: {len(ctxs)} contexts but {len(qs)} questions")
    if not ctxs:
        raise EdgekdValueError("answer: no questions given")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise EdgekdValueError(f"answer: max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise EdgekdValueError(f"answer: batch_size must be an int >= 1, got {batch_size!r}")
    prompts = [qa_prompt(tokenizer, c, q, shots=shots) for c, q in zip(ctxs, qs)]
    dev = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    was = model.training
    model.eval()
    out: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            enc = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts[i:i + batch_size]]
            if max_prompt_tokens:
                enc = [e[-max_prompt_tokens:] for e in enc]
            t = max(len(e) for e in enc)
            ids = torch.full((len(enc), t), pad if pad is not None else 0, dtype=torch.long)
            mask = torch.zeros((len(enc), t), dtype=torch.long)
            for r, e in enumerate(enc):
                ids[r, t - len(e):], mask[r, t - len(e):] = torch.tensor(e), 1
            gen = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos,
                                 num_beams=1, temperature=None, top_p=None, top_k=None)
            for row in gen[:, t:].tolist():
                if eos is not None and eos in row:
                    row = row[:row.index(eos)]
                out.append(_clean(tokenizer.decode(row, skip_special_tokens=True)))
    finally:
        model.train(was)
    return out[0] if single else out
