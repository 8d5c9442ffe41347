"""Fused output projection + token-level KD loss: ``edgekd::fused_linear_kd``.

Given student hidden states ``h`` (N, H), the output projection ``W`` (V, H) (optional bias ``b``)
and the teacher (dense logits (N, V), or a sparse top-k cache: ids, log-probs and tail mass), it
computes ``sum over valid rows of (1 - w) tau^2 D(p, q) + w CE`` (the losses and semantics of
:mod:`edgekd.ops.kd_math` / :func:`edgekd.llm.kd_loss`, ``q = softmax((h W^T + b) / tau)``) and its
gradients for ``h``, ``W`` and ``b`` **without materialising the (N, V) student logits**: rows are
processed in chunks of C rows, one GEMM per chunk gives the chunk's (C, V) logits, a per-row pass
(log-sum-exp, the divergence and its logit gradient) overwrites them with dL/dz, and two more GEMMs
add the chunk's share to ``grad_h`` and ``grad_W``. Peak extra memory: C x V + V x H.

Design choice (as Liger-Kernel's fused linear cross entropy): the *forward* op computes the
gradients along with the loss and returns them as extra outputs; autograd's backward only scales
them by ``grad_output`` (plain tensor ops, so torch.compile traces it and no backward op is
needed). First-order gradients only.

Sections (the same in every op module, see STYLE.md): schema, fake kernel, CPU fallback (the
chunked PyTorch implementation :func:`chunked_forward`, only when ``edgekd._C`` is missing; else the
C++ kernel in ``csrc/cpu/fused_linear_kd.cpp``), CUDA (the Triton launcher in
``kernels/fused_linear_kd.py`` for a dense teacher; a sparse teacher on CUDA runs
:func:`chunked_forward`; no Triton: ``MissingTritonError``, the ops' one policy), autograd, public
function :func:`fused_linear_kd`, reference (:func:`fused_linear_kd_reference`: materialised logits,
autograd), input checks. The op ``edgekd::fused_linear_kd(...) -> (loss_sum, grad_hidden,
grad_weight, grad_bias)`` returns sums over the valid rows; the public function divides by
``num_valid_tokens``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from edgekd import _ext
from edgekd.errors import EdgekdValueError
from edgekd.ops import kd_math
from edgekd.ops._common import tracing, triton_kernels

__all__ = [
    "fused_linear_kd",
    "fused_linear_kd_reference",
    "chunked_forward",
    "default_chunk_size",
    "check_fused_linear_kd_inputs",
]

IGNORE_INDEX = -100


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------
_OP = "edgekd::fused_linear_kd"

torch.library.define(
    _OP,
    "(Tensor hidden, Tensor weight, Tensor? bias, Tensor valid, Tensor? teacher_logits, Tensor? topk_ids, "
    "Tensor? topk_logprobs, Tensor? tail_logmass, Tensor? labels, str loss, float temperature, float beta, "
    "float alpha, float ce_weight, int chunk_size) -> (Tensor, Tensor, Tensor, Tensor)",
)


# --------------------------------------------------------------------------------------------
# Fake kernel
# --------------------------------------------------------------------------------------------
@torch.library.register_fake(_OP)
def _fake(hidden, weight, bias, valid, teacher_logits, topk_ids, topk_logprobs, tail_logmass, labels,
          loss, temperature, beta, alpha, ce_weight, chunk_size):
    return (
        hidden.new_empty(()),
        torch.empty_like(hidden),
        torch.empty_like(weight),
        weight.new_empty((weight.shape[0],)),
    )


# --------------------------------------------------------------------------------------------
# CPU fallback (only when edgekd._C is missing)
# --------------------------------------------------------------------------------------------
if not _ext.has_extension():  # a second CPU registration would silently override the C++ kernel

    @torch.library.register_kernel(_OP, "cpu")
    def _cpu_fallback(hidden, weight, bias, valid, teacher_logits, topk_ids, topk_logprobs, tail_logmass,
                      labels, loss, temperature, beta, alpha, ce_weight, chunk_size):
        _ext.warn_fallback("fused_linear_kd")
        return chunked_forward(hidden, weight, bias, valid, teacher_logits, topk_ids, topk_logprobs,
                               tail_logmass, labels, loss, temperature, beta, alpha, ce_weight, chunk_size)


# --------------------------------------------------------------------------------------------
# CUDA (Triton)
# --------------------------------------------------------------------------------------------
@torch.library.register_kernel(_OP, "cuda")
def _cuda(hidden, weight, bias, valid, teacher_logits, topk_ids, topk_logprobs, tail_logmass, labels,
          loss, temperature, beta, alpha, ce_weight, chunk_size):
    kernels = triton_kernels("fused_linear_kd", "fused_linear_kd")  # no Triton: MissingTritonError
    if teacher_logits is None:  # sparse teacher: chunked PyTorch (C x V per chunk, no (N, V) tensor)
        return chunked_forward(hidden, weight, bias, valid, teacher_logits, topk_ids, topk_logprobs, tail_logmass,
                               labels, loss, temperature, beta, alpha, ce_weight, chunk_size)
    return triton_forward(hidden, weight, bias, valid, teacher_logits, labels, loss, temperature, beta, alpha,
                          ce_weight, chunk_size, kernels=kernels)


def triton_forward(hidden, weight, bias, valid, teacher_logits, labels, loss, temperature, beta, alpha, ce_weight,
                   chunk_size, kernels=None):
    """The Triton path (dense teacher): the per-row head/tail thresholds of AKL / clipped KL are
    computed here (a sort on the device), the rest in ``edgekd.kernels.fused_linear_kd``."""
    _k = kernels if kernels is not None else triton_kernels("fused_linear_kd", "fused_linear_kd")
    N, H = hidden.shape
    V = weight.shape[0]
    name = kd_math.effective_loss(loss, beta, alpha)
    thr = None
    if name in ("akl", "clipped_kl"):
        mass, exclusive = (kd_math.AKL_MU, False) if name == "akl" else (1.0 - alpha, True)
        parts = []
        for s in range(0, N, 1024):  # the smallest teacher logit of the head (+inf: empty head)
            t = teacher_logits[s:s + 1024].float()
            p = torch.softmax(t / temperature, dim=-1)
            thr_p = kd_math.split_threshold(p, mass, exclusive).unsqueeze(-1)
            parts.append(torch.where(p >= thr_p, t, torch.full_like(t, float("inf"))).amin(-1))
        thr = torch.cat(parts)
    C = int(chunk_size) if chunk_size > 0 else default_chunk_size(N, V, H)
    return _k.forward(hidden, weight, bias, valid, teacher_logits, labels, name, temperature, beta, alpha,
                      ce_weight, C, thr)


# --------------------------------------------------------------------------------------------
# Autograd
# --------------------------------------------------------------------------------------------
def _setup_context(ctx, inputs, output):
    _, grad_h, grad_w, grad_b = output
    ctx.has_bias = inputs[2] is not None
    ctx.save_for_backward(grad_h, grad_w, grad_b)


def _backward(ctx, grad_loss, _gh, _gw, _gb):
    grad_h, grad_w, grad_b = ctx.saved_tensors
    gb = grad_loss * grad_b if ctx.has_bias else None
    return (grad_loss * grad_h, grad_loss * grad_w, gb) + (None,) * 12


torch.library.register_autograd(_OP, _backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------
# Public function
# --------------------------------------------------------------------------------------------
def fused_linear_kd(
    hidden: Tensor,
    weight: Tensor,
    teacher,
    *,
    bias: Optional[Tensor] = None,
    loss: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    alpha: float = 0.1,
    mask: Optional[Tensor] = None,
    labels: Optional[Tensor] = None,
    ce_weight: float = 0.0,
    num_valid_tokens=None,
    chunk_size: int = 0,
    validate: bool = True,
) -> Tensor:
    """``kd_loss(hidden @ weight.T + bias, teacher, ...)`` without materialising the logits.

    Args:
        hidden: (N, H) student hidden states (flatten (B, T, H) first).
        weight: (V, H) output projection; ``bias`` (V,) optional.
        teacher: dense teacher logits (N, V), or a sparse teacher (an object with ``topk_ids``
            (N, k), ``topk_logprobs`` (N, k), ``tail_logmass`` (N,) and optionally
            ``temperature``, e.g. ``edgekd.llm.SparseTeacher``).
        loss, temperature, beta, alpha, ce_weight: as in :func:`edgekd.llm.kd_loss`.
        mask: (N,) nonzero = valid row; ``labels`` (N,) with -100 = ignored row (also invalid).
        num_valid_tokens: the normaliser (default: the number of valid rows); pass the count of
            the whole accumulated batch under gradient accumulation.
        chunk_size: rows per chunk (0: :func:`default_chunk_size`).
        validate: check values (NaN, label and id ranges; one host sync each).

    Returns the scalar loss; differentiable in ``hidden``, ``weight`` and ``bias`` (first order).
    """
    t, ids, lps, tail = check_fused_linear_kd_inputs(hidden, weight, bias, teacher, labels, mask, loss, temperature,
                                                     beta, alpha, ce_weight, validate)
    N = hidden.shape[0]
    valid = torch.ones(N, dtype=torch.bool, device=hidden.device)
    if mask is not None:
        valid = valid & (mask != 0)
    if labels is not None:
        valid = valid & (labels != IGNORE_INDEX)
        labels = labels.long().contiguous()
    if num_valid_tokens is None:
        num_valid_tokens = valid.sum()
        if not tracing() and int(num_valid_tokens) == 0:
            raise EdgekdValueError("fused_linear_kd: no valid rows (all masked or ignore_index); pass num_valid_tokens")
    total, _, _, _ = torch.ops.edgekd.fused_linear_kd.default(
        hidden.contiguous(), weight.contiguous(), None if bias is None else bias.contiguous(), valid,
        t, ids, lps, tail, labels, loss, float(temperature), float(beta), float(alpha), float(ce_weight),
        int(chunk_size),
    )
    return total / num_valid_tokens


# --------------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------------
def fused_linear_kd_reference(
    hidden: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    valid: Tensor,
    teacher_logits: Optional[Tensor],
    topk_ids: Optional[Tensor],
    topk_logprobs: Optional[Tensor],
    tail_logmass: Optional[Tensor],
    labels: Optional[Tensor],
    loss: str,
    temperature: float,
    beta: float,
    alpha: float,
    ce_weight: float,
) -> Tensor:
    """Summed loss of the valid rows on the materialised (N, V) logits, differentiable by autograd."""
    z = hidden @ weight.t()
    if bias is not None:
        z = z + bias
    rows, _ = _rows_loss_and_grad(z, teacher_logits, topk_ids, topk_logprobs, tail_logmass, labels,
                                  loss, temperature, beta, alpha, ce_weight, need_grad=False)
    return torch.where(valid, rows, torch.zeros_like(rows)).sum()


def _rows_loss_and_grad(z, t, ids, lps, tail, labels, loss, tau, beta, alpha, w, need_grad=True):
    """Per-row loss (n,) and dL/dz (n, V) (None unless ``need_grad``) of logits ``z`` (n, V)."""
    x = z / tau
    if t is not None:
        lp = torch.log_softmax(t.to(z.dtype) / tau, dim=-1)
        lse = torch.logsumexp(x, dim=-1)
        lq = x - lse.unsqueeze(-1)
        ids_b = None
    else:
        lp, lq, lse = kd_math.sparse_buckets(x, ids, lps.to(z.dtype), tail.to(z.dtype))
        ids_b = ids
    rows = torch.zeros_like(z[:, 0])
    grad = torch.zeros_like(z) if need_grad else None
    if w < 1.0:
        rows = rows + (1.0 - w) * tau * tau * kd_math.divergence(lp, lq, loss, beta, alpha)
        if need_grad:
            G = kd_math.divergence_grad(lp, lq, loss, beta, alpha)
            grad = grad + ((1.0 - w) * tau) * kd_math.logits_grad_from_buckets(G, x, lse, ids_b, lq)
    if w > 0.0:
        lab = labels.clamp(min=0)
        lse1 = torch.logsumexp(z, dim=-1)
        rows = rows + w * (lse1 - z.gather(-1, lab.unsqueeze(-1)).squeeze(-1))
        if need_grad:
            sm = torch.exp(z - lse1.unsqueeze(-1))
            grad = grad + w * (sm - torch.zeros_like(sm).scatter_(-1, lab.unsqueeze(-1), 1.0))
    return rows, grad


def default_chunk_size(N: int, V: int, H: int) -> int:
    """Rows per chunk: a power of two near N * H / V (the chunk's logits are then about the size of
    the hidden states, as in Liger-Kernel), clamped to [16, 1024] and to N."""
    target = max(1, (N * H) // max(V, 1))
    c = 1 << max(0, (target - 1).bit_length())
    return int(max(1, min(N, max(16, min(1024, c)))))


def chunked_forward(
    hidden, weight, bias, valid, teacher_logits, topk_ids, topk_logprobs, tail_logmass, labels,
    loss, temperature, beta, alpha, ce_weight, chunk_size,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The op in plain PyTorch, chunk by chunk: ``(loss_sum, grad_hidden, grad_weight, grad_bias)``."""
    N, H = hidden.shape
    V = weight.shape[0]
    C = int(chunk_size) if chunk_size > 0 else default_chunk_size(N, V, H)
    acc = torch.float32 if hidden.dtype in (torch.float16, torch.bfloat16) else hidden.dtype
    grad_h = torch.zeros_like(hidden)
    grad_w = torch.zeros(weight.shape, dtype=acc, device=hidden.device)
    grad_b = torch.zeros(V, dtype=acc, device=hidden.device)
    total = torch.zeros((), dtype=torch.float64, device=hidden.device)
    W = weight.to(acc)
    for s in range(0, N, C):
        e = min(N, s + C)
        h = hidden[s:e].to(acc)
        z = h @ W.t()
        if bias is not None:
            z = z + bias.to(acc)
        sl = slice(s, e)
        rows, g = _rows_loss_and_grad(
            z,
            None if teacher_logits is None else teacher_logits[sl],
            None if topk_ids is None else topk_ids[sl],
            None if topk_logprobs is None else topk_logprobs[sl],
            None if tail_logmass is None else tail_logmass[sl],
            None if labels is None else labels[sl],
            loss, temperature, beta, alpha, ce_weight,
        )
        v = valid[sl]
        rows = torch.where(v, rows, torch.zeros_like(rows))
        g = torch.where(v.unsqueeze(-1), g, torch.zeros_like(g))
        total = total + rows.sum(dtype=torch.float64)
        grad_h[sl] = (g @ W).to(hidden.dtype)
        grad_w.addmm_(g.t(), h)
        grad_b += g.sum(0)
    return total.to(hidden.dtype), grad_h, grad_w.to(weight.dtype), grad_b.to(weight.dtype)


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------
def check_fused_linear_kd_inputs(hidden, weight, bias, teacher, labels, mask, loss, temperature, beta, alpha,
                                 ce_weight, validate=True):
    """Validate the public function's inputs (raise :class:`EdgekdValueError` naming the problem);
    returns the op's teacher arguments ``(teacher_logits, topk_ids, topk_logprobs, tail_logmass)``."""
    who = "fused_linear_kd"
    kd_math.check_loss_settings(loss, temperature, beta, alpha, ce_weight, who)
    for name, t in (("hidden", hidden), ("weight", weight)):
        if not isinstance(t, Tensor) or t.dim() != 2 or not t.dtype.is_floating_point:
            raise EdgekdValueError(f"{who}: '{name}' must be a 2-D floating tensor")
    N, H = hidden.shape
    V = weight.shape[0]
    if hidden.device.type == "cpu" and hidden.dtype not in (torch.float32, torch.float64):
        raise EdgekdValueError(f"{who}: on the CPU hidden must be float32 or float64, got {hidden.dtype}")
    if N == 0 or H == 0 or V == 0:
        raise EdgekdValueError(f"{who}: empty input: hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)}")
    if weight.shape[1] != H or weight.dtype != hidden.dtype or weight.device != hidden.device:
        raise EdgekdValueError(
            f"{who}: weight must be (V, H) with H = {H}, the dtype and device of hidden; got "
            f"{tuple(weight.shape)} {weight.dtype} {weight.device}"
        )
    if bias is not None and (tuple(bias.shape) != (V,) or bias.dtype != hidden.dtype):
        raise EdgekdValueError(f"{who}: bias must be ({V},) of dtype {hidden.dtype}, got {tuple(bias.shape)}")
    if ce_weight > 0 and labels is None:
        raise EdgekdValueError(f"{who}: ce_weight > 0 needs labels")
    if labels is not None and (tuple(labels.shape) != (N,) or labels.dtype.is_floating_point):
        raise EdgekdValueError(f"{who}: labels must be an integer ({N},) tensor")
    if mask is not None and (tuple(mask.shape) != (N,) or mask.dtype.is_floating_point):
        raise EdgekdValueError(f"{who}: mask must be a bool or integer ({N},) tensor")
    if validate and not tracing():
        if not bool(torch.isfinite(hidden).all()):
            raise EdgekdValueError(f"{who}: hidden contains NaN or inf")
        if labels is not None and bool(((labels != IGNORE_INDEX) & ((labels < 0) | (labels >= V))).any()):
            raise EdgekdValueError(f"{who}: labels must be in [0, {V}) or {IGNORE_INDEX}")
    if isinstance(teacher, Tensor):
        if tuple(teacher.shape) != (N, V):
            raise EdgekdValueError(
                f"{who}: teacher logits have shape {tuple(teacher.shape)}, expected (N, V) = {(N, V)} "
                "(a teacher with another vocabulary needs a token mapping)"
            )
        if validate and not tracing() and bool(torch.isnan(teacher).any()):
            raise EdgekdValueError(f"{who}: teacher logits contain NaN")
        return teacher.detach().to(hidden.dtype).contiguous(), None, None, None
    ids, lps, tail = kd_math.check_sparse_teacher(teacher, (N,), V, temperature, who)
    return None, ids.contiguous(), lps.detach().to(hidden.dtype).contiguous(), tail.detach().to(hidden.dtype).contiguous()
