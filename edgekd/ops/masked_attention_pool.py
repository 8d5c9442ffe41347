"""Masked additive attention pooling: ``edgekd::masked_attention_pool`` and its backward.

Given per-token states ``h_t`` (B, T, D), a validity mask (B, T) and the attention parameters
``W`` (A, D), ``v`` (A,)::

    u_t     = tanh(W h_t)                      (B, T, A)
    e_t     = v^T u_t                          attention logits, 0 at masked positions
    alpha   = softmax(e) over valid positions  attention, 0 at masked positions
    context = sum_t alpha_t h_t                (B, D)

Low-level ops: ``edgekd::masked_attention_pool(states, mask, W, v) -> (context, attention_logits,
attention, u)`` (``u = tanh(W h)`` at valid positions and 0 at masked ones, (B, T, A): what the
backward needs) and ``edgekd::masked_attention_pool_backward(...) -> (grad_states, grad_W, grad_v)``.
Kernels: C++ on the CPU (``csrc/cpu/masked_attention_pool.cpp``), Triton on CUDA
(``kernels/masked_attention_pool.py``), the reference as the CPU fallback when ``edgekd._C`` is missing.

Sections (the same in every op module, see STYLE.md): schema, fake kernel, CPU fallback, CUDA
(Triton), autograd, public function, reference, input checks.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from edgekd import _ext
from edgekd.errors import EdgekdValueError
from edgekd.ops._common import triton_kernels

__all__ = [
    "masked_attention_pool",
    "masked_attention_pool_reference",
    "masked_attention_pool_reference_forward",
    "masked_attention_pool_reference_backward",
    "check_masked_attention_pool_inputs",
    "reference_forward",
    "reference_backward",
]

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_FWD = "edgekd::masked_attention_pool"
_BWD = "edgekd::masked_attention_pool_backward"


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------
torch.library.define(
    _FWD,
    "(Tensor states, Tensor mask, Tensor W, Tensor v) -> (Tensor, Tensor, Tensor, Tensor)",
)
torch.library.define(
    _BWD,
    "(Tensor grad_context, Tensor grad_logits, Tensor grad_attention, Tensor? grad_u, Tensor states, "
    "Tensor mask, Tensor W, Tensor v, Tensor attention, Tensor u) -> (Tensor, Tensor, Tensor)",
)


# --------------------------------------------------------------------------------------------
# Fake kernel
# --------------------------------------------------------------------------------------------
@torch.library.register_fake(_FWD)
def _fwd_fake(states: Tensor, mask: Tensor, W: Tensor, v: Tensor):
    B, T, D = states.shape
    A = W.shape[0]
    return (
        states.new_empty((B, D)),
        states.new_empty((B, T)),
        states.new_empty((B, T)),
        states.new_empty((B, T, A)),
    )


@torch.library.register_fake(_BWD)
def _bwd_fake(grad_context, grad_logits, grad_attention, grad_u, states, mask, W, v, attention, u):
    return torch.empty_like(states), torch.empty_like(W), torch.empty_like(v)


# --------------------------------------------------------------------------------------------
# CPU fallback (only when edgekd._C is missing)
# --------------------------------------------------------------------------------------------
if not _ext.has_extension():  # a second CPU registration would silently override the C++ kernel

    @torch.library.register_kernel(_FWD, "cpu")
    def _fwd_cpu_fallback(states: Tensor, mask: Tensor, W: Tensor, v: Tensor):
        _ext.warn_fallback("masked_attention_pool")
        return tuple(t.contiguous() for t in masked_attention_pool_reference_forward(states, mask, W, v))

    @torch.library.register_kernel(_BWD, "cpu")
    def _bwd_cpu_fallback(grad_context, grad_logits, grad_attention, grad_u, states, mask, W, v, attention, u):
        _ext.warn_fallback("masked_attention_pool")
        grads = masked_attention_pool_reference_backward(
            grad_context, grad_logits, grad_attention, grad_u, states, mask, W, v, attention, u
        )
        return tuple(t.contiguous() for t in grads)


# --------------------------------------------------------------------------------------------
# CUDA (Triton)
# --------------------------------------------------------------------------------------------
@torch.library.register_kernel(_FWD, "cuda")
def _fwd_cuda(states: Tensor, mask: Tensor, W: Tensor, v: Tensor):
    return triton_kernels("masked_attention_pool", "masked_attention_pool").forward(states, mask, W, v)


@torch.library.register_kernel(_BWD, "cuda")
def _bwd_cuda(grad_context, grad_logits, grad_attention, grad_u, states, mask, W, v, attention, u):
    kernels = triton_kernels("masked_attention_pool", "masked_attention_pool_backward")
    return kernels.backward(grad_context, grad_logits, grad_attention, grad_u, states, mask, W, v, attention, u)


# --------------------------------------------------------------------------------------------
# Autograd
# --------------------------------------------------------------------------------------------
def _setup_context(ctx, inputs, output):
    states, mask, W, v = inputs
    _, _, attention, u = output
    ctx.save_for_backward(states, mask, W, v, attention, u)


def _backward(ctx, grad_context, grad_logits, grad_attention, grad_u):
    states, mask, W, v, attention, u = ctx.saved_tensors
    B, T, D = states.shape
    if grad_context is None:
        grad_context = states.new_zeros((B, D))
    if grad_logits is None:
        grad_logits = states.new_zeros((B, T))
    if grad_attention is None:
        grad_attention = states.new_zeros((B, T))
    gs, gW, gv = torch.ops.edgekd.masked_attention_pool_backward.default(
        grad_context.contiguous(),
        grad_logits.contiguous(),
        grad_attention.contiguous(),
        None if grad_u is None else grad_u.contiguous(),
        states,
        mask,
        W,
        v,
        attention,
        u,
    )
    return gs, None, gW, gv


torch.library.register_autograd(_FWD, _backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------
# Public function
# --------------------------------------------------------------------------------------------
def masked_attention_pool(
    states: Tensor, mask: Tensor, W: Tensor, v: Tensor, *, validate: bool = True
) -> Tuple[Tensor, Tensor, Tensor]:
    """Masked additive attention pooling (differentiable in ``states``, ``W`` and ``v``).

    Args:
        states: (B, T, D) float tensor of per-token states.
        mask: (B, T) bool or integer tensor, nonzero = valid position; every row needs at least
            one valid position (any pattern, not only post-padding).
        W: (A, D) projection, same dtype and device as ``states``.
        v: (A,) scoring vector.
        validate: check the inputs (also their values: fully masked rows, NaN) and raise
            :class:`~edgekd.errors.EdgekdValueError` on bad input. Callers that have already
            validated (e.g. the student model) pass ``False`` to save the host sync.

    Returns:
        ``(context (B, D), attention_logits (B, T), attention (B, T))``: ``attention_logits`` is
        ``e_t = v^T tanh(W h_t)`` at valid positions and 0 at masked ones; ``attention`` is the
        softmax of ``e`` over the valid positions and 0 at masked ones.

    Runs on the C++ CPU kernel, the Triton kernel on CUDA, or the PyTorch reference when the
    extension is not built.
    """
    if validate:
        check_masked_attention_pool_inputs(states, mask, W, v)
    if mask.dtype != torch.bool:
        mask = mask != 0
    context, logits, attention, _ = torch.ops.edgekd.masked_attention_pool.default(
        states.contiguous(), mask.contiguous(), W.contiguous(), v.contiguous()
    )
    return context, logits, attention


# --------------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------------
def masked_attention_pool_reference(
    states: Tensor, mask: Tensor, W: Tensor, v: Tensor
) -> Tuple[Tensor, Tensor, Tensor]:
    """Plain-PyTorch masked attention pooling, differentiable by autograd.

    This is the definition the native kernels are tested against. ``mask`` is bool or integer
    (nonzero = valid); every row needs at least one valid position.
    Returns ``(context (B, D), attention_logits (B, T), attention (B, T))``.
    """
    valid = mask.to(torch.bool)
    u = torch.tanh(torch.matmul(states, W.t()))  # (B, T, A)
    e = torch.matmul(u, v)  # (B, T)
    e_masked = e.masked_fill(~valid, float("-inf"))
    attention = torch.softmax(e_masked, dim=-1).masked_fill(~valid, 0.0)
    logits = e.masked_fill(~valid, 0.0)
    context = torch.bmm(attention.unsqueeze(1), states).squeeze(1)
    return context, logits, attention


def masked_attention_pool_reference_forward(
    states: Tensor, mask: Tensor, W: Tensor, v: Tensor
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Reference of the low-level forward op: ``(context, attention_logits, attention, u)``.

    ``u = tanh(W h_t)`` at valid positions and 0 at masked ones.
    """
    valid = mask.to(torch.bool)
    u = torch.tanh(torch.matmul(states, W.t())) * valid.unsqueeze(-1).to(states.dtype)
    e = torch.matmul(u, v)
    attention = torch.softmax(e.masked_fill(~valid, float("-inf")), dim=-1).masked_fill(~valid, 0.0)
    logits = e.masked_fill(~valid, 0.0)
    context = torch.bmm(attention.unsqueeze(1), states).squeeze(1)
    return context, logits, attention, u


def masked_attention_pool_reference_backward(
    grad_context: Tensor,
    grad_logits: Tensor,
    grad_attention: Tensor,
    grad_u: Optional[Tensor],
    states: Tensor,
    mask: Tensor,
    W: Tensor,
    v: Tensor,
    attention: Tensor,
    u: Tensor,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Reference of the low-level backward op: ``(grad_states, grad_W, grad_v)``.

    With ``g_a = grad_attention + grad_context . h`` the softmax backward gives
    ``g_e = alpha (g_a - sum_s alpha_s g_a_s) + grad_logits`` at valid positions (0 elsewhere),
    then ``G = (g_e v + grad_u [valid]) * (1 - u^2)``, ``grad_states = alpha grad_context + G W``,
    ``grad_W = sum G^T h``, ``grad_v = sum g_e u``.
    """
    validf = mask.to(torch.bool).to(states.dtype)
    g_alpha = grad_attention + torch.bmm(states, grad_context.unsqueeze(-1)).squeeze(-1)
    dot = (attention * g_alpha).sum(dim=-1, keepdim=True)
    g_e = (attention * (g_alpha - dot) + grad_logits) * validf  # (B, T)
    G = g_e.unsqueeze(-1) * v
    if grad_u is not None:
        G = G + grad_u * validf.unsqueeze(-1)
    G = G * (1.0 - u * u)  # (B, T, A)
    grad_states = attention.unsqueeze(-1) * grad_context.unsqueeze(1) + torch.matmul(G, W)
    A, D = W.shape
    grad_W = G.reshape(-1, A).t().mm(states.reshape(-1, D))
    grad_v = u.reshape(-1, A).t().mv(g_e.reshape(-1))
    return grad_states, grad_W, grad_v


# the names of these references before all ops followed one naming scheme
reference_forward = masked_attention_pool_reference_forward
reference_backward = masked_attention_pool_reference_backward


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------
def _describe(t: Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def check_masked_attention_pool_inputs(
    states: Tensor, mask: Tensor, W: Tensor, v: Tensor, *, check_values: bool = True
) -> None:
    """Raise :class:`EdgekdValueError` naming the problem when the inputs are invalid.

    Metadata checks (types, ranks, dtypes, shapes, devices) are free; ``check_values`` adds the
    data checks (every row has a valid position, no NaN/inf in ``states``), one host sync.
    """
    for name, t in (("states", states), ("mask", mask), ("W", W), ("v", v)):
        if not isinstance(t, Tensor):
            raise EdgekdValueError(f"masked_attention_pool: '{name}' must be a torch.Tensor, got {type(t).__name__}")
    if states.dim() != 3:
        raise EdgekdValueError(f"masked_attention_pool: 'states' must have rank 3 (B, T, D), got {_describe(states)}")
    if mask.dim() != 2:
        raise EdgekdValueError(f"masked_attention_pool: 'mask' must have rank 2 (B, T), got {_describe(mask)}")
    if W.dim() != 2:
        raise EdgekdValueError(f"masked_attention_pool: 'W' must have rank 2 (A, D), got {_describe(W)}")
    if v.dim() != 1:
        raise EdgekdValueError(f"masked_attention_pool: 'v' must have rank 1 (A,), got {_describe(v)}")
    if states.dtype not in _FLOAT_DTYPES:
        raise EdgekdValueError(f"masked_attention_pool: 'states' must be floating point, got {_describe(states)}")
    if W.dtype != states.dtype or v.dtype != states.dtype:
        raise EdgekdValueError(
            "masked_attention_pool: 'W' and 'v' must have the dtype of 'states' "
            f"({states.dtype}), got W {W.dtype} and v {v.dtype}"
        )
    if mask.dtype.is_floating_point or mask.dtype.is_complex:
        raise EdgekdValueError(f"masked_attention_pool: 'mask' must be bool or integer (1 = valid), got {_describe(mask)}")
    B, T, D = states.shape
    if tuple(mask.shape) != (B, T):
        raise EdgekdValueError(
            f"masked_attention_pool: 'mask' must have shape (B, T) = {(B, T)} to match 'states', got {tuple(mask.shape)}"
        )
    if W.shape[1] != D:
        raise EdgekdValueError(
            f"masked_attention_pool: 'W' must have shape (A, D) with D = {D} (last dim of 'states'), got {tuple(W.shape)}"
        )
    if v.shape[0] != W.shape[0]:
        raise EdgekdValueError(
            f"masked_attention_pool: 'v' must have shape (A,) with A = {W.shape[0]} (rows of 'W'), got {tuple(v.shape)}"
        )
    if B == 0 or T == 0 or D == 0 or W.shape[0] == 0:
        raise EdgekdValueError(f"masked_attention_pool: empty input: states {tuple(states.shape)}, W {tuple(W.shape)}")
    dev = states.device
    for name, t in (("mask", mask), ("W", W), ("v", v)):
        if t.device != dev:
            raise EdgekdValueError(
                f"masked_attention_pool: '{name}' is on {t.device} but 'states' is on {dev}; all inputs must share a device"
            )
    if check_values and not torch.compiler.is_compiling():
        row_ok = mask.to(torch.bool).any(dim=1)
        finite = torch.isfinite(states).all()
        if not bool(row_ok.all() & finite):  # one host sync for both checks
            if not bool(row_ok.all()):
                bad = torch.nonzero(~row_ok).flatten().tolist()[:8]
                raise EdgekdValueError(
                    f"masked_attention_pool: 'mask' has rows with no valid position (fully masked rows {bad}); "
                    "every row needs at least one valid token"
                )
            raise EdgekdValueError("masked_attention_pool: 'states' contains NaN or inf")
        if not bool(torch.isfinite(W).all() & torch.isfinite(v).all()):
            raise EdgekdValueError("masked_attention_pool: 'W' or 'v' contains NaN or inf")
