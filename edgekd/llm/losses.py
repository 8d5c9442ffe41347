"""Token-level knowledge-distillation losses for causal LMs: one zoo, one set of semantics.

References: torchtune's ``ForwardKLLoss`` (masked mean over valid tokens) and TRL's GKD
(``generalized_jsd_loss``). The divergences and their formulas are written once, in
:mod:`edgekd.ops.kd_math` (also used by the fused op ``edgekd::fused_linear_kd``):

==================  ==========================================================================
``forward_kl``      KL(p || q) = sum_v p_v (log p_v - log q_v)          (mode covering)
``reverse_kl``      KL(q || p) = sum_v q_v (log q_v - log p_v)          (mode seeking)
``jsd``             beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q;
                    beta = 0 is forward KL(p || q), beta = 1 is reverse KL(q || p) (TRL GKD)
``tv``              0.5 sum_v |p_v - q_v|
``skew_forward_kl`` KL(p || alpha p + (1 - alpha) q)                    (DistiLLM SKL)
``skew_reverse_kl`` KL(q || (1 - alpha) p + alpha q)                    (DistiLLM SRKL)
``akl``             w_head FKL + w_tail RKL, weights from the head/tail gaps |p - q| with the head
                    = teacher's top tokens of cumulative mass <= 0.5 (AKL; weights stop-gradient)
``clipped_kl``      forward KL after merging the teacher's low-density tokens (outside the top
                    tokens that reach mass 1 - alpha) into one bucket; an *approximation* in the
                    spirit of DAC-KL, whose learned clipping sub-network is not public
==================  ==========================================================================

p is the teacher's and q the student's distribution at one position, both at temperature tau:
``p = softmax(teacher_logits / tau)``, ``q = softmax(student_logits / tau)``.

**The tau^2 factor** (Hinton et al.) is applied here and only here: the KD term of a position is
``tau^2 * D(p, q)``, so its gradient keeps the same scale at any temperature.

**Mixing CE**: ``loss = (1 - ce_weight) * KD + ce_weight * CE`` with CE the next-token cross
entropy of the student at temperature 1 against ``labels``; ``ce_weight = 1`` is CE-only training.

**Reduction**: the per-position losses of the *valid* positions are summed and divided by
``num_valid_tokens``. By default that is the number of valid positions of this call; under
gradient accumulation pass the number of valid positions of the whole accumulated batch to every
micro-batch, so that the sum of the micro-batch losses (and of their gradients) equals the loss
of the batch processed at once (TRL issue #4719).

**Valid positions**: ``mask`` (bool/int, nonzero = valid) and/or ``labels != ignore_index``
(-100); padding and prompt positions are excluded from both the KD term and CE.

**Sparse teachers**: ``teacher`` may be a :class:`SparseTeacher` (the teacher's top-k log-probs
at its temperature plus the log of the remaining mass, as stored by :mod:`edgekd.llm.cache`).
Every loss then works on k + 1 buckets: the k cached tokens and one tail bucket; the student's
probabilities are grouped the same way (its tail = its mass outside the teacher's top-k). With
k = V it equals the dense loss.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from edgekd.errors import EdgekdValueError
from edgekd.ops import kd_math

__all__ = ["LOSSES", "KDLossConfig", "SparseTeacher", "kd_loss", "IGNORE_INDEX"]

IGNORE_INDEX = -100

#: registered loss names -> one-line description
LOSSES = {
    "forward_kl": "KL(p || q), p teacher, q student",
    "reverse_kl": "KL(q || p)",
    "jsd": "generalized JSD with beta (0: forward KL, 1: reverse KL)",
    "tv": "total variation 0.5 |p - q|_1",
    "skew_forward_kl": "KL(p || alpha p + (1 - alpha) q) (DistiLLM)",
    "skew_reverse_kl": "KL(q || (1 - alpha) p + alpha q) (DistiLLM)",
    "akl": "adaptive KL: head/tail-weighted FKL + RKL (AKL, mu = 0.5)",
    "clipped_kl": "forward KL with the teacher's low-density tail merged (approximates DAC-KL)",
}
assert tuple(LOSSES) == kd_math.LOSS_NAMES


class SparseTeacher(NamedTuple):
    """A teacher distribution stored sparsely: top-k token ids and log-probs plus the tail.

    ``topk_ids`` (..., k) int64, ``topk_logprobs`` (..., k) float, ``tail_logmass`` (...) float:
    log(1 - sum exp(topk_logprobs)) (``-inf`` when the top-k hold all the mass). ``temperature``
    is the temperature at which the log-probs were computed; :func:`kd_loss` requires it to equal
    the loss's temperature (a softened tail cannot be recovered from the stored mass).
    """

    topk_ids: Tensor
    topk_logprobs: Tensor
    tail_logmass: Tensor
    temperature: float = 1.0


@dataclass
class KDLossConfig:
    """Settings of a token-level KD loss (see :func:`kd_loss`); ``topk`` is the sparse-cache k
    (None: dense teacher logits)."""

    loss: str = "forward_kl"
    temperature: float = 1.0
    beta: float = 0.5
    alpha: float = 0.1
    ce_weight: float = 0.0
    topk: Optional[int] = None

    def validate(self) -> None:
        kd_math.check_loss_settings(self.loss, self.temperature, self.beta, self.alpha, self.ce_weight, "KDLossConfig")
        if self.topk is not None and int(self.topk) < 1:
            raise EdgekdValueError(f"KDLossConfig: topk must be >= 1 or None, got {self.topk}")


def valid_positions(
    lead: tuple, device, mask: Optional[Tensor], labels: Optional[Tensor], ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """(N,) bool: positions that count (``mask`` nonzero and ``labels != ignore_index``)."""
    valid = torch.ones(int(math.prod(lead)), dtype=torch.bool, device=device)
    if mask is not None:
        if mask.dtype.is_floating_point:
            raise EdgekdValueError(f"kd_loss: 'mask' must be bool or integer, got {mask.dtype}")
        valid = valid & (kd_math.lead_flat(mask, lead, "mask", 0, "kd_loss") != 0)
    if labels is not None:
        valid = valid & (kd_math.lead_flat(labels, lead, "labels", 0, "kd_loss") != ignore_index)
    return valid


def kd_loss(
    student_logits: Tensor,
    teacher: Union[Tensor, SparseTeacher],
    *,
    loss: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    alpha: float = 0.1,
    mask: Optional[Tensor] = None,
    num_valid_tokens: Optional[Union[int, float, Tensor]] = None,
    ce_weight: float = 0.0,
    labels: Optional[Tensor] = None,
) -> Tensor:
    """Token-level KD loss (scalar) of ``student_logits`` (N, V) or (B, T, V) against ``teacher``.

    ``teacher``: dense logits of the same shape, or a :class:`SparseTeacher` with the same leading
    dims. See the module docstring for the losses, temperature (tau^2 applied once), masking,
    reduction (``sum over valid positions / num_valid_tokens``) and CE mixing
    (``(1 - ce_weight) KD + ce_weight CE``; ``labels`` required when ``ce_weight > 0``, positions
    with ``labels == -100`` are invalid). Raises :class:`EdgekdValueError` naming the problem.
    """
    kd_math.check_loss_settings(loss, temperature, beta, alpha, ce_weight, "kd_loss")
    if not isinstance(student_logits, Tensor) or student_logits.dim() not in (2, 3):
        raise EdgekdValueError("kd_loss: student_logits must be a (N, V) or (B, T, V) tensor")
    if not student_logits.dtype.is_floating_point:
        raise EdgekdValueError(f"kd_loss: student_logits must be floating point, got {student_logits.dtype}")
    lead, V = tuple(student_logits.shape[:-1]), student_logits.shape[-1]
    if math.prod(lead) == 0 or V == 0:
        raise EdgekdValueError(f"kd_loss: empty input: student_logits has shape {tuple(student_logits.shape)}")
    if ce_weight > 0 and labels is None:
        raise EdgekdValueError("kd_loss: ce_weight > 0 needs labels")
    x = student_logits.reshape(-1, V)
    if not bool(torch.isfinite(x).all()):
        raise EdgekdValueError("kd_loss: student_logits contain NaN or inf")
    valid = valid_positions(lead, x.device, mask, labels)
    if num_valid_tokens is None:
        num_valid_tokens = int(valid.sum())
        if num_valid_tokens == 0:
            raise EdgekdValueError("kd_loss: no valid positions (all masked or ignore_index); pass num_valid_tokens")
    elif float(num_valid_tokens) <= 0:
        raise EdgekdValueError(f"kd_loss: num_valid_tokens must be > 0, got {num_valid_tokens}")

    tau = float(temperature)
    xs = x / tau
    if isinstance(teacher, SparseTeacher):
        ids, lps, tail = kd_math.check_sparse_teacher(teacher, lead, V, tau, "kd_loss")
        lp, lq, _ = kd_math.sparse_buckets(xs, ids, lps.to(x.dtype), tail.to(x.dtype))
    elif isinstance(teacher, Tensor):
        if tuple(teacher.shape) != tuple(student_logits.shape):
            raise EdgekdValueError(
                f"kd_loss: teacher logits have shape {tuple(teacher.shape)} but the student's are "
                f"{tuple(student_logits.shape)} (a vocabulary mismatch needs a token mapping)"
            )
        t = teacher.reshape(-1, V).detach().to(x.dtype)
        if bool(torch.isnan(t).any()):
            raise EdgekdValueError("kd_loss: teacher logits contain NaN")
        lp = torch.log_softmax(t / tau, dim=-1)
        lq = torch.log_softmax(xs, dim=-1)
    else:
        raise EdgekdValueError(f"kd_loss: teacher must be a Tensor or SparseTeacher, got {type(teacher).__name__}")

    per_pos = x.new_zeros(x.shape[0])
    if ce_weight < 1.0:
        per_pos = per_pos + (1.0 - ce_weight) * tau * tau * kd_math.divergence(lp, lq, loss, beta, alpha)
    if ce_weight > 0.0:
        lab = labels.reshape(-1)
        if bool(((lab != IGNORE_INDEX) & ((lab < 0) | (lab >= V))).any()):
            raise EdgekdValueError(f"kd_loss: labels must be in [0, {V}) or {IGNORE_INDEX}")
        ce = F.cross_entropy(x, lab.masked_fill(~valid, 0), reduction="none")
        per_pos = per_pos + ce_weight * ce
    per_pos = torch.where(valid, per_pos, torch.zeros_like(per_pos))
    return per_pos.sum() / num_valid_tokens
