"""Tests of edgekd::bilstm_attention_forward (the fused inference forward of the BiLSTM-attention
student) and edgekd::bilstm_attention_pack: C++ kernel against the plain-PyTorch reference,
the packed-weights path, the student's use of the op (and of its weight cache), opcheck,
bad inputs and the fallback without edgekd._C."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from edgekd.errors import EdgekdValueError
from edgekd.ops import bilstm_attention_forward, has_extension
from edgekd.ops.bilstm_attention import (
    bilstm_attention_forward_reference,
    bilstm_attention_pack,
    bilstm_attention_pack_reference,
    packed_size,
)
from edgekd.students import BiLSTMAttentionStudent
from numerics import assert_all_close_f64, assert_close_f64, double_copy, reference_f64

needs_ext = pytest.mark.skipif(not has_extension(), reason="edgekd._C is not built")
NAMES = ("logits", "attention_logits", "attention")


def scales(att_v, cls_W, cls_b):
    """The magnitude of each output's terms (numerics.py): the logits sum 2H terms |cls_W| |h|
    with |h| < 1, the attention logits A terms |v_a| |tanh| (both can cancel to ~0), attention <= 1."""
    logits = float((cls_W.abs().sum(1) + cls_b.abs()).max())
    return [logits, float(att_v.abs().sum()), 1.0]


def n_acc(T, E, H, A):
    """Accumulation length (numerics.py): the BiLSTM's T steps of (E + H)-long dots, then the
    attention's 2H- and A-long dots and the sums over T."""
    return T * (E + H) + 2 * H + A + T

# (B, T, V, E, H, A, C, lengths kind)
SHAPES = [
    (1, 32, 500, 50, 50, 100, 3, "full"),  # DiXtill batch-1 inference
    (1, 1, 20, 8, 16, 32, 2, "full"),  # length 1
    (4, 9, 97, 13, 16, 7, 3, "random"),  # odd sizes, A not a multiple of the register block
    (5, 19, 300, 50, 128, 256, 3, "random"),  # H = 128
    (3, 11, 60, 50, 50, 100, 5, "ones"),  # every row length 1
    (9, 33, 101, 17, 50, 50, 3, "random"),  # enough work for the parallel row loop
]


def make(B, T, V, E, H, A, C, kind, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "full":
        lengths = torch.full((B,), T)
    elif kind == "ones":
        lengths = torch.ones(B, dtype=torch.long)
    else:
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        lengths[0] = T
        lengths[-1] = 1
    mask = (torch.arange(T) < lengths[:, None]).long()
    ids = torch.randint(1, V, (B, T), generator=g) * mask
    s = 1.0 / H**0.5
    emb = torch.randn(V, E, generator=g, dtype=dtype)
    lstm = [
        torch.empty(4 * H, E, dtype=dtype).uniform_(-s, s, generator=g),
        torch.empty(4 * H, H, dtype=dtype).uniform_(-s, s, generator=g),
        torch.empty(4 * H, dtype=dtype).uniform_(-s, s, generator=g),
        torch.empty(4 * H, dtype=dtype).uniform_(-s, s, generator=g),
    ]
    lstm += [
        torch.empty(4 * H, E, dtype=dtype).uniform_(-s, s, generator=g),
        torch.empty(4 * H, H, dtype=dtype).uniform_(-s, s, generator=g),
        torch.empty(4 * H, dtype=dtype).uniform_(-s, s, generator=g),
        torch.empty(4 * H, dtype=dtype).uniform_(-s, s, generator=g),
    ]
    att_W = torch.randn(A, 2 * H, generator=g, dtype=dtype) / (2 * H) ** 0.5
    att_v = torch.randn(A, generator=g, dtype=dtype)
    cls_W = torch.randn(C, 2 * H, generator=g, dtype=dtype) / (2 * H) ** 0.5
    cls_b = torch.randn(C, generator=g, dtype=dtype)
    return ids, mask, emb, lstm, att_W, att_v, cls_W, cls_b


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference(shape, dtype):
    ids, mask, emb, lstm, W, v, cW, cb = make(*shape, dtype=dtype)
    with torch.no_grad():
        out = bilstm_attention_forward(ids, mask, emb, lstm, W, v, cW, cb)
        ref = reference_f64(bilstm_attention_forward_reference, ids, mask, emb, lstm, W, v, cW, cb)
        packed = bilstm_attention_pack(lstm, W)
        out_p = bilstm_attention_forward(ids, mask, emb, lstm, W, v, cW, cb, packed=packed)
    B, T, V, E, H, A = shape[:6]
    for name, a, b, c, scale in zip(NAMES, out, ref, out_p, scales(v, cW, cb)):
        assert a.dtype == dtype and a.shape == b.shape
        assert_close_f64(a, b, n=n_acc(T, E, H, A), scale=scale, name=name)
        assert torch.equal(c, a)  # the packed path computes the same thing
    lengths = mask.sum(1)
    for b in range(ids.shape[0]):  # exact zeros at padding, attention sums to 1 over valid tokens
        assert torch.all(out[1][b, lengths[b]:] == 0) and torch.all(out[2][b, lengths[b]:] == 0)
        assert_close_f64(out[2][b].sum(), torch.tensor(1.0, dtype=torch.float64), n=T, name="sum of attention")


def test_bool_mask_and_extra_padding():
    ids, mask, emb, lstm, W, v, cW, cb = make(3, 7, 50, 8, 16, 16, 3, "random")
    with torch.no_grad():
        a = bilstm_attention_forward(ids, mask.bool(), emb, lstm, W, v, cW, cb)
        pad = torch.zeros(3, 5, dtype=torch.long)
        b = bilstm_attention_forward(torch.cat([ids, pad], 1), torch.cat([mask, pad], 1), emb, lstm, W, v, cW, cb)
    assert torch.equal(b[0], a[0])  # more padding changes nothing
    assert torch.equal(b[2][:, :7], a[2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pack_matches_reference_layout(dtype):
    _, _, _, lstm, W, _, _, _ = make(2, 4, 10, 13, 16, 7, 3, "full", dtype=dtype)
    with torch.no_grad():
        p = bilstm_attention_pack(lstm, W)
    ref = reference_f64(bilstm_attention_pack_reference, *lstm, W)
    assert p.shape == (packed_size(13, 16, 7),) == ref.shape
    assert_close_f64(p, ref, n=2, name="packed weights")  # copies, and b_ih + b_hh


@needs_ext
def test_opcheck():
    ids, mask, emb, lstm, W, v, cW, cb = make(3, 6, 30, 8, 16, 12, 3, "random")
    torch.library.opcheck(torch.ops.edgekd.bilstm_attention_forward.default, (ids, mask, emb, *lstm, W, v, cW, cb))
    packed = bilstm_attention_pack(lstm, W)
    torch.library.opcheck(
        torch.ops.edgekd.bilstm_attention_forward.default, (ids, mask, emb, *lstm, W, v, cW, cb, packed)
    )
    torch.library.opcheck(torch.ops.edgekd.bilstm_attention_pack.default, (*lstm, W))
    torch.library.opcheck(torch.ops.edgekd.bilstm_attention_check_inputs.default, (ids, mask, 30))


@needs_ext
def test_check_inputs_cpp_and_tensor_ops_agree():
    # the one-pass C++ check and the tensor-op kernel (CUDA, no _C) accept and reject the same batches
    from edgekd.ops.bilstm_attention import _check_inputs_tensor_ops

    g = torch.Generator().manual_seed(0)
    for trial in range(60):
        B, T = int(torch.randint(1, 5, (1,), generator=g)), int(torch.randint(1, 7, (1,), generator=g))
        ids, mask = _batch(B, T, seed=trial)
        kind = trial % 4
        if kind == 1:  # random 0/1 pattern: usually not post-padded or with empty rows
            mask = (torch.rand(B, T, generator=g) < 0.5).long()
        elif kind == 2:  # an id out of range somewhere (also at padding)
            ids = ids.clone()
            ids[int(torch.randint(0, B, (1,), generator=g)), int(torch.randint(0, T, (1,), generator=g))] = 200
        elif kind == 3:
            mask = mask.bool()
        fast = torch.ops.edgekd.bilstm_attention_check_inputs.default(ids, mask, 200)
        slow = _check_inputs_tensor_ops(ids, mask, 200)
        assert fast[2].dim() == slow[2].dim() == 0 and fast[2].dtype == slow[2].dtype == torch.int64
        assert (int(fast[2]) >= 0) == (int(slow[2]) >= 0), (ids, mask)
        if fast[2] >= 0:
            assert int(fast[2]) == int(slow[2]) == int(mask.sum())
            assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1]) and fast[1].dtype == torch.bool


def test_inference_only():
    ids, mask, emb, lstm, W, v, cW, cb = make(2, 5, 30, 8, 16, 12, 3, "random")
    W.requires_grad_(True)
    with pytest.raises(EdgekdValueError, match="inference-only"):
        bilstm_attention_forward(ids, mask, emb, lstm, W, v, cW, cb)
    out = torch.ops.edgekd.bilstm_attention_forward.default(ids, mask, emb, *lstm, W, v, cW, cb)
    with pytest.raises(EdgekdValueError, match="inference-only"):
        out[0].sum().backward()


def _bad(name):
    ids, mask, emb, lstm, W, v, cW, cb = make(3, 6, 30, 8, 16, 12, 3, "random")
    args = dict(ids=ids, mask=mask, emb=emb, lstm=lstm, W=W, v=v, cW=cW, cb=cb)
    if name == "empty_row":
        args["mask"] = mask.clone()
        args["mask"][1] = 0
    elif name == "pre_padded":
        args["mask"] = mask.flip(1)
        args["mask"][0] = 1
    elif name == "mask_values":
        args["mask"] = mask * 2
    elif name == "id_high":
        args["ids"] = ids.clone()
        args["ids"][0, 0] = 30
    elif name == "id_negative":
        args["ids"] = ids.clone()
        args["ids"][2, 0] = -1
    elif name == "ids_int32":
        args["ids"] = ids.int()
    elif name == "ids_rank":
        args["ids"], args["mask"] = ids[0], mask[0]
    elif name == "batch_mismatch":
        args["mask"] = mask[:2]
    elif name == "float_mask":
        args["mask"] = mask.float()
    elif name == "empty":
        args["ids"], args["mask"] = ids[:, :0], mask[:, :0]
    elif name == "w_hh_shape":
        args["lstm"] = list(lstm)
        args["lstm"][1] = lstm[1][:, :5]
    elif name == "weight_dtype":
        args["W"] = W.double()
    elif name == "seven_weights":
        args["lstm"] = lstm[:7]
    elif name == "cls_shape":
        args["cW"] = cW[:, :5]
    return args


@pytest.mark.parametrize(
    "name, match",
    [
        ("empty_row", "post-padded"),
        ("pre_padded", "post-padded"),
        ("mask_values", "0/1"),
        ("id_high", r"\[0, 30\)"),
        ("id_negative", r"\[0, 30\)"),
        ("ids_int32", "int64"),
        ("ids_rank", "rank 2"),
        ("batch_mismatch", "does not match"),
        ("float_mask", "bool or integer"),
        ("empty", "empty"),
        ("w_hh_shape", "w_hh"),
        ("weight_dtype", "dtype"),
        ("seven_weights", "8 nn.LSTM tensors"),
        ("cls_shape", "classifier weight"),
    ],
)
def test_bad_inputs_raise(name, match):
    a = _bad(name)
    with torch.no_grad(), pytest.raises(EdgekdValueError, match=match):
        bilstm_attention_forward(a["ids"], a["mask"], a["emb"], a["lstm"], a["W"], a["v"], a["cW"], a["cb"])


@needs_ext
def test_wrong_packed_tensor_raises():
    ids, mask, emb, lstm, W, v, cW, cb = make(2, 5, 30, 8, 16, 12, 3, "random")
    with torch.no_grad(), pytest.raises(EdgekdValueError, match="packed"):
        bilstm_attention_forward(ids, mask, emb, lstm, W, v, cW, cb, packed=torch.zeros(7))


# ------------------------------------------------------------------------------------------------
# the student's use of the op


def _student(H=50, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return BiLSTMAttentionStudent(200, 24, H, 3, dropout=dropout, backend="native")


def _batch(B, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    mask = (torch.arange(T) < lengths[:, None]).long()
    return torch.randint(1, 200, (B, T), generator=g) * mask, mask


@needs_ext
@pytest.mark.parametrize("B", [1, 3, 8])
def test_student_inference_uses_fused_op_and_matches_reference(B, monkeypatch):
    m = _student().eval()
    ref = double_copy(m, backend="reference")
    ids, mask = _batch(B, 17)
    calls = []
    real = m._fused_forward
    monkeypatch.setattr(m, "_fused_forward", lambda *a: calls.append(1) or real(*a))
    with torch.inference_mode():
        a, b = m(ids, mask), ref(ids, mask)
    assert calls, "the eval forward under inference_mode did not take the fused op"
    sc = scales(m.attention.v.detach(), m.classifier.weight.detach(), m.classifier.bias.detach())
    for name, scale in zip(NAMES, sc):
        assert_close_f64(getattr(a, name), getattr(b, name), n=n_acc(17, 24, 50, 100), scale=scale, name=name)


@needs_ext
def test_student_paths_that_must_not_fuse():
    ids, mask = _batch(2, 6)
    m = _student(dropout=0.3)
    m.train()
    with torch.no_grad():
        assert not m._can_fuse(ids)  # dropout active
    m.eval()
    assert not m._can_fuse(ids)  # gradients enabled (training, IG on the student)
    with torch.no_grad():
        assert m._can_fuse(ids)
        big = torch.ones(m.FUSED_MAX_BATCH + 1, 4, dtype=torch.long)
        assert not m._can_fuse(big)  # large batches run on the batched kernels
    r = BiLSTMAttentionStudent(200, 24, 50, 3, backend="reference").eval()
    with torch.no_grad():
        assert not r._can_fuse(ids)
    # with gradients the eval forward is differentiable (the unfused ops)
    out = m(ids, mask)
    out.logits.sum().backward()
    assert m.attention.W.grad is not None


@needs_ext
def test_student_weight_cache_follows_updates():
    m = _student().eval()
    ids, mask = _batch(3, 9)

    def check():
        ref = double_copy(m, backend="reference")
        with torch.no_grad():
            a, b = m(ids, mask), ref(ids, mask)
        sc = scales(m.attention.v.detach(), m.classifier.weight.detach(), m.classifier.bias.detach())
        for name, scale in zip(NAMES, sc):
            assert_close_f64(getattr(a, name), getattr(b, name), n=n_acc(9, 24, 50, 100), scale=scale, name=name)

    check()
    packed_before = m._fused_pack.packed
    # an optimizer step updates the weights in place
    m.train()
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    m(ids, mask).logits.sum().backward()
    opt.step()
    m.eval()
    check()
    assert m._fused_pack.packed is not packed_before
    # load_state_dict copies in place; direct in-place edits too
    other = _student(seed=3)
    m.load_state_dict(other.state_dict())
    check()
    with torch.no_grad():
        m.lstm.weight_hh_l0_reverse.mul_(-1.0)
        m.attention.W.add_(0.1)
    check()
    # the cache is not part of the saved state
    assert not any("pack" in k for k in m.state_dict())


@needs_ext
@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda ids, m: (ids.clamp(max=3) + 200, m), r"must lie in \[0, 200\)"),
        (lambda ids, m: (ids, m.flip(1)), "post-padded"),
        (lambda ids, m: (ids, m * 2), "0/1 values"),
        (lambda ids, m: (ids, torch.cat([m[:1], torch.zeros_like(m[:1])])), r"rows \[1\] have no valid token"),
        (lambda ids, m: (ids.int(), m), "must be int64"),
        (lambda ids, m: (ids, m[:, :4]), "does not match"),
        (lambda ids, m: (ids, m.float()), "bool or integer"),
        (lambda ids, m: (ids, m.tolist()), "must be torch.Tensors"),
        (lambda ids, m: (ids[:, :0], m[:, :0]), "empty batch"),
        (lambda ids, m: (ids, m.to("meta")), "same device"),
    ],
)
def test_student_fused_path_bad_inputs(mutate, match):
    m = _student().eval()
    ids, mask = _batch(2, 6)
    with torch.inference_mode(), pytest.raises(EdgekdValueError, match=match):
        m(*mutate(ids, mask))


def test_cuda_without_triton_names_the_op_and_the_fix(monkeypatch):
    # the one policy of every op for CUDA tensors when Triton is not importable
    import importlib

    from edgekd.errors import EdgekdError
    from edgekd.ops._common import MissingTritonError, triton_kernels

    real = importlib.import_module

    def no_triton(name, *args):
        if name.startswith("edgekd.kernels."):
            raise ImportError("No module named 'triton'")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_triton)
    for module, op in [("masked_bilstm", "masked_bilstm"), ("masked_attention_pool", "masked_attention_pool"),
                       ("perturbed_topk", "perturbed_topk_gather")]:
        with pytest.raises(MissingTritonError, match=rf"'{op}'.*pip install edgekd\[gpu\]") as info:
            triton_kernels(module, op)
        assert isinstance(info.value, EdgekdError) and isinstance(info.value, ImportError)


def test_fallback_without_extension():
    code = r"""
import warnings, torch
from edgekd.ops.bilstm_attention import bilstm_attention_forward, bilstm_attention_forward_reference, bilstm_attention_pack
from edgekd.ops import has_extension
from edgekd.students import BiLSTMAttentionStudent
assert not has_extension()
torch.manual_seed(0)
m = BiLSTMAttentionStudent(50, 8, 16, 3).eval()
ids = torch.randint(1, 50, (2, 6)); mask = torch.ones(2, 6, dtype=torch.long); mask[1, 3:] = 0; ids = ids * mask
w = (m.embedding.weight, list(m.lstm.parameters()), m.attention.W, m.attention.v, m.classifier.weight, m.classifier.bias)
with torch.no_grad(), warnings.catch_warnings(record=True) as rec:
    warnings.simplefilter("always")
    out = bilstm_attention_forward(ids, mask, *w)
    ref = bilstm_attention_forward_reference(ids, mask, *w)
    p = bilstm_attention_pack(w[1], w[2])
    assert not m._can_fuse(ids)  # the student keeps to its unfused path without _C
    s = m(ids, mask)
for a, b in zip(out, ref):
    torch.testing.assert_close(a, b)
torch.testing.assert_close(s.logits, ref[0])
try:
    bad = mask.clone(); bad[0] = 0
    with torch.no_grad():
        bilstm_attention_forward(ids, bad, *w)
    raise SystemExit("no error for an empty row")
except ValueError as exc:
    assert "post-padded" in str(exc), exc
print("warnings", sum("native CPU extension is not available" in str(x.message) for x in rec))
"""
    env = dict(os.environ, EDGEKD_DISABLE_EXT="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "warnings 1" in r.stdout
