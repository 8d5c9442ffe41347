"""The legal-QA table protocol, shared by ``edgekd demo --task legal-qa`` (:mod:`edgekd.pipeline.legal_qa`)
and ``benchmarks/qa_students.py``.

- :func:`short_pairs` / :func:`train_test_pairs`: PolicyQA DEV human pairs (the training pool) and
  TEST questions, contexts of at most ``max_context_words`` words, seeded samples spread over the
  policies (:func:`edgekd.qa.cli_train.select_triplets`).
- :func:`load_teacher`: the generative teacher; a GGUF asset (``smollm2``) or ``.gguf`` file is
  dequantised to fp32 once and saved as a plain model directory (faster reloads).
- :func:`generative_eval` / :func:`reader_eval`: answer the test questions from their gold context,
  score them (SQuAD EM / F1, ROUGE-L against every gold answer) and time them.
- :func:`model_size_mb`: the fp32 weights' size.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

from edgekd.errors import EdgekdValueError
from edgekd.qa.types import Triplet

__all__ = ["golds", "short_pairs", "train_test_pairs", "model_size_mb", "load_teacher", "generative_eval",
           "reader_eval"]


def golds(t: Triplet) -> list[str]:
    """Every gold answer of a question (``meta["answers"]``, else its ``answer``)."""
    answers = t.meta.get("answers") if isinstance(t.meta, dict) else None
    return list(answers) if answers else [t.answer]


def short_pairs(triplets: Sequence[Triplet], max_context_words: int) -> list[Triplet]:
    """The triplets whose context has at most ``max_context_words`` words."""
    if isinstance(max_context_words, bool) or not isinstance(max_context_words, int) or max_context_words < 1:
        raise EdgekdValueError(f"max_context_words must be an int >= 1, got {max_context_words!r}")
    return [t for t in triplets if len(t.context.split()) <= max_context_words]


def train_test_pairs(pool: Sequence[Triplet], test_pool: Sequence[Triplet], *, train_n: int, test_n: int,
                     max_context_words: int, seed: int = 0) -> tuple[list[Triplet], list[Triplet], int]:
    """``(train, test, pool size)``: seeded samples of ``train_n`` pairs of ``pool`` and ``test_n``
    of ``test_pool`` (both cut to contexts of at most ``max_context_words`` words first), spread
    over the documents."""
    from edgekd.qa.cli_train import select_triplets

    short = short_pairs(pool, max_context_words)
    short_test = short_pairs(test_pool, max_context_words)
    if not short:
        raise EdgekdValueError(f"no training pair has a context of at most {max_context_words} words")
    if not short_test:
        raise EdgekdValueError(f"no test question has a context of at most {max_context_words} words")
    train = select_triplets(short, sample=train_n, seed=seed)
    test = select_triplets(short_test, sample=test_n, seed=seed)
    return train, test, len(short)


def model_size_mb(model: Any) -> float:
    """MB of the model's floating-point parameters and buffers (tied tensors counted once)."""
    seen, n = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen and t.is_floating_point():
            seen.add(id(t))
            n += t.numel() * t.element_size()
    return n / 1e6


def load_teacher(source: str | os.PathLike = "smollm2", fp32_dir: str | os.PathLike | None = None):
    """``(model, tokenizer)`` of the generative teacher: an asset name (``smollm2``), a ``.gguf`` file
    or a model directory. A GGUF source is dequantised to fp32 and, with ``fp32_dir``, saved there
    once (later calls load that plain directory, which is faster)."""
    from edgekd.assets import ASSETS, asset_path
    from edgekd.llm.models import load_causal_lm, save_causal_lm

    src = str(source)
    path = asset_path(src) if src in ASSETS else Path(src)
    gguf = path.is_file() and path.suffix.lower() == ".gguf"
    if not gguf:
        return load_causal_lm(path)
    d = Path(fp32_dir) if fp32_dir is not None else None
    if d is not None and (d / "model.safetensors").is_file() and (d / "config.json").is_file():
        return load_causal_lm(d)
    model, tok = load_causal_lm(path)
    if d is not None:
        tmp = d.with_name(d.name + ".tmp")
        save_causal_lm(model, tmp, tok)
        if d.exists():
            import shutil

            shutil.rmtree(d)
        os.replace(tmp, d)
    return model, tok


def generative_eval(model: Any, tokenizer: Any, test: Sequence[Triplet], *, max_new_tokens: int = 32,
                    batch_size: int = 8, shots: Sequence[tuple[str, str, str]] = ()) -> dict[str, Any]:
    """Greedy answers of a causal LM to ``test`` (gold contexts): ``{"metrics", "preds", "speed"}``;
    ``speed``: seconds, answer tokens generated (+ EOS), tokens/s and seconds per question."""
    import torch

    from edgekd.qa.metrics import qa_metrics
    from edgekd.qa.students import answer

    test = list(test)
    if not test:
        raise EdgekdValueError("generative_eval: no test questions")
    torch.manual_seed(0)
    t0 = time.perf_counter()
    preds = answer(model, tokenizer, [t.context for t in test], [t.question for t in test], max_new_tokens,
                   batch_size=batch_size, shots=shots)
    sec = time.perf_counter() - t0
    n_tok = sum(len(tokenizer(p, add_special_tokens=False)["input_ids"]) + 1 for p in preds)  # + EOS
    return {"metrics": qa_metrics(preds, [golds(t) for t in test]), "preds": preds,
            "speed": {"seconds": sec, "gen_tokens": n_tok, "tokens_per_s": n_tok / sec,
                      "s_per_question": sec / len(test)}}


def reader_eval(model: Any, tokenizer: Any, test: Sequence[Triplet], config: Any = None, *,
                batch_size: int = 8) -> dict[str, Any]:
    """The extractive reader's spans for ``test``: ``{"metrics", "preds", "speed"}``; ``speed``
    counts the input tokens read per second (a reader writes no tokens)."""
    from edgekd.qa.metrics import qa_metrics
    from edgekd.qa.reader import reader_answer

    test = list(test)
    if not test:
        raise EdgekdValueError("reader_eval: no test questions")
    t0 = time.perf_counter()
    preds = reader_answer(model, tokenizer, [t.context for t in test], [t.question for t in test], config,
                          batch_size=batch_size)
    sec = time.perf_counter() - t0
    n_in = sum(len(tokenizer(t.question, t.context)["input_ids"]) for t in test)
    return {"metrics": qa_metrics(preds, [golds(t) for t in test]), "preds": preds,
            "speed": {"seconds": sec, "input_tokens": n_in, "tokens_per_s": n_in / sec,
                      "s_per_question": sec / len(test)}}
