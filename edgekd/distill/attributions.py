"""Explanation extraction from a student, for scoring it against the teacher: its attention logits,
and Integrated Gradients on its embedding layer (captum), one score per word."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from edgekd.errors import EdgekdValueError



def student_attention_logits(student, ids: Sequence[Sequence[int]], batch_size: int = 256) -> list[np.ndarray]:
    """The student's attention logits per text (length = its word count)."""
    import torch

    from edgekd.distill.trainer import EncodedSplit

    sp = EncodedSplit([list(x) for x in ids], np.zeros(len(ids), dtype=np.int64))
    out: list[np.ndarray] = [np.zeros(0)] * len(ids)
    student.eval()
    with torch.no_grad():
        for b in range(0, len(ids), batch_size):
            idx = list(range(b, min(len(ids), b + batch_size)))
            bt = sp.batch(idx)
            al = student(bt["input_ids"], bt["attention_mask"]).attention_logits.float().numpy()
            for r, i in enumerate(idx):
                out[i] = al[r, : len(ids[i])].copy()
    return out


def student_integrated_gradients(
    student, ids: Sequence[Sequence[int]], steps: int = 20, batch_size: int = 32, target: Sequence[int] | None = None
) -> list[np.ndarray]:
    """Integrated Gradients on the student's embedding layer (captum ``LayerIntegratedGradients``),
    per word (summed over the embedding dimension), for the student's predicted class (or
    ``target``); baseline: the pad embedding at every word, same mask."""
    import torch
    from captum.attr import LayerIntegratedGradients

    from edgekd.distill.trainer import EncodedSplit

    if steps < 1:
        raise EdgekdValueError(f"student_integrated_gradients: steps must be >= 1, got {steps}")
    sp = EncodedSplit([list(x) for x in ids], np.zeros(len(ids), dtype=np.int64))
    student.eval()

    def fwd(input_ids, attention_mask):
        return student(input_ids, attention_mask).logits

    lig = LayerIntegratedGradients(fwd, student.embedding)
    out: list[np.ndarray] = [np.zeros(0)] * len(ids)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        bt = sp.batch(idx)
        x, m = bt["input_ids"], bt["attention_mask"]
        with torch.no_grad():
            pred = student(x, m).logits.argmax(-1)
        tgt = pred if target is None else torch.as_tensor([target[i] for i in idx])
        base = torch.full_like(x, int(getattr(student, "pad_id", 0)))
        attr = lig.attribute(x, baselines=base, additional_forward_args=(m,), target=tgt, n_steps=steps)
        a = attr.sum(-1).detach().float().numpy()
        for r, i in enumerate(idx):
            out[i] = a[r, : len(ids[i])].copy()
    return out
