"""Triton kernels of the perturbed top-k ops, with their host launchers.

Registration with ``torch.library`` lives in ``edgekd/ops/perturbed_topk.py``; this module only
holds the ``@triton.jit`` kernels and the functions that size and launch them.

Kernels (one program each):

- ``_select_kernel`` (one program per (b, s)): the sorted top-k positions of one perturbed row
  without sorting. The perturbed values are mapped onto order-preserving integer keys; a radix
  select (one bit per step, 31 steps for float32, 63 for float64) finds the k-th largest key ``t``;
  the positions with key > t and the lowest positions with key == t (ties prefer the lower position,
  as in the reference and the C++ kernel) are kept; an exclusive prefix sum of the kept flags gives
  each kept position its output slot, so the positions come out in ascending order.
- ``_gather_fwd_kernel`` (programs over (b, rows i, columns d)): ``out[b, i] = mean_s x[b, idx_s(i)]``.
- ``_indicators_fwd_kernel`` (programs over (b, rows i)): counts of ``idx_s(i) == n`` by atomic adds
  of 1.0 (exact small integers, so the result does not depend on their order), then scaled by 1/S.
- ``_gather_bwd_w_kernel`` / ``_indicators_bwd_w_kernel`` (one program per (b, s)):
  the per-sample weight ``w[b, s] = <G, Y_s>``.
- ``_scores_grad_kernel`` (programs over (b, positions)): ``grad_scores = sum_s w_s Z_s / (S sigma)``.
- ``_grad_x_kernel`` (programs over (b, positions, columns)): ``grad_x[b, n] = sum_s G[b, r_s(n)] / S``
  where ``r_s(n)`` is the rank of position n in sample s (-1 when not selected). The rank map is an
  (B, S, N) int32 tensor built by a scatter: the same size order as the noise, no atomics, and the
  result does not depend on scheduling.

The selection holds a whole row in one program, so N is limited to ``MAX_N`` positions.
On a GPU the compiler may fuse ``scores + sigma * noise`` into one FMA, which can flip exact
near-ties relative to the CPU kernels; the CPU interpreter (``TRITON_INTERPRET=1``) matches the
reference bit for bit.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from edgekd.kernels.utils import calculate_settings

MAX_N = 65536


@triton.jit
def _select_kernel(
    scores_ptr,
    noise_ptr,
    mask_ptr,
    sigma_ptr,
    idx_ptr,
    N,
    S,
    k,
    HAS_MASK: tl.constexpr,
    IS_FP64: tl.constexpr,
    KEY_BITS: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)  # b * S + s
    b = pid // S
    offs = tl.arange(0, BLOCK_N)
    inb = offs < N
    sc = tl.load(scores_ptr + b * N + offs, mask=inb, other=0.0)
    z = tl.load(noise_ptr + pid * N + offs, mask=inb, other=0.0)
    sigma = tl.load(sigma_ptr)
    t = sigma * z
    p = sc + t
    p = tl.where(p == 0.0, 0.0, p)  # -0.0 and +0.0 are equal values: one key
    valid = inb
    if HAS_MASK:
        m = tl.load(mask_ptr + b * N + offs, mask=inb, other=0)
        valid = valid & (m != 0)
    one = tl.full((), 1, tl.int64)
    if IS_FP64:
        bits = p.to(tl.int64, bitcast=True)
        # flip the magnitude bits of negatives: signed integer order == float order
        key = bits ^ ((bits >> 63) & 0x7FFFFFFFFFFFFFFF)
        lowest = one << 63  # wraps to the smallest int64: below every finite key
    else:
        bits32 = p.to(tl.int32, bitcast=True)
        key = (bits32 ^ ((bits32 >> 31) & 0x7FFFFFFF)).to(tl.int64)
        lowest = -(one << 31)
    sentinel = tl.full((BLOCK_N,), 0, tl.int64) + lowest
    key = tl.where(valid, key, sentinel)
    # radix select: the largest thr with #(key >= thr) >= k is the k-th largest key
    n_nonneg = tl.sum((key >= 0).to(tl.int32), axis=0)
    thr = tl.where(n_nonneg >= k, tl.zeros((), tl.int64), lowest)
    top_bit = tl.full((), KEY_BITS - 1, tl.int64)
    for j in range(KEY_BITS):
        cand = thr + (one << (top_bit - j))
        cnt = tl.sum((key >= cand).to(tl.int32), axis=0)
        thr = tl.where(cnt >= k, cand, thr)
    gt = key > thr
    n_gt = tl.sum(gt.to(tl.int32), axis=0)
    eq = (key == thr).to(tl.int32)
    eq_before = tl.cumsum(eq, axis=0) - eq  # ties: lower positions first
    sel = gt | ((eq != 0) & (eq_before < k - n_gt))
    sel_i = sel.to(tl.int32)
    slot = tl.cumsum(sel_i, axis=0) - sel_i  # ascending positions -> ascending slots
    tl.store(idx_ptr + pid * k + slot, offs.to(tl.int64), mask=sel)


@triton.jit
def _gather_fwd_kernel(
    x_ptr,
    idx_ptr,
    out_ptr,
    N,
    S,
    k,
    D,
    inv_s,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    mk = offs_k < k
    md = offs_d < D
    m2 = mk[:, None] & md[None, :]
    acc = tl.zeros((BLOCK_K, BLOCK_D), dtype=tl.float32)
    if x_ptr.dtype.element_ty == tl.float64:
        acc = tl.zeros((BLOCK_K, BLOCK_D), dtype=tl.float64)
    for s in range(S):
        rows = tl.load(idx_ptr + (b * S + s) * k + offs_k, mask=mk, other=0)
        v = tl.load(x_ptr + (b * N + rows[:, None]) * D + offs_d[None, :], mask=m2, other=0.0)
        acc += v
    acc = acc * inv_s
    tl.store(
        out_ptr + (b * k + offs_k[:, None]) * D + offs_d[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=m2,
    )


@triton.jit
def _indicators_fwd_kernel(idx_ptr, out_ptr, N, S, k, BLOCK_K: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mk = offs_k < k
    for s in range(S):
        rows = tl.load(idx_ptr + (b * S + s) * k + offs_k, mask=mk, other=0)
        # counts are small integers, exact in floating point: the sum does not depend on the order
        # of the atomic adds, so the result is deterministic
        tl.atomic_add(out_ptr + (b * k + offs_k) * N + rows, 1.0, mask=mk)


@triton.jit
def _gather_bwd_w_kernel(
    grad_ptr,
    x_ptr,
    idx_ptr,
    w_ptr,
    N,
    S,
    k,
    D,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)  # b * S + s
    b = pid // S
    acc = tl.zeros((BLOCK_K, BLOCK_D), dtype=tl.float32)
    if x_ptr.dtype.element_ty == tl.float64:
        acc = tl.zeros((BLOCK_K, BLOCK_D), dtype=tl.float64)
    for k0 in range(0, k, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mk = offs_k < k
        rows = tl.load(idx_ptr + pid * k + offs_k, mask=mk, other=0)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            m2 = mk[:, None] & (offs_d < D)[None, :]
            g = tl.load(grad_ptr + (b * k + offs_k[:, None]) * D + offs_d[None, :], mask=m2, other=0.0)
            v = tl.load(x_ptr + (b * N + rows[:, None]) * D + offs_d[None, :], mask=m2, other=0.0)
            acc += g * v
    tl.store(w_ptr + pid, tl.sum(tl.sum(acc, axis=1), axis=0))


@triton.jit
def _indicators_bwd_w_kernel(grad_ptr, idx_ptr, w_ptr, N, S, k, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)  # b * S + s
    b = pid // S
    acc = tl.zeros((BLOCK_K,), dtype=tl.float32)
    if grad_ptr.dtype.element_ty == tl.float64:
        acc = tl.zeros((BLOCK_K,), dtype=tl.float64)
    for k0 in range(0, k, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mk = offs_k < k
        rows = tl.load(idx_ptr + pid * k + offs_k, mask=mk, other=0)
        acc += tl.load(grad_ptr + (b * k + offs_k) * N + rows, mask=mk, other=0.0)
    tl.store(w_ptr + pid, tl.sum(acc, axis=0))


@triton.jit
def _scores_grad_kernel(w_ptr, noise_ptr, out_ptr, N, S, scale, BLOCK_N: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mn = offs < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    if noise_ptr.dtype.element_ty == tl.float64:
        acc = tl.zeros((BLOCK_N,), dtype=tl.float64)
    for s in range(S):
        ws = tl.load(w_ptr + b * S + s)
        z = tl.load(noise_ptr + (b * S + s) * N + offs, mask=mn, other=0.0)
        acc += ws * z
    tl.store(out_ptr + b * N + offs, (acc * scale).to(out_ptr.dtype.element_ty), mask=mn)


@triton.jit
def _grad_x_kernel(
    grad_ptr,
    rank_ptr,
    out_ptr,
    N,
    S,
    k,
    D,
    inv_s,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    mn = offs_n < N
    md = offs_d < D
    acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    if grad_ptr.dtype.element_ty == tl.float64:
        acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float64)
    for s in range(S):
        r = tl.load(rank_ptr + (b * S + s) * N + offs_n, mask=mn, other=-1)
        sel = r >= 0
        rr = tl.where(sel, r, 0).to(tl.int64)
        m2 = (sel & mn)[:, None] & md[None, :]
        acc += tl.load(grad_ptr + (b * k + rr[:, None]) * D + offs_d[None, :], mask=m2, other=0.0)
    acc = acc * inv_s
    tl.store(
        out_ptr + (b * N + offs_n[:, None]) * D + offs_d[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=mn[:, None] & md[None, :],
    )


# ------------------------------------------------------------------------------------------------
# host launchers


def select_indices(
    scores: torch.Tensor,
    noise: torch.Tensor,
    mask: torch.Tensor | None,
    k: int,
    sigma: float,
) -> torch.Tensor:
    """(B, S, k) int64: the sorted top-k positions of ``scores + sigma * noise`` per sample."""
    scores = scores.contiguous()
    noise = noise.contiguous()
    B, N = scores.shape
    S = noise.shape[1]
    if N > MAX_N:
        raise ValueError(f"perturbed_topk Triton selection holds a row in one program: N={N} > {MAX_N}")
    indices = torch.empty((B, S, k), dtype=torch.int64, device=scores.device)
    sigma_t = torch.tensor([sigma], dtype=scores.dtype, device=scores.device)
    mask_arg = mask.contiguous().to(torch.int8) if mask is not None else scores
    block_n, num_warps = calculate_settings(N)
    _select_kernel[(B * S,)](
        scores,
        noise,
        mask_arg,
        sigma_t,
        indices,
        N,
        S,
        k,
        HAS_MASK=mask is not None,
        IS_FP64=scores.dtype == torch.float64,
        KEY_BITS=63 if scores.dtype == torch.float64 else 31,
        BLOCK_N=block_n,
        num_warps=num_warps,
    )
    return indices


def _inv(S: int, dtype: torch.dtype) -> float:
    # 1/S rounded in the working dtype, as the C++ kernel does
    return float(torch.tensor(1.0, dtype=dtype) / S)


def gather_forward(
    scores: torch.Tensor,
    x: torch.Tensor,
    noise: torch.Tensor,
    mask: torch.Tensor | None,
    k: int,
    sigma: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused forward: ``out (B, k, D) = mean_s x[b, idx_s]`` and the indices (B, S, k)."""
    indices = select_indices(scores, noise, mask, k, sigma)
    x = x.contiguous()
    B, N, D = x.shape
    S = noise.shape[1]
    out = torch.empty((B, k, D), dtype=x.dtype, device=x.device)
    block_d, _ = calculate_settings(D, max_block=128)
    block_k, num_warps = calculate_settings(k, max_block=32, tile=block_d)
    grid = (B, triton.cdiv(k, block_k), triton.cdiv(D, block_d))
    _gather_fwd_kernel[grid](
        x, indices, out, N, S, k, D, _inv(S, x.dtype), BLOCK_K=block_k, BLOCK_D=block_d, num_warps=num_warps
    )
    return out, indices


def indicators_forward(
    scores: torch.Tensor,
    noise: torch.Tensor,
    mask: torch.Tensor | None,
    k: int,
    sigma: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft indicators (B, k, N) and the indices (B, S, k)."""
    indices = select_indices(scores, noise, mask, k, sigma)
    B, N = scores.shape
    S = noise.shape[1]
    counts = torch.zeros((B, k, N), dtype=scores.dtype, device=scores.device)
    block_k, num_warps = calculate_settings(k, max_block=64)
    _indicators_fwd_kernel[(B, triton.cdiv(k, block_k))](indices, counts, N, S, k, BLOCK_K=block_k, num_warps=num_warps)
    return counts.mul_(_inv(S, scores.dtype)), indices


def _scores_grad(w: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    B, S, N = noise.shape
    out = torch.empty((B, N), dtype=noise.dtype, device=noise.device)
    block_n, num_warps = calculate_settings(N, max_block=1024)
    _scores_grad_kernel[(B, triton.cdiv(N, block_n))](
        w, noise, out, N, S, 1.0 / (S * sigma), BLOCK_N=block_n, num_warps=num_warps
    )
    return out


def gather_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    noise: torch.Tensor,
    indices: torch.Tensor,
    sigma: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact estimator: ``(grad_scores (B, N), grad_x (B, N, D))``."""
    grad_out = grad_out.contiguous()
    x = x.contiguous()
    noise = noise.contiguous()
    indices = indices.contiguous()
    B, N, D = x.shape
    S, k = indices.shape[1], indices.shape[2]
    w = torch.empty((B, S), dtype=x.dtype, device=x.device)
    block_d, _ = calculate_settings(D, max_block=128)
    block_k, num_warps = calculate_settings(k, max_block=32, tile=block_d)
    _gather_bwd_w_kernel[(B * S,)](
        grad_out, x, indices, w, N, S, k, D, BLOCK_K=block_k, BLOCK_D=block_d, num_warps=num_warps
    )
    grad_scores = _scores_grad(w, noise, sigma)
    # rank of each position in each sample, -1 when not selected
    rank = torch.full((B, S, N), -1, dtype=torch.int32, device=x.device)
    ranks = torch.arange(k, dtype=torch.int32, device=x.device).expand(B, S, k)
    rank.scatter_(2, indices, ranks)
    grad_x = torch.empty_like(x)
    block_n, num_warps = calculate_settings(32, tile=block_d)  # 32 positions per program
    grid = (B, triton.cdiv(N, block_n), triton.cdiv(D, block_d))
    _grad_x_kernel[grid](
        grad_out, rank, grad_x, N, S, k, D, _inv(S, x.dtype), BLOCK_N=block_n, BLOCK_D=block_d, num_warps=num_warps
    )
    return grad_scores, grad_x


def indicators_backward(
    grad: torch.Tensor,
    noise: torch.Tensor,
    indices: torch.Tensor,
    sigma: float,
) -> torch.Tensor:
    """Exact estimator for the indicators: grad_scores (B, N)."""
    grad = grad.contiguous()
    noise = noise.contiguous()
    indices = indices.contiguous()
    B, S, N = noise.shape
    k = indices.shape[2]
    w = torch.empty((B, S), dtype=noise.dtype, device=noise.device)
    block_k, num_warps = calculate_settings(k, max_block=256)
    _indicators_bwd_w_kernel[(B * S,)](grad, indices, w, N, S, k, BLOCK_K=block_k, num_warps=num_warps)
    return _scores_grad(w, noise, sigma)
