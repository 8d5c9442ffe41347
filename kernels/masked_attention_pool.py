"""Triton kernels of ``edgekd::masked_attention_pool`` (forward and backward) and their launchers.

One program per batch row walks the sequence in blocks of ``BLOCK_T`` positions:

* forward: ``u = tanh(H_blk W^T)`` with ``tl.dot`` over chunks of ``BLOCK_A`` attention units (IEEE
  fp32, not TF32, so results match the reference to 1e-5), ``e = u v``, and an online (streaming)
  masked softmax that accumulates the context in registers; a second tiny kernel normalizes the
  attention from the stored logits and the per-row (max, sum).
* backward: pass 1 computes ``dot = sum_t alpha_t (grad_attention_t + grad_context . h_t)``;
  pass 2 forms ``g_e``, ``G = (g_e v + grad_u)(1 - u^2)`` (0 at masked positions) and ``grad_states = alpha grad_context +
  G W`` (``tl.dot``). ``grad_W = G^T H`` and ``grad_v = u^T g_e`` are single GEMMs over all rows
  (cuBLAS via torch), which is deterministic (no atomics).

All arithmetic is fp32 (fp16/bf16 inputs are upcast on load). float64 or very wide states
(D > 2048) are served by the PyTorch reference (see :func:`forward`). Registration with
``torch.library`` lives in ``edgekd/ops/masked_attention_pool.py``. Verified in CI under
``TRITON_INTERPRET=1`` on CPU tensors.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from edgekd.kernels.utils import calculate_settings

_MAX_D = 2048


@triton.jit
def _tanh(x):
    # tanh(x) = 1 - 2 / (exp(2x) + 1): saturates correctly at +-inf, abs. error ~1e-7 near 0
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _map_fwd_kernel(
    H, M, W, V,  # inputs: states (B,T,D), mask (B,T) int8, W (A,D), v (A,)
    C, L, U, ML,  # outputs: context (B,D) fp32, logits (B,T) fp32, u (B,T,A) fp32, (max,sum) (B,2)
    T, D, A,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_A: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    d_in = offs_d < D
    m_i = tl.full((), float("-inf"), tl.float32)
    l_i = tl.zeros((), tl.float32)
    acc = tl.zeros((BLOCK_D,), tl.float32)
    for t0 in range(0, T, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        t_in = offs_t < T
        valid = tl.load(M + b * T + offs_t, mask=t_in, other=0) != 0
        row = b * T + offs_t
        h = tl.load(H + row[:, None] * D + offs_d[None, :], mask=t_in[:, None] & d_in[None, :], other=0.0)
        h = h.to(tl.float32)
        e = tl.zeros((BLOCK_T,), tl.float32)
        for a0 in range(0, A, BLOCK_A):
            offs_a = a0 + tl.arange(0, BLOCK_A)
            a_in = offs_a < A
            w = tl.load(W + offs_a[:, None] * D + offs_d[None, :], mask=a_in[:, None] & d_in[None, :], other=0.0)
            s = tl.dot(h, tl.trans(w.to(tl.float32)), input_precision="ieee")  # (BLOCK_T, BLOCK_A)
            u = tl.where(valid[:, None], _tanh(s), 0.0)  # u is 0 at masked positions
            tl.store(U + row[:, None] * A + offs_a[None, :], u, mask=t_in[:, None] & a_in[None, :])
            vv = tl.load(V + offs_a, mask=a_in, other=0.0).to(tl.float32)
            e += tl.sum(u * vv[None, :], axis=1)
        tl.store(L + row, tl.where(valid, e, 0.0), mask=t_in)
        e_m = tl.where(valid, e, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(e_m, axis=0))
        no_valid_yet = m_new == float("-inf")
        scale = tl.where(no_valid_yet, 1.0, tl.exp(m_i - m_new))
        p = tl.where(valid, tl.exp(e_m - tl.where(no_valid_yet, 0.0, m_new)), 0.0)
        l_i = l_i * scale + tl.sum(p, axis=0)
        acc = acc * scale + tl.sum(p[:, None] * h, axis=0)
        m_i = m_new
    tl.store(C + b * D + offs_d, acc / l_i, mask=d_in)
    tl.store(ML + b * 2, m_i)
    tl.store(ML + b * 2 + 1, l_i)


@triton.jit
def _map_normalize_kernel(L, M, ML, P, T, BLOCK_T: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    offs_t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    t_in = offs_t < T
    valid = tl.load(M + b * T + offs_t, mask=t_in, other=0) != 0
    e = tl.load(L + b * T + offs_t, mask=t_in, other=0.0)
    mx = tl.load(ML + b * 2)
    sm = tl.load(ML + b * 2 + 1)
    p = tl.where(valid, tl.exp(e - mx) / sm, 0.0)
    tl.store(P + b * T + offs_t, p, mask=t_in)


@triton.jit
def _map_bwd_kernel(
    GC, GL, GA, GU,  # upstream grads: context (B,D), logits (B,T), attention (B,T), u (B,T,A) or dummy
    H, M, W, V, P, U,  # saved: states, mask int8, W, v, attention, u
    GS, GG, GE,  # outputs: grad_states (B,T,D) fp32, G (B,T,A) fp32, g_e (B,T) fp32
    T, D, A,
    HAS_GU: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_A: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    d_in = offs_d < D
    gc = tl.load(GC + b * D + offs_d, mask=d_in, other=0.0).to(tl.float32)
    # pass 1: dot = sum_t alpha_t * g_alpha_t
    dot = tl.zeros((), tl.float32)
    for t0 in range(0, T, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        t_in = offs_t < T
        row = b * T + offs_t
        valid = tl.load(M + row, mask=t_in, other=0) != 0
        h = tl.load(H + row[:, None] * D + offs_d[None, :], mask=t_in[:, None] & d_in[None, :], other=0.0)
        g_alpha = tl.load(GA + row, mask=t_in, other=0.0).to(tl.float32) + tl.sum(h.to(tl.float32) * gc[None, :], axis=1)
        p = tl.load(P + row, mask=t_in, other=0.0).to(tl.float32)
        dot += tl.sum(tl.where(valid, p * g_alpha, 0.0), axis=0)
    # pass 2: g_e, G, grad_states
    for t0 in range(0, T, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        t_in = offs_t < T
        row = b * T + offs_t
        valid = tl.load(M + row, mask=t_in, other=0) != 0
        h = tl.load(H + row[:, None] * D + offs_d[None, :], mask=t_in[:, None] & d_in[None, :], other=0.0)
        g_alpha = tl.load(GA + row, mask=t_in, other=0.0).to(tl.float32) + tl.sum(h.to(tl.float32) * gc[None, :], axis=1)
        p = tl.load(P + row, mask=t_in, other=0.0).to(tl.float32)
        gl = tl.load(GL + row, mask=t_in, other=0.0).to(tl.float32)
        g_e = tl.where(valid, p * (g_alpha - dot) + gl, 0.0)
        tl.store(GE + row, g_e, mask=t_in)
        gs = tl.where(valid[:, None], p[:, None] * gc[None, :], 0.0)
        for a0 in range(0, A, BLOCK_A):
            offs_a = a0 + tl.arange(0, BLOCK_A)
            a_in = offs_a < A
            ta = t_in[:, None] & a_in[None, :]
            u = tl.load(U + row[:, None] * A + offs_a[None, :], mask=ta, other=0.0).to(tl.float32)
            vv = tl.load(V + offs_a, mask=a_in, other=0.0).to(tl.float32)
            g = g_e[:, None] * vv[None, :]
            if HAS_GU:
                g += tl.load(GU + row[:, None] * A + offs_a[None, :], mask=ta, other=0.0).to(tl.float32)
            g = g * (1.0 - u * u)
            g = tl.where(ta & valid[:, None], g, 0.0)  # no gradient flows through masked positions
            tl.store(GG + row[:, None] * A + offs_a[None, :], g, mask=ta)
            w = tl.load(W + offs_a[:, None] * D + offs_d[None, :], mask=a_in[:, None] & d_in[None, :], other=0.0)
            gs += tl.dot(g, w.to(tl.float32), input_precision="ieee")
        tl.store(GS + row[:, None] * D + offs_d[None, :], gs, mask=t_in[:, None] & d_in[None, :])


def _blocks(T: int, D: int, A: int) -> Tuple[int, int, int, int]:
    block_d = calculate_settings(D, min_block=16)[0]
    block_t = block_a = 16 if block_d > 256 else 32
    _, num_warps = calculate_settings(D, min_block=16, tile=block_t)  # a (BLOCK_T, BLOCK_D) tile of states
    return block_t, block_d, block_a, num_warps


def supported(states: torch.Tensor) -> bool:
    """True when the Triton kernels handle these states (otherwise the launchers use the reference)."""
    return states.dtype in (torch.float32, torch.float16, torch.bfloat16) and states.shape[-1] <= _MAX_D


def forward(
    states: torch.Tensor, mask: torch.Tensor, W: torch.Tensor, v: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the forward kernels: returns ``(context, attention_logits, attention, u)``."""
    if not supported(states):
        from edgekd.ops.masked_attention_pool import masked_attention_pool_reference_forward as reference_forward

        return tuple(t.contiguous() for t in reference_forward(states, mask, W, v))
    states, W, v = states.contiguous(), W.contiguous(), v.contiguous()
    m8 = mask.contiguous().view(torch.int8) if mask.dtype == torch.bool else (mask != 0).to(torch.int8)
    B, T, D = states.shape
    A = W.shape[0]
    dev = states.device
    ctx = torch.empty((B, D), device=dev, dtype=torch.float32)
    logits = torch.empty((B, T), device=dev, dtype=torch.float32)
    attn = torch.empty((B, T), device=dev, dtype=torch.float32)
    u = torch.empty((B, T, A), device=dev, dtype=torch.float32)
    ml = torch.empty((B, 2), device=dev, dtype=torch.float32)
    block_t, block_d, block_a, num_warps = _blocks(T, D, A)
    _map_fwd_kernel[(B,)](
        states, m8, W, v, ctx, logits, u, ml, T, D, A,
        BLOCK_T=block_t, BLOCK_D=block_d, BLOCK_A=block_a, num_warps=num_warps,
    )
    bt2, warps2 = calculate_settings(T, min_block=16, max_block=1024)
    _map_normalize_kernel[(B, triton.cdiv(T, bt2))](logits, m8, ml, attn, T, BLOCK_T=bt2, num_warps=warps2)
    dt = states.dtype
    return ctx.to(dt), logits.to(dt), attn.to(dt), u.to(dt)


def backward(
    grad_context: torch.Tensor,
    grad_logits: torch.Tensor,
    grad_attention: torch.Tensor,
    grad_u: Optional[torch.Tensor],
    states: torch.Tensor,
    mask: torch.Tensor,
    W: torch.Tensor,
    v: torch.Tensor,
    attention: torch.Tensor,
    u: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward kernel: returns ``(grad_states, grad_W, grad_v)``."""
    if not supported(states):
        from edgekd.ops.masked_attention_pool import masked_attention_pool_reference_backward as reference_backward

        return tuple(
            t.contiguous()
            for t in reference_backward(grad_context, grad_logits, grad_attention, grad_u, states, mask, W, v, attention, u)
        )
    states, W, v = states.contiguous(), W.contiguous(), v.contiguous()
    attention, u = attention.contiguous(), u.contiguous()
    gc, gl, ga = grad_context.contiguous(), grad_logits.contiguous(), grad_attention.contiguous()
    has_gu = grad_u is not None
    gu = grad_u.contiguous() if has_gu else u  # dummy pointer when absent (never read)
    m8 = mask.contiguous().view(torch.int8) if mask.dtype == torch.bool else (mask != 0).to(torch.int8)
    B, T, D = states.shape
    A = W.shape[0]
    dev = states.device
    gs = torch.empty((B, T, D), device=dev, dtype=torch.float32)
    G = torch.empty((B, T, A), device=dev, dtype=torch.float32)
    g_e = torch.empty((B, T), device=dev, dtype=torch.float32)
    block_t, block_d, block_a, num_warps = _blocks(T, D, A)
    _map_bwd_kernel[(B,)](
        gc, gl, ga, gu, states, m8, W, v, attention, u, gs, G, g_e, T, D, A,
        HAS_GU=has_gu, BLOCK_T=block_t, BLOCK_D=block_d, BLOCK_A=block_a, num_warps=num_warps,
    )
    H32 = states.reshape(B * T, D).to(torch.float32)
    grad_W = G.reshape(B * T, A).t().mm(H32)
    grad_v = u.reshape(B * T, A).to(torch.float32).t().mv(g_e.reshape(B * T))
    dt = states.dtype
    return gs.to(dt), grad_W.to(W.dtype), grad_v.to(v.dtype)
