"""Fused inference forward of the DiXtill student: ``edgekd::bilstm_attention_forward``.

One op for the whole inference pass of :class:`edgekd.students.BiLSTMAttentionStudent`:
input check, embedding gather, the masked BiLSTM over each row's valid tokens, masked additive
attention pooling and the linear classifier::

    x_t = embedding[input_ids_t]
    h_t = [LSTM_fwd(x)_t ; LSTM_bwd(x)_t]          over t < len (len = sum of the mask row)
    e_t = v^T tanh(W h_t)                           0 at padding
    alpha = softmax(e) over t < len                 0 at padding
    logits = cls_W (sum_t alpha_t h_t) + cls_b

``-> (logits (B, C), attention_logits (B, T), attention (B, T))``.

Why a separate op: at batch 1 the student's forward is tens of microseconds of arithmetic, and the
unfused native path (``masked_bilstm`` + ``masked_attention_pool`` + ATen embedding and Linear)
spent most of its time in per-call overhead. This op is **inference only**: it has no backward
(its autograd formula raises); training goes through the two differentiable ops.

Three ops, all in this module:

- ``edgekd::bilstm_attention_forward(input_ids, attention_mask, embedding, <8 LSTM tensors>, att_W,
  att_v, cls_W, cls_b, packed=None)``: the fused forward;
- ``edgekd::bilstm_attention_pack(<8 LSTM tensors>, att_W)``: the weights in the kernel's layout
  (transposed, padded); :class:`PackedWeightsCache` keeps it while the weights do not change;
- ``edgekd::bilstm_attention_check_inputs(input_ids, attention_mask, vocab_size) -> (lengths, mask,
  total)``: the one check of a post-padded batch (ids in range, a 0/1 mask of ones then zeros, >= 1
  token per row) in one pass; ``total`` (0-dim int64) ``= sum(lengths)``, or -1 for an invalid batch.

Kernels: C++ on the CPU (``csrc/cpu/bilstm_attention.cpp``), on CUDA the two Triton-backed ops in
sequence, the reference as the CPU fallback when ``edgekd._C`` is missing.
:func:`fused_forward_applies` and :class:`PackedWeightsCache` are the dispatch the student uses.

Sections (the same in every op module, see STYLE.md): schema, fake kernel, CPU fallback, CUDA
(Triton), autograd, public function, reference, input checks.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from edgekd import _ext
from edgekd.errors import EdgekdValueError
from edgekd.ops._common import kernel_error
from edgekd.ops.masked_attention_pool import masked_attention_pool_reference
from edgekd.ops.masked_bilstm import masked_bilstm_reference

__all__ = [
    "bilstm_attention_forward",
    "bilstm_attention_pack",
    "PackedWeightsCache",
    "fused_forward_applies",
    "FUSED_MAX_BATCH",
    "packed_size",
    "bilstm_attention_forward_reference",
    "bilstm_attention_pack_reference",
    "check_bilstm_attention_inputs",
]

_OP = "edgekd::bilstm_attention_forward"
_PACK = "edgekd::bilstm_attention_pack"
_CHECK = "edgekd::bilstm_attention_check_inputs"
_PAD = 32  # register block of the C++ matvecs (kGemvBlock in csrc/cpu/masked_bilstm_kernels.h)

#: largest CPU batch that runs on the fused op: at batch 16 it ties the batched kernels at H = 50
#: and loses at H = 128 (benchmarks/results/student.md)
FUSED_MAX_BATCH = 8

# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------
torch.library.define(
    _OP,
    "(Tensor input_ids, Tensor attention_mask, Tensor embedding, Tensor w_ih, Tensor w_hh, Tensor b_ih, "
    "Tensor b_hh, Tensor w_ih_reverse, Tensor w_hh_reverse, Tensor b_ih_reverse, Tensor b_hh_reverse, "
    "Tensor att_W, Tensor att_v, Tensor cls_W, Tensor cls_b, Tensor? packed=None) -> (Tensor, Tensor, Tensor)",
)
torch.library.define(
    _PACK,
    "(Tensor w_ih, Tensor w_hh, Tensor b_ih, Tensor b_hh, Tensor w_ih_reverse, Tensor w_hh_reverse, "
    "Tensor b_ih_reverse, Tensor b_hh_reverse, Tensor att_W) -> Tensor",
)
torch.library.define(_CHECK, "(Tensor input_ids, Tensor attention_mask, int vocab_size) -> (Tensor, Tensor, Tensor)")


# --------------------------------------------------------------------------------------------
# Fake kernel
# --------------------------------------------------------------------------------------------
@torch.library.register_fake(_OP)
def _fake(input_ids, attention_mask, embedding, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r, att_W, att_v, cls_W, cls_b, packed=None):
    B, T = input_ids.shape
    C = cls_W.shape[0]
    return embedding.new_empty((B, C)), embedding.new_empty((B, T)), embedding.new_empty((B, T))


@torch.library.register_fake(_PACK)
def _pack_fake(w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r, att_W):
    return w_ih.new_empty((packed_size(w_ih.shape[1], w_hh.shape[1], att_W.shape[0]),))


@torch.library.register_fake(_CHECK)
def _check_fake(input_ids, attention_mask, vocab_size):
    B, T = input_ids.shape
    return input_ids.new_empty((B,)), attention_mask.new_empty((B, T), dtype=torch.bool), input_ids.new_empty(())


# --------------------------------------------------------------------------------------------
# CPU fallback (only when edgekd._C is missing)
# --------------------------------------------------------------------------------------------
if not _ext.has_extension():  # a second CPU registration would silently override the C++ kernel

    @torch.library.register_kernel(_OP, "cpu")
    def _cpu_fallback(
        input_ids, attention_mask, embedding, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r, att_W, att_v, cls_W, cls_b,
        packed=None,
    ):  # packed (a cache of the C++ kernel) is not needed here
        _ext.warn_fallback("bilstm_attention_forward")
        weights = (w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r)
        out = bilstm_attention_forward_reference(input_ids, attention_mask, embedding, weights, att_W, att_v, cls_W, cls_b)
        return tuple(t.contiguous() for t in out)

    @torch.library.register_kernel(_PACK, "cpu")
    def _pack_cpu_fallback(w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r, att_W):
        _ext.warn_fallback("bilstm_attention_pack")
        return bilstm_attention_pack_reference(w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r, att_W)


# the check op's C++ kernel is missing also from an edgekd._C built before it existed: same rule
if not torch._C._dispatch_has_kernel_for_dispatch_key(_CHECK, "CPU"):
    torch.library.register_kernel(_CHECK, "cpu")(lambda ids, mask, vocab: _check_inputs_tensor_ops(ids, mask, vocab))


# --------------------------------------------------------------------------------------------
# CUDA (Triton)
# --------------------------------------------------------------------------------------------
@torch.library.register_kernel(_OP, "cuda")
def _cuda(input_ids, attention_mask, embedding, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r, att_W, att_v, cls_W, cls_b, packed=None):
    """The forward through the two low-level ops, whose CUDA kernels are Triton (and which apply
    the one policy for CUDA without Triton)."""
    valid = attention_mask != 0
    lengths = valid.sum(dim=1, dtype=torch.int64)
    x = torch.nn.functional.embedding(input_ids, embedding)
    weights = (w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r)
    states = torch.ops.edgekd.masked_bilstm.default(x.contiguous(), lengths, *weights, int(lengths.sum()))[0]
    context, att_logits, attention, _ = torch.ops.edgekd.masked_attention_pool.default(
        states, valid.contiguous(), att_W.contiguous(), att_v.contiguous()
    )
    return torch.nn.functional.linear(context, cls_W, cls_b), att_logits, attention


@torch.library.register_kernel(_PACK, "cuda")
def _pack_cuda(w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r, att_W):
    return bilstm_attention_pack_reference(w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r, att_W)


torch.library.register_kernel(_CHECK, "cuda")(lambda ids, mask, vocab: _check_inputs_tensor_ops(ids, mask, vocab))


# --------------------------------------------------------------------------------------------
# Autograd
# --------------------------------------------------------------------------------------------
def _setup_context(ctx, inputs, output) -> None:  # nothing to save: there is no backward
    pass


def _backward(ctx, *grads):
    raise EdgekdValueError(
        "bilstm_attention_forward is an inference-only op (no backward); train through "
        "BiLSTMAttentionStudent in training mode or with gradients enabled, which uses the "
        "differentiable masked_bilstm and masked_attention_pool ops"
    )


torch.library.register_autograd(_OP, _backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------
# Public function
# --------------------------------------------------------------------------------------------
def bilstm_attention_forward(
    input_ids: Tensor,
    attention_mask: Tensor,
    embedding: Tensor,
    lstm_weights: Sequence[Tensor],
    att_W: Tensor,
    att_v: Tensor,
    cls_W: Tensor,
    cls_b: Tensor,
    packed: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Fused inference forward of the BiLSTM-attention student (no gradients).

    Args:
        input_ids: (B, T) int64 token ids in ``[0, V)``.
        attention_mask: (B, T) bool or integer 0/1, post-padded, >= 1 valid token per row.
        embedding: (V, E) float32/float64 embedding table.
        lstm_weights: the 8 ``nn.LSTM`` tensors (``weight_ih_l0, weight_hh_l0, bias_ih_l0,
            bias_hh_l0`` and the ``_reverse`` ones) of a single-layer bidirectional LSTM.
        att_W, att_v: attention parameters (A, 2H) and (A,).
        cls_W, cls_b: classifier (C, 2H) and (C,).
        packed: optional :func:`bilstm_attention_pack` of these weights (saves re-packing them;
            :class:`PackedWeightsCache` keeps one up to date).

    Returns:
        ``(logits (B, C), attention_logits (B, T), attention (B, T))``, the last two 0 at padding.

    Raises :class:`~edgekd.errors.EdgekdValueError` naming the problem for a bad batch or
    mismatched weights. Use :class:`~edgekd.students.BiLSTMAttentionStudent` for a checked,
    trainable model: its forward calls this op in inference.
    """
    weights = list(lstm_weights)
    if len(weights) != 8:
        raise EdgekdValueError(f"bilstm_attention_forward: 'lstm_weights' must hold the 8 nn.LSTM tensors, got {len(weights)}")
    params = (embedding, att_W, att_v, cls_W, cls_b)
    for name, t in zip(("embedding", "att_W", "att_v", "cls_W", "cls_b"), params):
        if not isinstance(t, Tensor):
            raise EdgekdValueError(f"bilstm_attention_forward: '{name}' must be a torch.Tensor, got {type(t).__name__}")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (*params, *weights)):
        raise EdgekdValueError(
            "bilstm_attention_forward is inference-only: call it under torch.no_grad() / torch.inference_mode() "
            "(or use BiLSTMAttentionStudent, which trains through the differentiable ops)"
        )
    vocab_size = embedding.shape[0] if embedding.dim() == 2 else 0
    native = _ext.has_extension() and isinstance(input_ids, Tensor) and input_ids.device.type == "cpu"
    if not native:  # the C++ kernel checks the batch in its own pass; the others do not
        check_bilstm_attention_inputs(input_ids, attention_mask, vocab_size)
    try:
        return torch.ops.edgekd.bilstm_attention_forward.default(
            input_ids, attention_mask, embedding, *weights, att_W, att_v, cls_W, cls_b, packed
        )
    except RuntimeError as exc:  # the C++ kernel's TORCH_CHECKs
        if "invalid batch" in str(exc):  # name the problem in detail
            check_bilstm_attention_inputs(input_ids, attention_mask, vocab_size)
        raise kernel_error(exc) from exc


def bilstm_attention_pack(lstm_weights: Sequence[Tensor], att_W: Tensor) -> Tensor:
    """The weights of :func:`bilstm_attention_forward` in its kernel's layout (transposed, padded).

    Pass the result as ``packed=`` to skip re-packing on every call; recompute it whenever the
    weights change (:class:`PackedWeightsCache` does).
    """
    weights = list(lstm_weights)
    if len(weights) != 8:
        raise EdgekdValueError(f"bilstm_attention_pack: 'lstm_weights' must hold the 8 nn.LSTM tensors, got {len(weights)}")
    with torch.no_grad():
        try:
            return torch.ops.edgekd.bilstm_attention_pack.default(*weights, att_W)
        except RuntimeError as exc:
            raise kernel_error(exc) from exc


class PackedWeightsCache:
    """Keeps :func:`bilstm_attention_pack` of a model's weights, rebuilt when any of them changes:
    new storage, or an in-place update (optimizer step, ``load_state_dict``, a manual edit), seen
    through each tensor's data pointer and version counter. Not part of a model's saved state."""

    __slots__ = ("_key", "_packed")

    def __init__(self) -> None:
        self._key: Optional[tuple] = None
        self._packed: Optional[Tensor] = None

    def get(self, lstm_weights: Sequence[Tensor], att_W: Tensor) -> Tensor:
        """The packed weights for these tensors (re-packed only when one changed)."""
        key = tuple((t.data_ptr(), t._version) for t in (*lstm_weights, att_W))
        if self._packed is None or self._key != key:
            self._packed = bilstm_attention_pack(lstm_weights, att_W)
            self._key = key
        return self._packed

    @property
    def packed(self) -> Optional[Tensor]:
        """The last packed tensor (None before the first :meth:`get`)."""
        return self._packed


def fused_forward_applies(
    input_ids: object, attention_mask: object = None, embedding: Optional[Tensor] = None, max_batch: int = FUSED_MAX_BATCH
) -> bool:
    """Whether a forward can run as :func:`bilstm_attention_forward` on its C++ kernel.

    True when the kernel is built, gradients are disabled (``torch.no_grad`` / ``inference_mode``),
    torch.compile is not tracing, and the batch is a CPU (B, T) batch with ``1 <= B <= max_batch``
    (above that the batched kernels' per-step GEMMs win) with a CPU mask and CPU weights (each
    checked when given). Dropout is the caller's business (the op has none).
    """
    return (
        not torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and isinstance(input_ids, Tensor)
        and input_ids.device.type == "cpu"
        and (attention_mask is None or (isinstance(attention_mask, Tensor) and attention_mask.device.type == "cpu"))
        and (embedding is None or embedding.device.type == "cpu")
        and input_ids.dim() == 2
        and 0 < input_ids.shape[0] <= max_batch
        and _ext.has_extension()
    )


def packed_size(embed_dim: int, hidden_size: int, attention_dim: int) -> int:
    """Length of :func:`bilstm_attention_pack`'s output."""
    g4p, ap = _round_up(4 * hidden_size), _round_up(attention_dim)
    return 2 * embed_dim * g4p + 2 * hidden_size * g4p + 2 * g4p + 2 * hidden_size * ap


def _round_up(v: int, m: int = _PAD) -> int:
    return (v + m - 1) // m * m


# --------------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------------
def bilstm_attention_forward_reference(
    input_ids: Tensor,
    attention_mask: Tensor,
    embedding: Tensor,
    lstm_weights: Sequence[Tensor],
    att_W: Tensor,
    att_v: Tensor,
    cls_W: Tensor,
    cls_b: Tensor,
) -> Tuple[Tensor, Tensor, Tensor]:
    """The oracle: embedding -> packed ``nn.LSTM`` maths -> reference attention -> Linear.

    ``lstm_weights`` are the 8 ``nn.LSTM`` tensors in their names' order; ``attention_mask`` is a
    post-padded 0/1 mask with >= 1 valid token per row (not re-validated here).
    """
    valid = attention_mask != 0
    lengths = valid.sum(dim=1, dtype=torch.int64)
    x = torch.nn.functional.embedding(input_ids, embedding)
    states = masked_bilstm_reference(x, lengths, list(lstm_weights))[0]
    context, att_logits, attention = masked_attention_pool_reference(states, valid, att_W, att_v)
    logits = torch.nn.functional.linear(context, cls_W, cls_b)
    return logits, att_logits, attention


def bilstm_attention_pack_reference(w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r, att_W) -> Tensor:
    """The packed layout in plain PyTorch: [W_ih^T fwd, rev | W_hh^T fwd, rev | b_ih + b_hh fwd, rev |
    att_W^T], each transposed matrix (and the biases) zero-padded to a multiple of 32 columns."""

    def padT(w: Tensor) -> Tensor:
        wt = w.t()
        return torch.nn.functional.pad(wt, (0, _round_up(wt.shape[1]) - wt.shape[1])).reshape(-1)

    def padb(a: Tensor, b: Tensor) -> Tensor:
        return torch.nn.functional.pad(a + b, (0, _round_up(a.shape[0]) - a.shape[0]))

    return torch.cat(
        [padT(w_ih), padT(w_ih_r), padT(w_hh), padT(w_hh_r), padb(b_ih, b_hh), padb(b_ih_r, b_hh_r), padT(att_W)]
    ).contiguous()


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------
def check_bilstm_attention_inputs(
    input_ids: object,
    attention_mask: object,
    vocab_size: int,
    *,
    device: Optional[torch.device] = None,
    who: str = "bilstm_attention_forward",
) -> Tuple[Tensor, Tensor, Optional[int]]:
    """The one check of a post-padded batch; returns ``(lengths (B,) int64, mask (B, T) bool, total)``.

    ``input_ids`` (B, T) int64 in ``[0, vocab_size)``; ``attention_mask`` (B, T) bool or integer
    with values 0/1, post-padded (ones then zeros), >= 1 valid token per row; both on ``device``
    when given. ``total = sum(lengths)``, None under torch.compile (where the values are not read).
    The values are checked in one pass by ``edgekd::bilstm_attention_check_inputs`` (C++ on the CPU);
    on a bad batch, tensor ops find the problem. Raises :class:`EdgekdValueError` prefixed ``who``.
    """
    if not isinstance(input_ids, Tensor) or not isinstance(attention_mask, Tensor):
        raise EdgekdValueError(
            f"{who}: 'input_ids' and 'attention_mask' must be torch.Tensors, got "
            f"{type(input_ids).__name__} and {type(attention_mask).__name__}"
        )
    if input_ids.dim() != 2:
        raise EdgekdValueError(f"{who}: 'input_ids' must have rank 2 (B, T), got shape {tuple(input_ids.shape)}")
    if input_ids.dtype != torch.int64:
        raise EdgekdValueError(f"{who}: 'input_ids' must be int64, got {input_ids.dtype}")
    if attention_mask.dim() != 2:
        raise EdgekdValueError(f"{who}: 'attention_mask' must have rank 2 (B, T), got shape {tuple(attention_mask.shape)}")
    if attention_mask.dtype.is_floating_point or attention_mask.dtype.is_complex:
        raise EdgekdValueError(f"{who}: 'attention_mask' must be bool or integer (0/1), got {attention_mask.dtype}")
    if attention_mask.shape != input_ids.shape:
        raise EdgekdValueError(
            f"{who}: 'attention_mask' shape {tuple(attention_mask.shape)} does not match "
            f"'input_ids' shape {tuple(input_ids.shape)}"
        )
    if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise EdgekdValueError(f"{who}: empty batch, 'input_ids' has shape {tuple(input_ids.shape)}")
    device = input_ids.device if device is None else device
    if input_ids.device != device or attention_mask.device != device:
        raise EdgekdValueError(
            f"{who}: 'input_ids' ({input_ids.device}), 'attention_mask' ({attention_mask.device}) "
            f"and the model ({device}) must be on the same device"
        )
    if torch.compiler.is_compiling():
        return attention_mask.sum(dim=1, dtype=torch.int64), attention_mask != 0, None
    lengths, mask, total = torch.ops.edgekd.bilstm_attention_check_inputs.default(input_ids, attention_mask, vocab_size)
    total = int(total)
    if total < 0:
        _raise_bad_batch(input_ids, attention_mask, vocab_size, who)
    return lengths, mask, total


def _check_inputs_tensor_ops(input_ids: Tensor, attention_mask: Tensor, vocab_size: int) -> Tuple[Tensor, Tensor, Tensor]:
    """``edgekd::bilstm_attention_check_inputs`` with tensor ops (one host sync): CUDA, no ``_C``."""
    lengths = attention_mask.sum(dim=1, dtype=torch.int64)
    # post-padded 0/1 mask <=> mask == (position < length); values like 2 mismatch too
    mask = torch.arange(input_ids.shape[1], device=lengths.device) < lengths.unsqueeze(1)
    ok = torch.eq(attention_mask, mask).all() & (lengths.min() >= 1)
    ok = ok & (input_ids.min() >= 0) & (input_ids.max() < vocab_size)
    return lengths, mask, torch.where(ok, lengths.sum(), -1)


def _raise_bad_batch(input_ids: Tensor, attention_mask: Tensor, vocab_size: int, who: str) -> None:
    """Name the first problem of a batch the check refused."""
    lengths, expected, _ = _check_inputs_tensor_ops(input_ids, attention_mask, vocab_size)
    bad = (~torch.eq(attention_mask, expected)).any(dim=1)
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()[:8]
        raise EdgekdValueError(
            f"{who}: 'attention_mask' must hold 0/1 values and be post-padded (ones then zeros); rows {rows} are not"
        )
    if bool((lengths < 1).any()):
        rows = (lengths < 1).nonzero().flatten().tolist()[:8]
        raise EdgekdValueError(
            f"{who}: 'attention_mask' rows {rows} have no valid token; every row of a post-padded mask needs at least one"
        )
    raise EdgekdValueError(
        f"{who}: 'input_ids' must lie in [0, {vocab_size}), got values in [{int(input_ids.min())}, {int(input_ids.max())}]"
    )
