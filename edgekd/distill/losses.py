"""Distillation losses.

All functions take a batch and return a scalar tensor (mean over the batch).

* :func:`cross_entropy`: the usual supervised loss on gold labels.
* :func:`kl_loss`: Hinton et al. logit distillation, ``tau**2 * KL(softmax(t/tau) || softmax(s/tau))``.
* :func:`mse_loss`: mean squared error between student and teacher logits.
* :func:`xai_loss`: DiXtill's explanation loss, ``0.5 * (1 - cos(a_teacher, a_student))`` over the
  valid (non-padding) tokens of each text, averaged over the texts that have teacher attributions.
* :func:`distillation_loss`: the combination for a method (``none``, ``kl``, ``mse``, ``dixtill``).

DiXtill (Cantini et al., J. Big Data 2024) combines them as ``(1 - a)·CE + a·(KL_tau + L_XAI)``;
the authors' released code uses ``0.1·CE + 0.9·(1 - exp(-KL)) + 0.9·L_XAI`` instead
(``variant="code"``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from edgekd.distill.config import METHODS, VARIANTS  # defined once there, with the other settings
from edgekd.errors import EdgekdValueError


def cross_entropy(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``student_logits`` [B, C] against integer ``labels`` [B]."""
    return F.cross_entropy(student_logits, labels)


def kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """``tau**2 * mean_b KL(p_t || p_s)`` with ``p = softmax(logits / tau)``."""
    if tau <= 0:
        raise EdgekdValueError(f"kl_loss: tau must be > 0, got {tau}")
    _same_shape(student_logits, teacher_logits, "kl_loss")
    log_ps = F.log_softmax(student_logits / tau, dim=-1)
    log_pt = F.log_softmax(teacher_logits.to(student_logits.dtype) / tau, dim=-1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean()
    return kl * (tau * tau)


def mse_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over all elements of ``(s - t)**2``."""
    _same_shape(student_logits, teacher_logits, "mse_loss")
    return F.mse_loss(student_logits, teacher_logits.to(student_logits.dtype))


def xai_per_text(teacher_attributions: torch.Tensor, student_scores: torch.Tensor, attention_mask: torch.Tensor,
                 eps: float = 1e-8, *, absolute: bool = False, centered: bool = False) -> torch.Tensor:
    """[B] ``0.5 * (1 - cos)`` per text over its valid words (the forms of :func:`xai_loss`)."""
    _same_shape(student_scores, teacher_attributions, "xai_loss")
    _same_shape(student_scores, attention_mask, "xai_loss (attention_mask)")
    m = attention_mask.to(student_scores.dtype)
    t = teacher_attributions.to(student_scores.dtype)
    if absolute:
        t = t.abs()
    t = t * m
    s = student_scores * m
    if centered:
        n_words = m.sum(-1, keepdim=True).clamp_min(1.0)
        t = (t - t.sum(-1, keepdim=True) / n_words) * m
        s = (s - s.sum(-1, keepdim=True) / n_words) * m
    dot = (t * s).sum(-1)
    denom = t.norm(dim=-1).clamp_min(eps) * s.norm(dim=-1).clamp_min(eps)
    per_text = 0.5 * (1.0 - dot / denom)
    return per_text


def xai_loss(
    teacher_attributions: torch.Tensor,
    student_scores: torch.Tensor,
    attention_mask: torch.Tensor,
    sample_mask: torch.Tensor | None = None,
    eps: float = 1e-8,
    *,
    absolute: bool = False,
    centered: bool = False,
) -> torch.Tensor:
    """``0.5 * (1 - cos)`` between teacher word attributions and student attention logits.

    ``absolute``: compare ``|a_teacher|`` (how much a word matters, whatever the sign) instead of the
    signed attributions. ``centered``: subtract each text's mean over its words from both vectors
    first (a Pearson correlation), so the loss sees only what the attention softmax sees: softmax
    ignores a shift of all logits, the plain cosine does not. The paper's loss is neither.

    Args:
        teacher_attributions: [B, T] teacher word scores (any scale; cosine ignores it).
        student_scores: [B, T] the student's attention logits.
        attention_mask: [B, T] 1 for words, 0 for padding; padding is left out of the cosine.
        sample_mask: [B] 1 for texts that carry teacher attributions; the loss is the mean over
            those texts (0 when there are none).
    Returns:
        a scalar in [0, 1].
    """
    per_text = xai_per_text(teacher_attributions, student_scores, attention_mask, eps,
                            absolute=absolute, centered=centered)
    if sample_mask is None:
        return per_text.mean()
    w = sample_mask.to(per_text.dtype)
    if w.shape != per_text.shape:
        raise EdgekdValueError(f"xai_loss: sample_mask shape {tuple(w.shape)} != batch {tuple(per_text.shape)}")
    n = w.sum()
    if float(n) == 0.0:
        return per_text.sum() * 0.0
    return (per_text * w).sum() / n


def distillation_loss(
    method: str,
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    *,
    alpha: float = 0.5,
    tau: float = 1.0,
    student_scores: torch.Tensor | None = None,
    teacher_attributions: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    attribution_mask: torch.Tensor | None = None,
    variant: str = "paper",
    xai_absolute: bool = False,
    xai_centered: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss of one method and its parts (as floats, for logging).

    * ``none``: CE.
    * ``kl``: ``(1 - alpha)·CE + alpha·KL_tau``.
    * ``mse``: ``(1 - alpha)·CE + alpha·MSE``.
    * ``dixtill``, ``variant="paper"``: ``(1 - alpha)·CE + alpha·(KL_tau + L_XAI)``;
      ``variant="code"``: ``0.1·CE + 0.9·(1 - exp(-KL_tau)) + 0.9·L_XAI`` (alpha is not used).

    ``xai_absolute`` / ``xai_centered``: the forms of L_XAI of :func:`xai_loss`.
    """
    if method not in METHODS:
        raise EdgekdValueError(f"distillation_loss: method must be one of {METHODS}, got {method!r}")
    if variant not in VARIANTS:
        raise EdgekdValueError(f"distillation_loss: variant must be one of {VARIANTS}, got {variant!r}")
    if not 0.0 <= alpha <= 1.0:
        raise EdgekdValueError(f"distillation_loss: alpha must be in [0, 1], got {alpha}")
    ce = cross_entropy(student_logits, labels)
    parts = {"ce": float(ce.detach())}
    if method == "none":
        return ce, parts
    if teacher_logits is None:
        raise EdgekdValueError(f"distillation_loss: method {method!r} needs teacher_logits")
    if method == "mse":
        mse = mse_loss(student_logits, teacher_logits)
        parts["mse"] = float(mse.detach())
        return (1 - alpha) * ce + alpha * mse, parts
    kl = kl_loss(student_logits, teacher_logits, tau)
    parts["kl"] = float(kl.detach())
    if method == "kl":
        return (1 - alpha) * ce + alpha * kl, parts
    if student_scores is None or teacher_attributions is None or attention_mask is None:
        raise EdgekdValueError(
            "distillation_loss: method 'dixtill' needs student_scores, teacher_attributions and attention_mask"
        )
    xai = xai_loss(teacher_attributions, student_scores, attention_mask, attribution_mask,
                   absolute=xai_absolute, centered=xai_centered)
    parts["xai"] = float(xai.detach())
    if variant == "paper":
        return (1 - alpha) * ce + alpha * (kl + xai), parts
    return 0.1 * ce + 0.9 * (1.0 - torch.exp(-kl)) + 0.9 * xai, parts


def _same_shape(a: torch.Tensor, b: torch.Tensor, where: str) -> None:
    if a.shape != b.shape:
        raise EdgekdValueError(f"{where}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")


# --------------------------------------------------------------------------------------------
# the same losses, split over the ranks of a data-parallel step


def loss_sums(
    method: str,
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    *,
    tau: float = 1.0,
    student_scores: torch.Tensor | None = None,
    teacher_attributions: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    attribution_mask: torch.Tensor | None = None,
    xai_absolute: bool = False,
    xai_centered: bool = False,
) -> dict[str, torch.Tensor]:
    """The sums over this part of a batch of what :func:`distillation_loss` averages: ``ce`` (summed
    cross-entropy), ``kl`` (summed ``tau**2 * KL``), ``mse`` (summed squared error), ``xai`` (summed
    ``0.5 * (1 - cos)`` over the attributed texts). Summed over the parts of a batch and put through
    :func:`combine_sums`, they give :func:`distillation_loss` of the whole batch."""
    out = {"ce": F.cross_entropy(student_logits, labels, reduction="sum")}
    if method == "none":
        return out
    if teacher_logits is None:
        raise EdgekdValueError(f"loss_sums: method {method!r} needs teacher_logits")
    if method == "mse":
        _same_shape(student_logits, teacher_logits, "mse_loss")
        out["mse"] = F.mse_loss(student_logits, teacher_logits.to(student_logits.dtype), reduction="sum")
        return out
    _same_shape(student_logits, teacher_logits, "kl_loss")
    log_ps = F.log_softmax(student_logits / tau, dim=-1)
    log_pt = F.log_softmax(teacher_logits.to(student_logits.dtype) / tau, dim=-1)
    out["kl"] = (log_pt.exp() * (log_pt - log_ps)).sum() * (tau * tau)
    if method == "dixtill":
        if student_scores is None or teacher_attributions is None or attention_mask is None:
            raise EdgekdValueError("loss_sums: method 'dixtill' needs student_scores, teacher_attributions and "
                                   "attention_mask")
        per_text = xai_per_text(teacher_attributions, student_scores, attention_mask,
                                absolute=xai_absolute, centered=xai_centered)
        w = torch.ones_like(per_text) if attribution_mask is None else attribution_mask.to(per_text.dtype)
        out["xai"] = (per_text * w).sum()
    return out


def combine_sums(method: str, sums: dict, n: int, n_attributed: int, *, num_classes: int, alpha: float = 0.5,
                 variant: str = "paper", kl_mean: float | None = None):
    """:func:`distillation_loss` from :func:`loss_sums` of a batch of ``n`` texts, ``n_attributed`` of
    them with teacher attributions (tensors or floats). With ``sums`` of one part of the batch it is
    that part's share of the batch loss; the ``code`` variant's ``1 - exp(-KL)`` is not a sum, so there
    ``kl_mean`` (the whole batch's mean KL, all-reduced) linearises it: the gradient is exact, the
    value is not the part's share."""
    ce = sums["ce"] / n
    if method == "none":
        return ce
    if method == "mse":
        return (1 - alpha) * ce + alpha * sums["mse"] / (n * num_classes)
    kl = sums["kl"] / n
    if method == "kl":
        return (1 - alpha) * ce + alpha * kl
    xai = sums["xai"] / n_attributed if n_attributed > 0 else sums["xai"] * 0.0
    if variant == "paper":
        return (1 - alpha) * ce + alpha * (kl + xai)
    if kl_mean is None:
        e = torch.exp(-kl) if isinstance(kl, torch.Tensor) else math.exp(-kl)
        return 0.1 * ce + 0.9 * (1.0 - e) + 0.9 * xai
    return 0.1 * ce + 0.9 * math.exp(-kl_mean) * kl + 0.9 * xai


__all__ = [
    "METHODS",
    "VARIANTS",
    "cross_entropy",
    "kl_loss",
    "mse_loss",
    "xai_loss",
    "xai_per_text",
    "distillation_loss",
    "loss_sums",
    "combine_sums",
]
