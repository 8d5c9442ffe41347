"""Triton kernels of the masked bidirectional LSTM (``edgekd::masked_bilstm`` on CUDA).

Forward: the input projection of all timesteps is one torch GEMM per direction (cuBLAS); the
recurrence is one Triton program per (batch row, direction) that walks the row's valid timesteps
only, keeping h and c in registers across steps. For ``H <= 64`` the four (H, H) gate blocks of
W_hh are loaded once, before the time loop, and stay in registers; for larger H (up to 128) they
are re-read each step (from L1/L2: 256 KiB of fp32 would spill the register file).

Backward: one program per (batch row, direction) walks the steps in reverse, keeping dh and dc in
registers, and writes the gate pre-activation gradients dA of every valid timestep; the weight and
input gradients are then torch GEMMs over all timesteps (dW_ih = dA^T x, dW_hh = dA^T H_prev,
dx = dA W_ih).

Layouts are those of the op (see ``edgekd/ops/masked_bilstm.py``): ``gates`` (2, capacity, 4H) and
``cells`` (2, capacity, H) in compact rows ``off[b] + t``. The host code avoids any device sync:
compact rows are addressed through ``searchsorted`` on the cumulative lengths.

Only verified under ``TRITON_INTERPRET=1`` on CPU tensors (no GPU was available when written).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from edgekd.kernels.utils import calculate_settings

#: Largest hidden size the recurrence kernels support (h, c and a W_hh tile per program).
MAX_HIDDEN = 128


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _bilstm_fwd_kernel(
    xproj_ptr,  # (2, CAP, 4H) input projection incl. both biases, compact rows
    whh_ptr,  # (2, 4H, H)
    len_ptr,  # (B,) int64
    off_ptr,  # (B,) int64, exclusive prefix sum of len
    out_ptr,  # (B, T, 2H)
    hn_ptr,  # (2, B, H)
    cn_ptr,  # (2, B, H)
    gates_ptr,  # (2, CAP, 4H)
    cells_ptr,  # (2, CAP, H)
    B,
    T,
    CAP,
    H,
    BLOCK_H: tl.constexpr,
    W_IN_REGS: tl.constexpr,
):
    b = tl.program_id(0)
    d = tl.program_id(1)
    L = tl.load(len_ptr + b).to(tl.int32)
    off = tl.load(off_ptr + b).to(tl.int32)
    rows = tl.arange(0, BLOCK_H)  # output unit of a gate
    cols = tl.arange(0, BLOCK_H)  # input unit (h_{t-1})
    rmask = rows < H
    wmask = rmask[:, None] & (cols[None, :] < H)
    wbase = whh_ptr + d * 4 * H * H
    w_off = rows[:, None] * H + cols[None, :]
    if W_IN_REGS:
        w_i = tl.load(wbase + w_off, mask=wmask, other=0.0)
        w_f = tl.load(wbase + H * H + w_off, mask=wmask, other=0.0)
        w_g = tl.load(wbase + 2 * H * H + w_off, mask=wmask, other=0.0)
        w_o = tl.load(wbase + 3 * H * H + w_off, mask=wmask, other=0.0)
    h = tl.zeros([BLOCK_H], dtype=tl.float32)
    c = tl.zeros([BLOCK_H], dtype=tl.float32)
    for s in range(0, L):
        t = tl.where(d == 0, s, L - 1 - s)
        row = off + t
        if not W_IN_REGS:
            w_i = tl.load(wbase + w_off, mask=wmask, other=0.0)
            w_f = tl.load(wbase + H * H + w_off, mask=wmask, other=0.0)
            w_g = tl.load(wbase + 2 * H * H + w_off, mask=wmask, other=0.0)
            w_o = tl.load(wbase + 3 * H * H + w_off, mask=wmask, other=0.0)
        xb = xproj_ptr + (d * CAP + row) * 4 * H
        hb = h[None, :]
        a_i = tl.sum(w_i * hb, axis=1) + tl.load(xb + rows, mask=rmask, other=0.0)
        a_f = tl.sum(w_f * hb, axis=1) + tl.load(xb + H + rows, mask=rmask, other=0.0)
        a_g = tl.sum(w_g * hb, axis=1) + tl.load(xb + 2 * H + rows, mask=rmask, other=0.0)
        a_o = tl.sum(w_o * hb, axis=1) + tl.load(xb + 3 * H + rows, mask=rmask, other=0.0)
        i = tl.sigmoid(a_i)
        f = tl.sigmoid(a_f)
        g = _tanh(a_g)
        o = tl.sigmoid(a_o)
        c = f * c + i * g
        h_new = o * _tanh(c)
        gb = gates_ptr + (d * CAP + row) * 4 * H
        tl.store(gb + rows, i, mask=rmask)
        tl.store(gb + H + rows, f, mask=rmask)
        tl.store(gb + 2 * H + rows, g, mask=rmask)
        tl.store(gb + 3 * H + rows, o, mask=rmask)
        tl.store(cells_ptr + (d * CAP + row) * H + rows, c, mask=rmask)
        tl.store(out_ptr + (b * T + t) * 2 * H + d * H + rows, h_new, mask=rmask)
        h = h_new
    tl.store(hn_ptr + (d * B + b) * H + rows, h, mask=rmask)
    tl.store(cn_ptr + (d * B + b) * H + rows, c, mask=rmask)


@triton.jit
def _bilstm_bwd_kernel(
    gout_ptr,  # (B, T, 2H)
    ghn_ptr,  # (2, B, H)
    gcn_ptr,  # (2, B, H)
    whh_ptr,  # (2, 4H, H)
    len_ptr,
    off_ptr,
    gates_ptr,  # (2, CAP, 4H)
    cells_ptr,  # (2, CAP, H)
    da_ptr,  # (2, CAP, 4H) out: gate pre-activation gradients
    B,
    T,
    CAP,
    H,
    BLOCK_H: tl.constexpr,
    W_IN_REGS: tl.constexpr,
):
    b = tl.program_id(0)
    d = tl.program_id(1)
    L = tl.load(len_ptr + b).to(tl.int32)
    off = tl.load(off_ptr + b).to(tl.int32)
    rows = tl.arange(0, BLOCK_H)  # gate unit (the reduction axis of dh = dA W_hh)
    cols = tl.arange(0, BLOCK_H)  # hidden unit
    rmask = rows < H
    wmask = rmask[:, None] & (cols[None, :] < H)
    wbase = whh_ptr + d * 4 * H * H
    w_off = rows[:, None] * H + cols[None, :]
    if W_IN_REGS:
        w_i = tl.load(wbase + w_off, mask=wmask, other=0.0)
        w_f = tl.load(wbase + H * H + w_off, mask=wmask, other=0.0)
        w_g = tl.load(wbase + 2 * H * H + w_off, mask=wmask, other=0.0)
        w_o = tl.load(wbase + 3 * H * H + w_off, mask=wmask, other=0.0)
    dh = tl.load(ghn_ptr + (d * B + b) * H + rows, mask=rmask, other=0.0)
    dc = tl.load(gcn_ptr + (d * B + b) * H + rows, mask=rmask, other=0.0)
    for q in range(0, L):
        s = L - 1 - q  # step in processing order, walked backwards
        t = tl.where(d == 0, s, L - 1 - s)
        t_prev = tl.where(d == 0, t - 1, t + 1)
        row = off + t
        gb = gates_ptr + (d * CAP + row) * 4 * H
        i = tl.load(gb + rows, mask=rmask, other=0.0)
        f = tl.load(gb + H + rows, mask=rmask, other=0.0)
        g = tl.load(gb + 2 * H + rows, mask=rmask, other=0.0)
        o = tl.load(gb + 3 * H + rows, mask=rmask, other=0.0)
        c = tl.load(cells_ptr + (d * CAP + row) * H + rows, mask=rmask, other=0.0)
        pmask = rmask & ((rows * 0 + s) > 0)  # no previous cell state at the walk's first step
        c_prev = tl.load(cells_ptr + (d * CAP + off + t_prev) * H + rows, mask=pmask, other=0.0)
        go = tl.load(gout_ptr + (b * T + t) * 2 * H + d * H + rows, mask=rmask, other=0.0)
        tc = _tanh(c)
        dh_t = dh + go
        dc_t = dc + dh_t * o * (1.0 - tc * tc)
        da_i = dc_t * g * i * (1.0 - i)
        da_f = dc_t * c_prev * f * (1.0 - f)
        da_g = dc_t * i * (1.0 - g * g)
        da_o = dh_t * tc * o * (1.0 - o)
        db = da_ptr + (d * CAP + row) * 4 * H
        tl.store(db + rows, da_i, mask=rmask)
        tl.store(db + H + rows, da_f, mask=rmask)
        tl.store(db + 2 * H + rows, da_g, mask=rmask)
        tl.store(db + 3 * H + rows, da_o, mask=rmask)
        if not W_IN_REGS:
            w_i = tl.load(wbase + w_off, mask=wmask, other=0.0)
            w_f = tl.load(wbase + H * H + w_off, mask=wmask, other=0.0)
            w_g = tl.load(wbase + 2 * H * H + w_off, mask=wmask, other=0.0)
            w_o = tl.load(wbase + 3 * H * H + w_off, mask=wmask, other=0.0)
        dh_rec = (
            tl.sum(w_i * da_i[:, None], axis=0)
            + tl.sum(w_f * da_f[:, None], axis=0)
            + tl.sum(w_g * da_g[:, None], axis=0)
            + tl.sum(w_o * da_o[:, None], axis=0)
        )
        dc = dc_t * f
        dh = dh_rec


def _compact_index(lengths: torch.Tensor, T: int, capacity: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For compact rows 0..capacity-1: the flat (b * T + t) index into (B*T), a validity mask, and
    the exclusive prefix sum ``off`` of lengths. No device sync."""
    ends = torch.cumsum(lengths, 0)
    off = ends - lengths
    r = torch.arange(capacity, device=lengths.device)
    b = torch.searchsorted(ends, r, right=True)
    valid = b < lengths.shape[0]
    b = b.clamp_max(lengths.shape[0] - 1)
    t = r - off[b]
    return b * T + t.clamp(0, T - 1), valid, off


def _check_supported(x: torch.Tensor, H: int) -> None:
    if x.dtype != torch.float32:
        raise TypeError(f"masked_bilstm (Triton): only float32 is supported, got {x.dtype}")
    if H > MAX_HIDDEN:
        raise ValueError(f"masked_bilstm (Triton): hidden size {H} > {MAX_HIDDEN} is not supported")


def _launch_params(H: int) -> tuple[int, bool, int]:
    # one program holds the 4 gates' (BLOCK_H, BLOCK_H) tiles of W_hh: H = 64 puts 4 x 64 x 64
    # fp32 over 8 warps (256 threads)
    block_h = calculate_settings(H, min_block=16)[0]
    _, num_warps = calculate_settings(H, min_block=16, tile=4 * block_h)
    return block_h, block_h <= 64, num_warps


def masked_bilstm_forward(
    x: torch.Tensor, lengths: torch.Tensor, weights: Sequence[torch.Tensor], capacity: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Host launcher of the forward; same contract as ``edgekd::masked_bilstm``."""
    w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r = weights
    B, T, E = x.shape
    H = w_hh.shape[1]
    _check_supported(x, H)
    x = x.contiguous()
    lengths = lengths.to(device=x.device, dtype=torch.int64)
    flat, valid, off = _compact_index(lengths, T, capacity)
    xc = x.reshape(B * T, E).index_select(0, flat)  # (CAP, E); rows past sum(lengths) are never read
    xproj = torch.stack(
        [torch.addmm(b_ih + b_hh, xc, w_ih.t()), torch.addmm(b_ih_r + b_hh_r, xc, w_ih_r.t())]
    ).contiguous()
    whh = torch.stack([w_hh, w_hh_r]).contiguous()
    out = x.new_zeros(B, T, 2 * H)
    h_n = x.new_zeros(2, B, H)
    c_n = x.new_zeros(2, B, H)
    gates = x.new_zeros(2, capacity, 4 * H)
    cells = x.new_zeros(2, capacity, H)
    block_h, w_in_regs, num_warps = _launch_params(H)
    _bilstm_fwd_kernel[(B, 2)](
        xproj, whh, lengths, off, out, h_n, c_n, gates, cells, B, T, capacity, H,
        BLOCK_H=block_h, W_IN_REGS=w_in_regs, num_warps=num_warps,
    )
    return out, h_n, c_n, gates, cells


def masked_bilstm_backward(
    grad_output: torch.Tensor,
    grad_h_n: torch.Tensor,
    grad_c_n: torch.Tensor,
    x: torch.Tensor,
    lengths: torch.Tensor,
    weights: Sequence[torch.Tensor],
    output: torch.Tensor,
    gates: torch.Tensor,
    cells: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """Host launcher of the backward; same contract as ``edgekd::masked_bilstm_backward``.

    ``weights`` = (w_ih, w_hh, w_ih_reverse, w_hh_reverse). Returns (grad_x, then the 8 weight
    gradients in nn.LSTM order; the two bias gradients of a direction are equal).
    """
    w_ih, w_hh, w_ih_r, w_hh_r = weights
    B, T, E = x.shape
    H = w_hh.shape[1]
    _check_supported(x, H)
    capacity = gates.shape[1]
    lengths = lengths.to(device=x.device, dtype=torch.int64)
    flat, valid, off = _compact_index(lengths, T, capacity)
    whh = torch.stack([w_hh, w_hh_r]).contiguous()
    dA = x.new_zeros(2, capacity, 4 * H)
    block_h, w_in_regs, num_warps = _launch_params(H)
    _bilstm_bwd_kernel[(B, 2)](
        grad_output.contiguous(), grad_h_n.contiguous(), grad_c_n.contiguous(), whh, lengths, off,
        gates.contiguous(), cells.contiguous(), dA, B, T, capacity, H,
        BLOCK_H=block_h, W_IN_REGS=w_in_regs, num_warps=num_warps,
    )
    # compact x and h_{t-1} (zero at each walk's first step: the forward direction's t = 0 gets the
    # zero pad in front, the reverse direction's t = len - 1 reads the zero padding at t = len)
    vm = valid[:, None].to(x.dtype)
    xc = x.reshape(B * T, E).index_select(0, flat) * vm
    zero = output.new_zeros(B, 1, H)
    hprev_f = torch.cat([zero, output[:, :-1, :H]], dim=1).reshape(B * T, H).index_select(0, flat) * vm
    hprev_r = torch.cat([output[:, 1:, H:], zero], dim=1).reshape(B * T, H).index_select(0, flat) * vm
    grads = []
    for d, hprev in ((0, hprev_f), (1, hprev_r)):
        dAt = dA[d].t()
        db = dA[d].sum(0)
        grads += [dAt @ xc, dAt @ hprev, db, db.clone()]
    dx_rows = dA[0] @ w_ih + dA[1] @ w_ih_r  # (CAP, E), zero on the rows past sum(lengths)
    dx = x.new_zeros(B * T, E)
    dx.index_add_(0, flat, dx_rows)
    return (dx.view(B, T, E), *grads)
