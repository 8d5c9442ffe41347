"""Token-level KD divergences, written once: the formulas shared by ``edgekd.llm.losses`` (the public
API and the tests' oracle) and the ``edgekd::fused_linear_kd`` op (its chunked fallback and its
launchers). This module sits on the ops floor so that the ops never import ``edgekd.llm``.

Every divergence is a function of two *bucket* distributions of one token position: the teacher's
``p`` and the student's ``Q``, given as log-probabilities ``lp``, ``lq`` of shape (n, K). With a
dense teacher the buckets are the V vocabulary entries; with a sparse teacher (top-k log-probs plus
the log of the remaining mass) they are the k cached tokens plus one *tail* bucket, and the
student's probabilities are grouped the same way (``Q_tail`` = the student's mass outside the
teacher's top-k). Temperature, masking and the reduction are applied by the callers.

Divergences (sums over the buckets b of one position; ``0 log 0 = 0``):

* ``forward_kl``        KL(p || Q) = sum p (log p - log Q)
* ``reverse_kl``        KL(Q || p) = sum Q (log Q - log p)
* ``jsd``               generalized JSD(beta) = beta KL(p || M) + (1 - beta) KL(Q || M),
  M = beta p + (1 - beta) Q; as in TRL's GKD, ``beta = 0`` is *defined* as forward KL(p || Q) and
  ``beta = 1`` as reverse KL(Q || p) (the mixture formula itself tends to 0 at both ends).
* ``tv``                total variation 0.5 sum |p - Q|
* ``skew_forward_kl``   DistiLLM SKL(alpha) = KL(p || alpha p + (1 - alpha) Q)
* ``skew_reverse_kl``   DistiLLM SRKL(alpha) = KL(Q || (1 - alpha) p + alpha Q)
* ``akl``               adaptive KL (Wu et al. 2024): sort the teacher's buckets by p, descending;
  the *head* is the prefix whose cumulative teacher mass is <= mu (``AKL_MU`` = 0.5), the *tail*
  the rest; gaps g_head = sum_head |p - Q|, g_tail = sum_tail |p - Q|;
  AKL = g_head / (g_head + g_tail) * FKL + g_tail / (g_head + g_tail) * RKL, the two weights
  treated as constants (stop-gradient).
* ``clipped_kl``        a clipped KL *in the spirit of* DAC-KL (Zhang et al. 2024). DAC-KL clips
  the teacher's distribution to a high-density region chosen by a learned sub-network that is not
  public; this is an approximation: keep the teacher's top buckets whose cumulative mass reaches
  1 - alpha (the bucket that crosses it included), merge all other buckets into one for both p and
  Q, and take forward KL over the kept buckets plus the merged one.

The head/tail splits use a per-row threshold: bucket b is in the head (AKL) / kept (clipped) iff
``p_b >= thr``, thr the smallest sorted teacher probability that satisfies the cumulative rule
(:func:`split_threshold`); tied teacher probabilities therefore always fall on the same side.

Gradients. A divergence L depends on the student only through Q = softmax(bucket logits). With
``G_b = Q_b dL/dQ_b`` (:func:`divergence_grad`), the gradient for the bucket logits is
``G - Q sum_b G_b``; a token j of a multi-token bucket b gets ``(q_j / Q_b) G_b - q_j sum G``.
Terms of ``G`` that are a constant multiple of ``Q`` cancel in that expression and are dropped.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor

__all__ = [
    "effective_loss",
    "check_loss_settings",
    "check_sparse_teacher",
    "LOSS_NAMES",
    "AKL_MU",
    "divergence",
    "divergence_grad",
    "split_threshold",
    "sparse_buckets",
    "logits_grad_from_buckets",
]

LOSS_NAMES = (
    "forward_kl",
    "reverse_kl",
    "jsd",
    "tv",
    "skew_forward_kl",
    "skew_reverse_kl",
    "akl",
    "clipped_kl",
)
#: AKL's head/tail split: cumulative teacher mass of the head
AKL_MU = 0.5


def _xdiff(w: Tensor, la: Tensor, lb: Tensor) -> Tensor:
    """``w * (la - lb)`` with the convention ``0 * anything = 0`` (safe for autograd)."""
    pos = w > 0
    return torch.where(pos, w * (la - torch.where(pos, lb, torch.zeros_like(lb))), torch.zeros_like(w))


def _logmix(la: Tensor, wa: float, lb: Tensor, wb: float) -> Tensor:
    """log(wa exp(la) + wb exp(lb)) for weights in (0, 1)."""
    return torch.logaddexp(la + math.log(wa), lb + math.log(wb))


def split_threshold(p: Tensor, mass: float, exclusive: bool) -> Tensor:
    """Per-row threshold of the head/tail split (see the module docstring).

    Sorted descending p_(1) >= p_(2) >= ..., cumulative c_j. Inclusive rule (AKL): the head is the
    j with c_j <= mass; exclusive rule (clipped KL): the kept j have c_j - p_(j) < mass. Returns
    the smallest p_(j) of that prefix, +inf when the prefix is empty.
    """
    s, _ = torch.sort(p.detach(), dim=-1, descending=True)
    c = torch.cumsum(s, dim=-1)
    cond = (c - s < mass) if exclusive else (c <= mass)
    inf = torch.full_like(s, float("inf"))
    return torch.where(cond, s, inf).amin(dim=-1)


def _akl_weights(p: Tensor, q: Tensor) -> Tuple[Tensor, Tensor]:
    head = p >= split_threshold(p, AKL_MU, exclusive=False).unsqueeze(-1)
    gap = (p - q).abs().detach()
    g_head = (gap * head).sum(-1)
    g_tail = (gap * ~head).sum(-1)
    den = (g_head + g_tail).clamp_min(torch.finfo(p.dtype).tiny)
    return (g_head / den).unsqueeze(-1), (g_tail / den).unsqueeze(-1)


def _clip_parts(lp: Tensor, lq: Tensor, alpha: float):
    p = lp.exp()
    keep = p >= split_threshold(p, 1.0 - alpha, exclusive=True).unsqueeze(-1)
    clip = ~keep
    any_clip = clip.any(dim=-1, keepdim=True)
    pc = (p * clip).sum(-1, keepdim=True)
    neg = torch.full_like(lq, float("-inf"))
    lqc = torch.logsumexp(torch.where(clip | ~any_clip, lq, neg), dim=-1, keepdim=True)
    lpc = torch.where(pc > 0, pc, torch.ones_like(pc)).log()
    return p, keep, clip, any_clip, pc, lpc, lqc


def effective_loss(loss: str, beta: float, alpha: float) -> str:
    """The loss actually computed: jsd at beta = 0 / 1 is forward / reverse KL, the skew KLs at
    alpha = 0 are the plain KLs."""
    if (loss == "jsd" and beta == 0.0) or (loss == "skew_forward_kl" and alpha == 0.0):
        return "forward_kl"
    if (loss == "jsd" and beta == 1.0) or (loss == "skew_reverse_kl" and alpha == 0.0):
        return "reverse_kl"
    return loss


def divergence(lp: Tensor, lq: Tensor, loss: str, beta: float = 0.5, alpha: float = 0.1) -> Tensor:
    """Per-row divergence (n,) between teacher ``lp`` and student ``lq`` bucket log-probs (n, K).

    Differentiable in ``lq`` by autograd (the oracle of the tests); see the module docstring for
    the formulas. ``loss`` must be one of :data:`LOSS_NAMES` (callers validate).
    """
    p, q = lp.exp(), lq.exp()
    loss = effective_loss(loss, beta, alpha)
    if loss == "forward_kl":
        return _xdiff(p, lp, lq).sum(-1)
    if loss == "reverse_kl":
        return _xdiff(q, lq, lp).sum(-1)
    if loss == "jsd":
        lm = _logmix(lp, beta, lq, 1.0 - beta)
        return beta * _xdiff(p, lp, lm).sum(-1) + (1.0 - beta) * _xdiff(q, lq, lm).sum(-1)
    if loss == "tv":
        return 0.5 * (p - q).abs().sum(-1)
    if loss == "skew_forward_kl":
        if alpha >= 1.0:
            return torch.zeros_like(lq[..., 0])
        lm = _logmix(lp, alpha, lq, 1.0 - alpha)
        return _xdiff(p, lp, lm).sum(-1)
    if loss == "skew_reverse_kl":
        if alpha >= 1.0:
            return torch.zeros_like(lq[..., 0])
        lm = _logmix(lp, 1.0 - alpha, lq, alpha)
        return _xdiff(q, lq, lm).sum(-1)
    if loss == "akl":
        w_head, w_tail = _akl_weights(p, q)
        return (w_head * _xdiff(p, lp, lq) + w_tail * _xdiff(q, lq, lp)).sum(-1)
    if loss == "clipped_kl":
        p, keep, clip, any_clip, pc, lpc, lqc = _clip_parts(lp, lq, alpha)
        kept = _xdiff(p * keep, lp, lq).sum(-1)
        merged = torch.where(any_clip & (pc > 0), pc * (lpc - lqc), torch.zeros_like(pc)).squeeze(-1)
        return kept + merged
    raise KeyError(loss)


def divergence_grad(lp: Tensor, lq: Tensor, loss: str, beta: float = 0.5, alpha: float = 0.1) -> Tensor:
    """``G = Q * dL/dQ`` (n, K) of :func:`divergence` (up to terms proportional to Q, which cancel).

    The gradient for the bucket logits is ``G - Q * G.sum(-1)``; see the module docstring.
    """
    p, q = lp.exp(), lq.exp()
    zero = torch.zeros_like(q)
    loss = effective_loss(loss, beta, alpha)
    if loss == "forward_kl":
        return -p
    if loss == "reverse_kl":
        return _xdiff(q, lq, lp)
    if loss == "jsd":
        lm = _logmix(lp, beta, lq, 1.0 - beta)
        return (1.0 - beta) * _xdiff(q, lq, lm)
    if loss == "tv":
        return 0.5 * q * torch.sign(q - p)
    if loss == "skew_forward_kl":
        if alpha >= 1.0:
            return zero
        lm = _logmix(lp, alpha, lq, 1.0 - alpha)
        return torch.where(p > 0, -(1.0 - alpha) * torch.exp(lp + lq - lm), zero)
    if loss == "skew_reverse_kl":
        if alpha >= 1.0:
            return zero
        lm = _logmix(lp, 1.0 - alpha, lq, alpha)
        return torch.where(q > 0, q * (lq - lm) - alpha * torch.exp(2.0 * lq - lm), zero)
    if loss == "akl":
        w_head, w_tail = _akl_weights(p, q)
        return -w_head * p + w_tail * _xdiff(q, lq, lp)
    if loss == "clipped_kl":
        p, keep, clip, any_clip, pc, lpc, lqc = _clip_parts(lp, lq, alpha)
        merged = torch.where(clip & (pc > 0), -pc * torch.exp(lq - lqc), zero)
        return torch.where(keep, -p, merged)
    raise KeyError(loss)


def sparse_buckets(
    x: Tensor, topk_ids: Tensor, topk_logprobs: Tensor, tail_logmass: Tensor
) -> Tuple[Tensor, Tensor, Tensor]:
    """Teacher and student bucket log-probs for a sparse teacher.

    ``x`` (n, V) are the student's (temperature-scaled) logits. Returns ``(lp, lq, lse)`` with
    ``lp``, ``lq`` of shape (n, k + 1) (the last bucket is the tail) or (n, k) when k = V (no tail),
    and ``lse`` (n,) the student's log-sum-exp. Differentiable in ``x``.
    """
    n, V = x.shape
    k = topk_ids.shape[-1]
    lse = torch.logsumexp(x, dim=-1)
    lq_top = x.gather(-1, topk_ids) - lse.unsqueeze(-1)
    if k >= V:
        return topk_logprobs, lq_top, lse
    in_top = torch.zeros_like(x, dtype=torch.bool).scatter_(-1, topk_ids, True)
    x_tail = torch.where(in_top, torch.full_like(x, float("-inf")), x)
    lq_tail = torch.logsumexp(x_tail, dim=-1) - lse
    lp = torch.cat([topk_logprobs, tail_logmass.unsqueeze(-1)], dim=-1)
    lq = torch.cat([lq_top, lq_tail.unsqueeze(-1)], dim=-1)
    return lp, lq, lse


def logits_grad_from_buckets(
    G: Tensor, x: Tensor, lse: Tensor, topk_ids: Tensor | None, lq_buckets: Tensor
) -> Tensor:
    """dL/dx (n, V) for the (temperature-scaled) student logits ``x`` from the bucket-level ``G``.

    Dense (``topk_ids`` None): ``G - q * sum G``. Sparse: token j in the top-k gets
    ``G_j - q_j sum G``, a tail token ``q_j (G_tail / Q_tail - sum G)``.
    """
    q = torch.exp(x - lse.unsqueeze(-1))
    S = G.sum(-1, keepdim=True)
    if topk_ids is None:
        return G - q * S
    k = topk_ids.shape[-1]
    if k >= x.shape[-1]:
        tail_coef = torch.zeros_like(S)
    else:
        lq_tail = lq_buckets[:, k:k + 1]
        tail_coef = torch.where(G[:, k:k + 1] != 0, G[:, k:k + 1] * torch.exp(-lq_tail), torch.zeros_like(S))
    out = q * (tail_coef - S)
    top = G[:, :k] - q.gather(-1, topk_ids) * S
    return out.scatter(-1, topk_ids, top)


# --------------------------------------------------------------------------------------------
# Validation shared by edgekd.llm.losses and edgekd::fused_linear_kd
# --------------------------------------------------------------------------------------------
def check_loss_settings(
    loss: str, temperature: float, beta: float, alpha: float, ce_weight: float, who: str = "kd_loss"
) -> None:
    """Raise :class:`EdgekdValueError` naming a bad loss name or setting."""
    from edgekd.errors import EdgekdValueError

    if loss not in LOSS_NAMES:
        raise EdgekdValueError(f"{who}: unknown loss {loss!r}; known: {', '.join(LOSS_NAMES)}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise EdgekdValueError(f"{who}: temperature must be a finite number > 0, got {temperature}")
    for name, v in (("beta", beta), ("alpha", alpha), ("ce_weight", ce_weight)):
        if not 0.0 <= v <= 1.0:
            raise EdgekdValueError(f"{who}: {name} must be in [0, 1], got {v}")


def lead_flat(t: Tensor, lead: tuple, name: str, trailing: int, who: str) -> Tensor:
    from edgekd.errors import EdgekdValueError

    if tuple(t.shape[: t.dim() - trailing]) != tuple(lead):
        raise EdgekdValueError(f"{who}: '{name}' has shape {tuple(t.shape)}, expected leading dims {tuple(lead)}")
    return t.reshape((-1,) + tuple(t.shape[t.dim() - trailing:]))


def check_sparse_teacher(teacher, lead: tuple, V: int, temperature: float, who: str = "kd_loss"):
    """Validate a sparse teacher (``topk_ids``, ``topk_logprobs``, ``tail_logmass`` and optionally
    ``temperature`` attributes, e.g. ``edgekd.llm.SparseTeacher``) against the student's leading
    dims and vocabulary ``V``; returns flattened ``(ids (N, k) int64, logprobs (N, k), tail (N,))``."""
    from edgekd.errors import EdgekdValueError

    try:
        ids, lps, tail = teacher.topk_ids, teacher.topk_logprobs, teacher.tail_logmass
    except AttributeError:
        raise EdgekdValueError(f"{who}: the sparse teacher needs topk_ids, topk_logprobs and tail_logmass") from None
    if not all(isinstance(t, Tensor) for t in (ids, lps, tail)):
        raise EdgekdValueError(f"{who}: sparse teacher fields must be tensors")
    t_temp = float(getattr(teacher, "temperature", 1.0))
    if abs(t_temp - temperature) > 1e-12:
        raise EdgekdValueError(
            f"{who}: the sparse teacher holds log-probs at temperature {t_temp} but the loss uses "
            f"temperature {temperature}; cache the teacher at the loss's temperature"
        )
    if ids.dtype not in (torch.int64, torch.int32) or tuple(ids.shape) != tuple(lps.shape):
        raise EdgekdValueError(
            f"{who}: sparse teacher topk_ids must be integer with the shape of topk_logprobs, "
            f"got {ids.dtype} {tuple(ids.shape)} and {tuple(lps.shape)}"
        )
    k = ids.shape[-1] if ids.dim() else 0
    if k < 1 or k > V:
        raise EdgekdValueError(f"{who}: sparse teacher k = {k} must be in [1, V = {V}] (k larger than the vocabulary)")
    ids = lead_flat(ids, lead, "topk_ids", 1, who).long()
    lps = lead_flat(lps, lead, "topk_logprobs", 1, who)
    tail = lead_flat(tail, lead, "tail_logmass", 0, who)
    if not torch.compiler.is_compiling():
        if bool(((ids < 0) | (ids >= V)).any()):
            raise EdgekdValueError(f"{who}: sparse teacher token ids out of the student vocabulary [0, {V})")
        if k > 1 and bool((ids.sort(dim=-1).values.diff(dim=-1) == 0).any()):
            raise EdgekdValueError(f"{who}: sparse teacher has duplicate token ids in a row")
        if bool(torch.isnan(lps).any() | torch.isnan(tail).any()):
            raise EdgekdValueError(f"{who}: sparse teacher log-probs contain NaN")
    return ids, lps, tail
