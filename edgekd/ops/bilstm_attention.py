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
(its autograd formula raises), and the student uses it only when gradients are disabled and no
dropout applies; training goes through the two differentiable ops.

Layout (see STYLE.md): the plain-PyTorch reference (composed from the two ops' references), the
schema, the fake kernel, the CUDA kernel (the two Triton-backed ops in sequence), the CPU fallback
(registered only when ``edgekd._C`` is missing; otherwise ``csrc/cpu/student_forward.cpp`` serves
the CPU) and the public function :func:`bilstm_attention_forward`.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from edgekd import _ext
from edgekd.errors import EdgekdValueError
from edgekd.ops.masked_attention_pool import masked_attention_pool_reference
from edgekd.ops.masked_bilstm import masked_bilstm_reference

__all__ = [
    "bilstm_attention_forward",
    "bilstm_attention_forward_reference",
    "bilstm_attention_pack",
    "bilstm_attention_pack_reference",
    "packed_size",
]



# --------------------------------------------------------------------------------------------
# Reference (plain PyTorch)
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


# --------------------------------------------------------------------------------------------
# torch.library registration
# --------------------------------------------------------------------------------------------
_OP = "edgekd::bilstm_attention_forward"

torch.library.define(
    _OP,
    "(Tensor input_ids, Tensor attention_mask, Tensor embedding, Tensor w_ih, Tensor w_hh, Tensor b_ih, "
    "Tensor b_hh, Tensor w_ih_reverse, Tensor w_hh_reverse, Tensor b_ih_reverse, Tensor b_hh_reverse, "
    "Tensor att_W, Tensor att_v, Tensor cls_W, Tensor cls_b, Tensor? packed=None) -> (Tensor, Tensor, Tensor)",
)
_PACK = "edgekd::bilstm_attention_pack"
torch.library.define(
    _PACK,
    "(Tensor w_ih, Tensor w_hh, Tensor b_ih, Tensor b_hh, Tensor w_ih_reverse, Tensor w_hh_reverse, "
    "Tensor b_ih_reverse, Tensor b_hh_reverse, Tensor att_W) -> Tensor",
)

# register block of the C++ matvecs (kGemvBlock in csrc/cpu/masked_bilstm_kernels.h)
_PAD = 32


def _round_up(v: int, m: int = _PAD) -> int:
    return (v + m - 1) // m * m


def packed_size(embed_dim: int, hidden_size: int, attention_dim: int) -> int:
    """Length of :func:`bilstm_attention_pack`'s output."""
    g4p, ap = _round_up(4 * hidden_size), _round_up(attention_dim)
    return 2 * embed_dim * g4p + 2 * hidden_size * g4p + 2 * g4p + 2 * hidden_size * ap


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


@torch.library.register_fake(_PACK)
def _pack_fake(w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r, att_W):
    return w_ih.new_empty((packed_size(w_ih.shape[1], w_hh.shape[1], att_W.shape[0]),))


@torch.library.register_kernel(_PACK, "cuda")
def _pack_cuda(w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r, att_W):
    return bilstm_attention_pack_reference(w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r, att_W)


@torch.library.register_fake(_OP)
def _fake(input_ids, attention_mask, embedding, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r, att_W, att_v, cls_W, cls_b, packed=None):
    B, T = input_ids.shape
    C = cls_W.shape[0]
    return embedding.new_empty((B, C)), embedding.new_empty((B, T)), embedding.new_empty((B, T))


def _composed(input_ids, attention_mask, embedding, weights, att_W, att_v, cls_W, cls_b):
    """The forward through the two low-level ops (their CUDA kernels are Triton)."""
    valid = attention_mask != 0
    lengths = valid.sum(dim=1, dtype=torch.int64)
    x = torch.nn.functional.embedding(input_ids, embedding)
    num_valid = int(lengths.sum())
    states = torch.ops.edgekd.masked_bilstm.default(x.contiguous(), lengths, *weights, num_valid)[0]
    context, att_logits, attention, _ = torch.ops.edgekd.masked_attention_pool.default(
        states, valid.contiguous(), att_W.contiguous(), att_v.contiguous()
    )
    logits = torch.nn.functional.linear(context, cls_W, cls_b)
    return logits, att_logits, attention


@torch.library.register_kernel(_OP, "cuda")
def _cuda(input_ids, attention_mask, embedding, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r, att_W, att_v, cls_W, cls_b, packed=None):
    weights = (w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r)
    return _composed(input_ids, attention_mask, embedding, weights, att_W, att_v, cls_W, cls_b)


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


def _setup_context(ctx, inputs, output) -> None:  # nothing to save: there is no backward
    pass


def _backward(ctx, *grads):
    raise EdgekdValueError(
        "bilstm_attention_forward is an inference-only op (no backward); train through "
        "BiLSTMAttentionStudent in training mode or with gradients enabled, which uses the "
        "differentiable masked_bilstm and masked_attention_pool ops"
    )


torch.library.register_autograd(_OP, _backward, setup_context=_setup_context)


def _check_batch(input_ids: Tensor, attention_mask: Tensor, vocab_size: int) -> None:
    """The value checks the C++ kernel does, for the other kernels (CUDA, the CPU fallback)."""
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise EdgekdValueError(
            f"bilstm_attention_forward: 'input_ids' {tuple(input_ids.shape)} and 'attention_mask' "
            f"{tuple(attention_mask.shape)} must be (B, T) of the same shape"
        )
    if input_ids.dtype != torch.int64:
        raise EdgekdValueError(f"bilstm_attention_forward: 'input_ids' must be int64, got {input_ids.dtype}")
    if attention_mask.dtype.is_floating_point or attention_mask.dtype.is_complex:
        raise EdgekdValueError(f"bilstm_attention_forward: 'attention_mask' must be bool or integer, got {attention_mask.dtype}")
    if input_ids.numel() == 0:
        raise EdgekdValueError(f"bilstm_attention_forward: empty batch {tuple(input_ids.shape)}")
    lengths = attention_mask.sum(dim=1, dtype=torch.int64)
    expected = torch.arange(input_ids.shape[1], device=input_ids.device) < lengths.unsqueeze(1)
    if not bool(torch.eq(attention_mask, expected).all()) or int(lengths.min()) < 1:
        raise EdgekdValueError(
            "bilstm_attention_forward: 'attention_mask' must be 0/1 and post-padded with >= 1 valid token per row"
        )
    if int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab_size:
        raise EdgekdValueError(f"bilstm_attention_forward: 'input_ids' must lie in [0, {vocab_size})")


# --------------------------------------------------------------------------------------------
# Public function
# --------------------------------------------------------------------------------------------
def bilstm_attention_pack(lstm_weights: Sequence[Tensor], att_W: Tensor) -> Tensor:
    """The weights of :func:`bilstm_attention_forward` in its kernel's layout (transposed, padded).

    Pass the result as ``packed=`` to skip re-packing on every call; recompute it whenever the
    weights change. :class:`~edgekd.students.BiLSTMAttentionStudent` caches it by itself.
    """
    weights = list(lstm_weights)
    if len(weights) != 8:
        raise EdgekdValueError(f"bilstm_attention_pack: 'lstm_weights' must hold the 8 nn.LSTM tensors, got {len(weights)}")
    with torch.no_grad():
        try:
            return torch.ops.edgekd.bilstm_attention_pack.default(*weights, att_W)
        except RuntimeError as exc:
            raise EdgekdValueError(str(exc).split("\n")[0]) from exc


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
        packed: optional :func:`bilstm_attention_pack` of these weights (saves re-packing them).

    Returns:
        ``(logits (B, C), attention_logits (B, T), attention (B, T))``, the last two 0 at padding.

    Raises :class:`~edgekd.errors.EdgekdValueError` naming the problem for a bad batch or
    mismatched weights. Use :class:`~edgekd.students.BiLSTMAttentionStudent` for a checked,
    trainable model: its forward calls this op in inference.
    """
    weights = list(lstm_weights)
    if len(weights) != 8:
        raise EdgekdValueError(f"bilstm_attention_forward: 'lstm_weights' must hold the 8 nn.LSTM tensors, got {len(weights)}")
    tensors = {"input_ids": input_ids, "attention_mask": attention_mask, "embedding": embedding, "att_W": att_W,
               "att_v": att_v, "cls_W": cls_W, "cls_b": cls_b}
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise EdgekdValueError(f"bilstm_attention_forward: '{name}' must be a torch.Tensor, got {type(t).__name__}")
    if torch.is_grad_enabled() and any(t.requires_grad for t in [embedding, att_W, att_v, cls_W, cls_b, *weights]):
        raise EdgekdValueError(
            "bilstm_attention_forward is inference-only: call it under torch.no_grad() / torch.inference_mode() "
            "(or use BiLSTMAttentionStudent, which trains through the differentiable ops)"
        )
    if not (_ext.has_extension() and input_ids.device.type == "cpu"):
        _check_batch(input_ids, attention_mask, embedding.shape[0] if embedding.dim() == 2 else 0)
    try:
        return torch.ops.edgekd.bilstm_attention_forward.default(
            input_ids, attention_mask, embedding, *weights, att_W, att_v, cls_W, cls_b, packed
        )
    except RuntimeError as exc:  # the C++ kernel's TORCH_CHECKs: re-raise as a ValueError naming it
        msg = str(exc).split("\n")[0]
        raise EdgekdValueError(msg) from exc
