"""Masked bidirectional LSTM: ``edgekd.ops.masked_bilstm``.

A single-layer bidirectional LSTM (batch first) that respects each sequence's length: the forward
direction runs over ``x[b, :len[b]]`` and the reverse direction starts at ``len[b] - 1``, never on
padding. It returns exactly what ``torch.nn.LSTM`` returns on
``pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)`` after
``pad_packed_sequence(..., total_length=T)``: ``(output (B, T, 2H) zero at t >= len, h_n (2, B, H),
c_n (2, B, H))``, with zero initial states.

Low-level ops: ``edgekd::masked_bilstm`` / ``edgekd::masked_bilstm_backward``. The forward also
returns what the backward needs, ``gates`` (2, capacity, 4H: activated i, f, g, o) and ``cells``
(2, capacity, H: c_t), in *compact rows*: the valid timesteps of all sequences one after the other,
row ``off[b] + t`` with ``off`` the exclusive prefix sum of ``lengths`` (rows past ``sum(lengths)``
up to ``capacity`` are zero). Eager calls use ``capacity = sum(lengths)``; under ``torch.compile``
the public function passes ``B * T`` (a static bound) so no data-dependent shape appears.
Kernels: C++ on the CPU (``csrc/cpu/masked_bilstm.cpp``), Triton on CUDA
(``kernels/masked_bilstm.py``), the reference as the CPU fallback when ``edgekd._C`` is missing.

Sections (the same in every op module, see STYLE.md): schema, fake kernel, CPU fallback, CUDA
(Triton), autograd, public function, reference, input checks.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from edgekd._ext import has_extension, warn_fallback
from edgekd.errors import EdgekdValueError
from edgekd.ops._common import triton_kernels

__all__ = [
    "masked_bilstm",
    "masked_bilstm_module",
    "lstm_weights",
    "masked_bilstm_reference",
    "masked_bilstm_reference_forward",
    "masked_bilstm_reference_backward",
    "check_masked_bilstm_inputs",
    "WEIGHT_NAMES",
]

#: The 8 weights in ``torch.nn.LSTM`` (bidirectional, one layer) order.
WEIGHT_NAMES = (
    "weight_ih_l0",
    "weight_hh_l0",
    "bias_ih_l0",
    "bias_hh_l0",
    "weight_ih_l0_reverse",
    "weight_hh_l0_reverse",
    "bias_ih_l0_reverse",
    "bias_hh_l0_reverse",
)
_WEIGHT_NAMES_LIST = list(WEIGHT_NAMES)

_FWD = "edgekd::masked_bilstm"
_BWD = "edgekd::masked_bilstm_backward"


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------
torch.library.define(
    _FWD,
    "(Tensor x, Tensor lengths, Tensor w_ih, Tensor w_hh, Tensor b_ih, Tensor b_hh, Tensor w_ih_reverse, "
    "Tensor w_hh_reverse, Tensor b_ih_reverse, Tensor b_hh_reverse, SymInt capacity) "
    "-> (Tensor output, Tensor h_n, Tensor c_n, Tensor gates, Tensor cells)",
)
torch.library.define(
    _BWD,
    "(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor x, Tensor lengths, Tensor w_ih, Tensor w_hh, "
    "Tensor w_ih_reverse, Tensor w_hh_reverse, Tensor output, Tensor gates, Tensor cells) -> (Tensor grad_x, "
    "Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh, Tensor grad_w_ih_reverse, "
    "Tensor grad_w_hh_reverse, Tensor grad_b_ih_reverse, Tensor grad_b_hh_reverse)",
)


# --------------------------------------------------------------------------------------------
# Fake kernel
# --------------------------------------------------------------------------------------------
@torch.library.register_fake(_FWD)
def _forward_fake(x, lengths, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r, capacity):
    B, T, _ = x.shape
    H = w_hh.shape[1]
    return (
        x.new_empty(B, T, 2 * H),
        x.new_empty(2, B, H),
        x.new_empty(2, B, H),
        x.new_empty(2, capacity, 4 * H),
        x.new_empty(2, capacity, H),
    )


@torch.library.register_fake(_BWD)
def _backward_fake(grad_output, grad_h_n, grad_c_n, x, lengths, w_ih, w_hh, w_ih_r, w_hh_r, output, gates, cells):
    return (
        torch.empty_like(x),
        torch.empty_like(w_ih),
        torch.empty_like(w_hh),
        w_hh.new_empty(w_hh.shape[0]),
        w_hh.new_empty(w_hh.shape[0]),
        torch.empty_like(w_ih_r),
        torch.empty_like(w_hh_r),
        w_hh_r.new_empty(w_hh_r.shape[0]),
        w_hh_r.new_empty(w_hh_r.shape[0]),
    )


# --------------------------------------------------------------------------------------------
# CPU fallback (only when edgekd._C is missing)
# --------------------------------------------------------------------------------------------
if not has_extension():

    @torch.library.register_kernel(_FWD, "cpu")
    def _forward_cpu_fallback(x, lengths, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r, capacity):
        warn_fallback("masked_bilstm")
        return masked_bilstm_reference_forward(
            x, lengths, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r, capacity
        )

    @torch.library.register_kernel(_BWD, "cpu")
    def _backward_cpu_fallback(
        grad_output, grad_h_n, grad_c_n, x, lengths, w_ih, w_hh, w_ih_r, w_hh_r, output, gates, cells
    ):
        warn_fallback("masked_bilstm")
        return masked_bilstm_reference_backward(
            grad_output, grad_h_n, grad_c_n, x, lengths, w_ih, w_hh, w_ih_r, w_hh_r, output, gates, cells
        )


# --------------------------------------------------------------------------------------------
# CUDA (Triton)
# --------------------------------------------------------------------------------------------
@torch.library.register_kernel(_FWD, "cuda")
def _forward_cuda(x, lengths, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r, capacity):
    kernels = triton_kernels("masked_bilstm", "masked_bilstm")
    return kernels.masked_bilstm_forward(x, lengths, (w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r), capacity)


@torch.library.register_kernel(_BWD, "cuda")
def _backward_cuda(grad_output, grad_h_n, grad_c_n, x, lengths, w_ih, w_hh, w_ih_r, w_hh_r, output, gates, cells):
    kernels = triton_kernels("masked_bilstm", "masked_bilstm_backward")
    return kernels.masked_bilstm_backward(
        grad_output, grad_h_n, grad_c_n, x, lengths, (w_ih, w_hh, w_ih_r, w_hh_r), output, gates, cells
    )


# --------------------------------------------------------------------------------------------
# Autograd
# --------------------------------------------------------------------------------------------
def _setup_context(ctx, inputs, output) -> None:
    x, lengths, w_ih, w_hh, _b_ih, _b_hh, w_ih_r, w_hh_r, _b_ih_r, _b_hh_r, _capacity = inputs
    out, _h_n, _c_n, gates, cells = output
    ctx.mark_non_differentiable(gates, cells)
    ctx.save_for_backward(x, lengths, w_ih, w_hh, w_ih_r, w_hh_r, out, gates, cells)


def _backward(ctx, grad_output, grad_h_n, grad_c_n, _grad_gates, _grad_cells):
    x, lengths, w_ih, w_hh, w_ih_r, w_hh_r, out, gates, cells = ctx.saved_tensors
    if grad_output is None:
        grad_output = torch.zeros_like(out)
    if grad_h_n is None:
        grad_h_n = out.new_zeros(2, x.shape[0], w_hh.shape[1])
    if grad_c_n is None:
        grad_c_n = out.new_zeros(2, x.shape[0], w_hh.shape[1])
    grads = torch.ops.edgekd.masked_bilstm_backward(
        grad_output, grad_h_n, grad_c_n, x, lengths, w_ih, w_hh, w_ih_r, w_hh_r, out, gates, cells
    )
    gx, *gw = grads
    return (gx, None, *gw, None)


torch.library.register_autograd(_FWD, _backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------
# Public function
# --------------------------------------------------------------------------------------------
def masked_bilstm(
    x: torch.Tensor,
    lengths: torch.Tensor,
    weights: Sequence[torch.Tensor],
    *,
    validate: bool = True,
    num_valid: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bidirectional single-layer LSTM over the valid timesteps of each sequence.

    Args:
        x: (B, T, E) float32 or float64 inputs, batch first.
        lengths: (B,) int64 valid lengths, ``1 <= lengths[b] <= T``, on the CPU or on x's device.
        weights: the 8 ``torch.nn.LSTM`` tensors (bidirectional, one layer) in :data:`WEIGHT_NAMES`
            order, gate order i, f, g, o: ``weight_ih (4H, E), weight_hh (4H, H), bias_ih (4H,),
            bias_hh (4H,)`` then the same for the reverse direction.
        validate: check the inputs (also their values: lengths, NaN) and raise
            :class:`~edgekd.errors.EdgekdValueError` on bad input. Callers that have already
            validated (e.g. the student model, with ``lengths`` on x's device) pass ``False``.
        num_valid: ``sum(lengths)`` when the caller knows it (saves reading ``lengths``).

    Returns:
        ``(output, h_n, c_n)``: output (B, T, 2H) with zeros at ``t >= lengths[b]`` (forward
        states in ``[..., :H]``, reverse in ``[..., H:]``), h_n and c_n (2, B, H): the final states
        (forward at ``t = len - 1``, reverse at ``t = 0``). Same as ``nn.LSTM`` on a packed input.
        Differentiable in x and all weights.

    Raises:
        EdgekdValueError: on a bad shape, dtype, device, length (0 or > T) or non-finite x.
    """
    if validate:
        lengths, w, capacity = check_masked_bilstm_inputs(x, lengths, weights)
    else:
        w = list(weights)
        if num_valid is not None and not torch.compiler.is_compiling():
            capacity = int(num_valid)
        else:  # B*T bounds sum(lengths) without reading it (torch.compile)
            capacity = x.shape[0] * x.shape[1] if torch.compiler.is_compiling() else int(lengths.sum())
    out, h_n, c_n, _gates, _cells = torch.ops.edgekd.masked_bilstm(x, lengths, *w, capacity)
    return out, h_n, c_n


def masked_bilstm_module(
    x: torch.Tensor, lengths: torch.Tensor, lstm: torch.nn.LSTM
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`masked_bilstm` with the weights of ``lstm`` (bidirectional, one layer, with biases)."""
    if not isinstance(lstm, torch.nn.LSTM):
        raise EdgekdValueError(f"masked_bilstm_module: lstm must be a torch.nn.LSTM, got {type(lstm).__name__}")
    if not (lstm.bidirectional and lstm.num_layers == 1 and lstm.bias and lstm.batch_first and lstm.proj_size == 0):
        raise EdgekdValueError(
            "masked_bilstm_module: lstm must be nn.LSTM(bidirectional=True, num_layers=1, bias=True, "
            f"batch_first=True, proj_size=0), got {lstm}"
        )
    return masked_bilstm(x, lengths, [getattr(lstm, name) for name in WEIGHT_NAMES])


def lstm_weights(lstm: torch.nn.LSTM) -> list[torch.Tensor]:
    """The 8 tensors of a bidirectional one-layer ``nn.LSTM`` in :data:`WEIGHT_NAMES` order.

    ``nn.LSTM`` keeps this list in sync with its parameters (also when one is re-assigned); reading
    it costs one attribute lookup instead of eight ``nn.Module.__getattr__`` calls, which matters at
    batch 1. Falls back to the names when the layout is not the expected one, or when tracing.
    """
    if getattr(lstm, "_flat_weights_names", None) == _WEIGHT_NAMES_LIST and not torch.compiler.is_compiling():
        return lstm._flat_weights
    return [getattr(lstm, name) for name in WEIGHT_NAMES]


# --------------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------------
def masked_bilstm_reference(
    x: torch.Tensor, lengths: torch.Tensor, weights: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The oracle: ``nn.LSTM`` semantics on a packed sequence, with the given weights.

    ``x`` (B, T, E), ``lengths`` (B,) int64 (any device), ``weights`` the 8 LSTM tensors in
    :data:`WEIGHT_NAMES` order. Differentiable through autograd. Returns ``(output, h_n, c_n)``.
    """
    B, T, _ = x.shape
    H = weights[1].shape[1]
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    zeros = x.new_zeros(2, B, H)
    data, h_n, c_n = torch._VF.lstm(
        packed.data, packed.batch_sizes, (zeros, zeros), list(weights), True, 1, 0.0, False, True
    )
    out, _ = pad_packed_sequence(
        PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices),
        batch_first=True,
        total_length=T,
    )
    unsorted = packed.unsorted_indices
    return out, h_n.index_select(1, unsorted), c_n.index_select(1, unsorted)


def _valid_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """(B, T) bool: True at the valid timesteps t < lengths[b]."""
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]


def _previous_hidden(out_half: torch.Tensor, direction: int) -> torch.Tensor:
    """h_{t-1} of each timestep in processing order, (B, T, H), from one direction's outputs.

    Forward: h at t - 1 (zero at t = 0). Reverse: h at t + 1, which is the zero padding at
    t = len - 1, so the first reverse step also sees a zero state.
    """
    pad = torch.zeros_like(out_half[:, :1])
    if direction == 0:
        return torch.cat([pad, out_half[:, :-1]], dim=1)
    return torch.cat([out_half[:, 1:], pad], dim=1)


def masked_bilstm_reference_forward(x, lengths, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r, capacity):
    """The op's forward in plain PyTorch: the reference outputs plus the compact gates and cells.

    Gates follow from the reference outputs in one batched GEMM per direction (a_t = x_t W_ih^T +
    h_{t-1} W_hh^T + b), the cells from an elementwise scan c_t = f_t c_{t-1} + i_t g_t.
    """
    B, T, _ = x.shape
    H = w_hh.shape[1]
    lengths = lengths.to(x.device)
    out, h_n, c_n = masked_bilstm_reference(x, lengths, (w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r))
    mask = _valid_mask(lengths, T)
    gates_all, cells_all = [], []
    for d, (wi, wh, bi, bh) in enumerate(((w_ih, w_hh, b_ih, b_hh), (w_ih_r, w_hh_r, b_ih_r, b_hh_r))):
        h_prev = _previous_hidden(out[..., d * H : (d + 1) * H], d)
        a = x @ wi.t() + h_prev @ wh.t() + bi + bh
        ai, af, ag, ao = a.split(H, dim=-1)
        m = mask[..., None].to(x.dtype)
        i, f, g, o = torch.sigmoid(ai) * m, torch.sigmoid(af) * m, torch.tanh(ag) * m, torch.sigmoid(ao) * m
        c = x.new_zeros(B, H)
        cells = x.new_zeros(B, T, H)
        steps = range(T) if d == 0 else range(T - 1, -1, -1)
        for t in steps:  # padding has zero gates, so c is zero there and at each sequence's start
            c = f[:, t] * c + i[:, t] * g[:, t]
            cells[:, t] = c
        gates = torch.cat([i, f, g, o], dim=-1)
        gates_all.append(_to_compact(gates[mask], capacity))
        cells_all.append(_to_compact(cells[mask], capacity))
    return out, h_n, c_n, torch.stack(gates_all), torch.stack(cells_all)


def _to_compact(rows: torch.Tensor, capacity: int) -> torch.Tensor:
    if rows.shape[0] == capacity:
        return rows
    return torch.cat([rows, rows.new_zeros(capacity - rows.shape[0], *rows.shape[1:])])


def masked_bilstm_reference_backward(grad_output, grad_h_n, grad_c_n, x, lengths, w_ih, w_hh, w_ih_r, w_hh_r, output, gates, cells):
    """Backward through time in plain PyTorch, vectorized over the batch with masks.

    The same maths as the C++ and Triton kernels: per step, with dh = dh_rec + grad_output and
    dc = dc_rec + dh o (1 - tanh^2 c): da_i = dc g i(1-i), da_f = dc c_prev f(1-f),
    da_g = dc i (1-g^2), da_o = dh tanh(c) o(1-o); dh_rec = da W_hh, dc_rec = dc f.
    """
    B, T, E = x.shape
    H = w_hh.shape[1]
    lengths = lengths.to(x.device)
    mask = _valid_mask(lengths, T)
    N = int(lengths.sum())
    m = mask[..., None].to(x.dtype)
    grads = []
    dxs = []
    for d, (wi, wh) in enumerate(((w_ih, w_hh), (w_ih_r, w_hh_r))):
        g_pad = x.new_zeros(B, T, 4 * H)
        g_pad[mask] = gates[d, :N]
        c_pad = x.new_zeros(B, T, H)
        c_pad[mask] = cells[d, :N]
        i, f, g, o = g_pad.split(H, dim=-1)
        c_prev = _previous_hidden(c_pad, d)
        tc = torch.tanh(c_pad)
        h_prev = _previous_hidden(output[..., d * H : (d + 1) * H], d)
        dA = x.new_zeros(B, T, 4 * H)
        dh = x.new_zeros(B, H)
        dc = x.new_zeros(B, H)
        # backward in processing order: forward direction from t = T-1 down, reverse from t = 0 up
        steps = range(T - 1, -1, -1) if d == 0 else range(T)
        for t in steps:
            # the step where a sequence's walk ended starts from the final-state gradients
            start = (lengths - 1 == t) if d == 0 else torch.full_like(lengths, t == 0, dtype=torch.bool)
            dh = torch.where(start[:, None], grad_h_n[d], dh)
            dc = torch.where(start[:, None], grad_c_n[d], dc)
            dh_t = dh + grad_output[:, t, d * H : (d + 1) * H]
            dc_t = dc + dh_t * o[:, t] * (1 - tc[:, t] ** 2)
            da = torch.cat(
                [
                    dc_t * g[:, t] * i[:, t] * (1 - i[:, t]),
                    dc_t * c_prev[:, t] * f[:, t] * (1 - f[:, t]),
                    dc_t * i[:, t] * (1 - g[:, t] ** 2),
                    dh_t * tc[:, t] * o[:, t] * (1 - o[:, t]),
                ],
                dim=-1,
            ) * m[:, t]
            dA[:, t] = da
            dh = da @ wh
            dc = dc_t * f[:, t]
        dA2 = dA.reshape(B * T, 4 * H)
        db = dA2.sum(0)
        grads += [dA2.t() @ x.reshape(B * T, E), dA2.t() @ h_prev.reshape(B * T, H), db, db.clone()]
        dxs.append(dA @ wi)
    return (dxs[0] + dxs[1], *grads)


# the private names of these references before all ops followed one naming scheme
_reference_forward_with_saved = masked_bilstm_reference_forward
_reference_backward = masked_bilstm_reference_backward


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------
def check_masked_bilstm_inputs(x, lengths, weights) -> tuple[torch.Tensor, list[torch.Tensor], int]:
    """Validate the public arguments; returns (lengths on x's device, weights, capacity)."""
    if not isinstance(x, torch.Tensor):
        raise EdgekdValueError(f"masked_bilstm: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise EdgekdValueError(f"masked_bilstm: x must have shape (B, T, E), got rank {x.dim()} {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float64):
        raise EdgekdValueError(f"masked_bilstm: x must be float32 or float64, got {x.dtype}")
    B, T, E = x.shape
    if B == 0 or T == 0 or E == 0:
        raise EdgekdValueError(f"masked_bilstm: x must have non-empty B, T and E, got {tuple(x.shape)}")
    if not isinstance(lengths, torch.Tensor):
        raise EdgekdValueError(f"masked_bilstm: lengths must be a torch.Tensor, got {type(lengths).__name__}")
    if lengths.dtype != torch.int64:
        raise EdgekdValueError(f"masked_bilstm: lengths must be int64, got {lengths.dtype}")
    if lengths.dim() != 1:
        raise EdgekdValueError(f"masked_bilstm: lengths must have shape (B,), got rank {lengths.dim()}")
    if lengths.shape[0] != B:
        raise EdgekdValueError(f"masked_bilstm: lengths has {lengths.shape[0]} rows but x has batch {B}")
    if lengths.device.type != "cpu" and lengths.device != x.device:
        raise EdgekdValueError(
            f"masked_bilstm: lengths must be on the CPU or on x's device {x.device}, got {lengths.device}"
        )
    if isinstance(weights, torch.Tensor) or not isinstance(weights, Sequence):
        raise EdgekdValueError("masked_bilstm: weights must be a sequence of 8 tensors (nn.LSTM order)")
    weights = list(weights)
    if len(weights) != 8:
        raise EdgekdValueError(
            f"masked_bilstm: weights must hold 8 tensors ({', '.join(WEIGHT_NAMES)}), got {len(weights)}"
        )
    for name, w in zip(WEIGHT_NAMES, weights):
        if not isinstance(w, torch.Tensor):
            raise EdgekdValueError(f"masked_bilstm: {name} must be a torch.Tensor, got {type(w).__name__}")
    if weights[1].dim() != 2:
        raise EdgekdValueError(f"masked_bilstm: weight_hh_l0 must be 2-D (4H, H), got {tuple(weights[1].shape)}")
    H = weights[1].shape[1]
    if H == 0:
        raise EdgekdValueError("masked_bilstm: hidden size H must be >= 1")
    shapes = ((4 * H, E), (4 * H, H), (4 * H,), (4 * H,)) * 2
    x_dtype, x_device = x.dtype, x.device
    for name, w, want in zip(WEIGHT_NAMES, weights, shapes):
        if w.shape != want:
            raise EdgekdValueError(
                f"masked_bilstm: {name} must have shape {want} (H={H}, E={E}), got {tuple(w.shape)}"
            )
        if w.dtype != x_dtype:
            raise EdgekdValueError(f"masked_bilstm: {name} has dtype {w.dtype} but x has {x_dtype}")
        if w.device != x_device:
            raise EdgekdValueError(f"masked_bilstm: {name} is on {w.device} but x is on {x_device}")
    if torch.compiler.is_compiling():
        # no data-dependent checks (they would break the graph); B*T bounds sum(lengths)
        return lengths.to(x.device), weights, B * T
    if lengths.device.type == "cpu":
        lens = lengths.tolist()
        lo, hi, total = min(lens), max(lens), sum(lens)
    else:
        lo, hi, total = torch.stack([lengths.min(), lengths.max(), lengths.sum()]).tolist()
    if lo < 1:
        bad = int(torch.nonzero(lengths < 1)[0, 0])
        raise EdgekdValueError(
            f"masked_bilstm: every row needs length >= 1, but lengths[{bad}] = {int(lengths[bad])}"
        )
    if hi > T:
        bad = int(torch.nonzero(lengths > T)[0, 0])
        raise EdgekdValueError(
            f"masked_bilstm: lengths must be <= T = {T}, but lengths[{bad}] = {int(lengths[bad])}"
        )
    # one reduction on the fast path; a non-finite sum is confirmed element-wise (it can overflow)
    if not math.isfinite(float(x.detach().sum())) and not bool(torch.isfinite(x).all()):
        raise EdgekdValueError("masked_bilstm: x holds NaN or inf values")
    if lengths.device != x.device:
        lengths = lengths.to(x.device)
    return lengths, weights, int(total)
