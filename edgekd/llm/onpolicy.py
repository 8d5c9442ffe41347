"""On-policy distillation (GKD's lambda): completions sampled from the student, scored by the teacher.

With probability ``lambda`` per optimizer step (a seeded coin, :func:`on_policy_step`), the step's
examples are replaced by sequences whose completion the *student* sampled from the example's prompt
(:func:`sample_completions`, no gradient); the trainer then runs the live teacher on them and
computes the KD loss on the sampled tokens only (prompt and padding are -100 in the new labels).
The prompt of a row is its tokens before its first valid target (``labels != -100``, counted from
position 1); a packed text without a prompt keeps its first token as the prompt.
"""
from __future__ import annotations

from typing import Any

import torch

from edgekd.errors import EdgekdValueError

__all__ = ["on_policy_step", "sampling_seed", "prompt_lengths", "sample_completions", "check_on_policy"]

IGNORE = -100


def check_on_policy(lam: float, max_new_tokens: int, temperature: float, who: str = "LLMTrainConfig") -> None:
    """Raise :class:`EdgekdValueError` on an on-policy setting out of range."""
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0.0 <= float(lam) <= 1.0:
        raise EdgekdValueError(f"{who}.on_policy_lambda must be a number in [0, 1], got {lam!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise EdgekdValueError(f"{who}.max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not float(temperature) > 0:
        raise EdgekdValueError(f"{who}.sampling_temperature must be > 0, got {temperature!r}")


def sampling_seed(seed: int, step: int) -> int:
    """The seed of optimizer step ``step``'s coin and sampling (a function of the run seed and the step,
    so a resumed run replays it)."""
    return (int(seed) * 1_000_003 + int(step) * 7_919 + 17) % (2 ** 63)


def on_policy_step(lam: float, seed: int, step: int) -> bool:
    """The seeded coin: True with probability ``lam`` (never drawn when ``lam`` is 0)."""
    if lam <= 0.0:
        return False
    if lam >= 1.0:
        return True
    g = torch.Generator().manual_seed(sampling_seed(seed, step))
    return bool(torch.rand((), generator=g) < lam)


def prompt_lengths(labels: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) prompt length per row: the position of its first valid target (>= 1); a row without one
    keeps all its tokens as the prompt."""
    valid = labels[:, 1:] != IGNORE
    first = valid.long().argmax(1) + 1
    length = attention_mask.long().sum(1).clamp(min=1)
    return torch.where(valid.any(1), torch.minimum(first, length), length)


@torch.no_grad()
def sample_completions(model: torch.nn.Module, batch: dict[str, torch.Tensor], *, max_new_tokens: int,
                       temperature: float, seed: int) -> dict[str, torch.Tensor]:
    """The rows' prompts plus completions sampled from ``model`` (ancestral sampling at ``temperature``,
    no top-k / top-p, stopping at EOS, seeded without touching the global RNG), right-padded, with
    labels -100 on the prompt and the padding: ``{input_ids, attention_mask, labels}`` on the CPU."""
    ids, am, labels = batch["input_ids"].cpu(), batch["attention_mask"].cpu(), batch["labels"].cpu()
    cfg = getattr(model, "config", None)
    pad = getattr(cfg, "pad_token_id", None)
    pad = 0 if pad is None else int(pad)
    eos = getattr(cfg, "eos_token_id", None)
    eos_set = set(eos if isinstance(eos, (list, tuple)) else ([] if eos is None else [eos]))
    p = prompt_lengths(labels, am)
    B, P = ids.shape[0], int(p.max())
    left = torch.full((B, P), pad, dtype=torch.long)
    left_mask = torch.zeros((B, P), dtype=torch.long)
    for i in range(B):  # left-padded prompts for batched generation
        left[i, P - int(p[i]):], left_mask[i, P - int(p[i]):] = ids[i, :int(p[i])], 1
    dev = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(seed)
            out = model.generate(input_ids=left.to(dev), attention_mask=left_mask.to(dev), do_sample=True,
                                 temperature=float(temperature), top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                                 pad_token_id=pad, eos_token_id=eos, use_cache=True)
    finally:
        model.train(was)
    gen = out[:, P:].cpu()
    rows = []
    for i in range(B):
        g = gen[i].tolist()
        cut = next((j + 1 for j, t in enumerate(g) if t in eos_set), len(g))  # keep the EOS as a target
        prompt = ids[i, :int(p[i])].tolist()
        rows.append((prompt + g[:cut], [IGNORE] * len(prompt) + g[:cut]))
    T = max(len(r[0]) for r in rows)
    new_ids = torch.full((B, T), pad, dtype=torch.long)
    new_labels = torch.full((B, T), IGNORE, dtype=torch.long)
    new_mask = torch.zeros((B, T), dtype=torch.long)
    for i, (a, b) in enumerate(rows):
        new_ids[i, :len(a)], new_labels[i, :len(b)], new_mask[i, :len(a)] = torch.tensor(a), torch.tensor(b), 1
    return {"input_ids": new_ids, "attention_mask": new_mask, "labels": new_labels}


def require_live_teacher(teacher: Any, cache_dir: Any) -> None:
    """On-policy sequences are new each step: the teacher must be a model run on them, not a cache."""
    if cache_dir is not None or not isinstance(teacher, torch.nn.Module):
        raise EdgekdValueError("train_causal_lm: on_policy_lambda > 0 needs a live teacher model (the student's "
                               "samples are new every step); a sparse cache or a callable teacher cannot score them")
