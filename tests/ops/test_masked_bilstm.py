"""Tests of edgekd.ops.masked_bilstm: C++ CPU kernels and Triton kernels (interpreter on CPU)
against the packed nn.LSTM reference, gradients, registration, compile, bad inputs, fallback."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import edgekd.ops  # noqa: F401  (registers the ops)
from edgekd._ext import has_extension
from edgekd.errors import EdgekdValueError
from edgekd.ops import masked_bilstm, masked_bilstm_module
from edgekd.ops.masked_bilstm import WEIGHT_NAMES, masked_bilstm_reference
from numerics import assert_all_close_f64, assert_close_f64, reference_f64, to_f64

mb_mod = importlib.import_module("edgekd.ops.masked_bilstm")  # the module (edgekd.ops.masked_bilstm is the function)

needs_ext = pytest.mark.skipif(not has_extension(), reason="edgekd._C is not built")


def n_acc(B, T, E, H):
    """Accumulation length of the BiLSTM (numerics.py): T steps of (E + H)-long dots, and the
    weight gradients' sums over the B * T timesteps."""
    return T * (E + H) + B * T


NAMES = ("output", "h_n", "c_n")
GRAD_NAMES = tuple(f"grad {n}" for n in ("x",) + WEIGHT_NAMES)


def make_inputs(B, T, E, H, dtype=torch.float32, seed=0, lengths=None, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, E, generator=g, dtype=dtype)
    if lengths is None:
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        lengths[0] = T
        if B > 1:
            lengths[-1] = 1
    lengths = torch.as_tensor(lengths, dtype=torch.int64)
    k = H**-0.5
    shapes = [(4 * H, E), (4 * H, H), (4 * H,), (4 * H,)] * 2
    weights = [((torch.rand(s, generator=g, dtype=dtype) * 2 - 1) * k * scale) for s in shapes]
    return x, lengths, weights


def upstream(B, T, H, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(B, T, 2 * H, generator=g, dtype=dtype),
        torch.randn(2, B, H, generator=g, dtype=dtype),
        torch.randn(2, B, H, generator=g, dtype=dtype),
    )


def grads_of(fn, x, lengths, weights, ups):
    x = x.detach().clone().requires_grad_(True)
    ws = [w.detach().clone().requires_grad_(True) for w in weights]
    out, h_n, c_n = fn(x, lengths, ws)
    loss = (out * ups[0]).sum() + (h_n * ups[1]).sum() + (c_n * ups[2]).sum()
    loss.backward()
    return (out.detach(), h_n.detach(), c_n.detach()), [x.grad] + [w.grad for w in ws]


# shapes: (B, T, E, H); lengths include 1 and T, batch 1, odd sizes, hidden 16 / 50 / 128
SHAPES = [(1, 32, 50, 50), (1, 1, 3, 16), (6, 9, 7, 16), (5, 11, 50, 50), (3, 6, 5, 128), (7, 13, 5, 17), (9, 4, 3, 2)]


def test_reference_is_nn_lstm_on_packed_input():
    B, T, E, H = 5, 8, 6, 7
    x, lengths, _ = make_inputs(B, T, E, H)
    lstm = torch.nn.LSTM(E, H, batch_first=True, bidirectional=True)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, (h_n, c_n) = lstm(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
    ref = masked_bilstm_reference(x, lengths, [getattr(lstm, n) for n in WEIGHT_NAMES])
    for a, b in zip(ref, (out, h_n, c_n)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@needs_ext
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cpp_forward_and_gradients_match_reference(shape):
    B, T, E, H = shape
    x, lengths, weights = make_inputs(B, T, E, H, seed=sum(shape))
    ups = upstream(B, T, H)
    outs, grads = grads_of(masked_bilstm, x, lengths, weights, ups)
    ref_outs, ref_grads = grads_of(masked_bilstm_reference, *to_f64((x, lengths, weights, ups)))
    n = n_acc(B, T, E, H)
    assert_all_close_f64(outs, ref_outs, n=n, names=NAMES)
    assert torch.all(outs[0][torch.arange(T)[None, :] >= lengths[:, None]] == 0)
    assert_all_close_f64(grads, ref_grads, n=n, names=GRAD_NAMES)


@needs_ext
def test_cpp_larger_values_and_batch64():
    # saturating gates and the per-step GEMM path (many active rows)
    B, T, E, H = 64, 20, 8, 24
    x, lengths, weights = make_inputs(B, T, E, H, seed=3, scale=3.0)
    ups = upstream(B, T, H)
    outs, grads = grads_of(masked_bilstm, x * 3, lengths, weights, ups)
    ref_outs, ref_grads = grads_of(masked_bilstm_reference, *to_f64((x * 3, lengths, weights, ups)))
    assert_all_close_f64(outs, ref_outs, n=n_acc(B, T, E, H), names=NAMES)
    assert_all_close_f64(grads, ref_grads, n=n_acc(B, T, E, H), names=GRAD_NAMES)


@needs_ext
def test_non_contiguous_inputs():
    B, T, E, H = 4, 7, 5, 6
    x, lengths, weights = make_inputs(B, T, E, H, seed=5)
    x_nc = x.transpose(0, 1).contiguous().transpose(0, 1)  # same values, batch-strided
    w_nc = [w.t().contiguous().t() if w.dim() == 2 else w[::1] for w in weights]
    assert not x_nc.is_contiguous() and not w_nc[0].is_contiguous()
    ups = upstream(B, T, H)
    outs, grads = grads_of(masked_bilstm, x_nc, lengths, w_nc, (ups[0].transpose(0, 1).contiguous().transpose(0, 1),) + ups[1:])
    ref_outs, ref_grads = grads_of(masked_bilstm_reference, *to_f64((x, lengths, weights, ups)))
    assert_all_close_f64(list(outs) + grads, list(ref_outs) + ref_grads, n=n_acc(B, T, E, H), names=NAMES + GRAD_NAMES)


@needs_ext
def test_only_some_outputs_used():
    x, lengths, weights = make_inputs(4, 6, 5, 8)
    for pick in (0, 1, 2):
        xs = [x.clone().requires_grad_(True), x.double().requires_grad_(True)]
        a = masked_bilstm(xs[0], lengths, weights)[pick].sum()
        b = masked_bilstm_reference(xs[1], lengths, to_f64(weights))[pick].sum()
        a.backward()
        b.backward()
        assert_close_f64(xs[0].grad, xs[1].grad, n=n_acc(4, 6, 5, 8), name=f"grad x via {NAMES[pick]}")


@needs_ext
def test_gradcheck_float64_cpp():
    x, lengths, weights = make_inputs(3, 4, 2, 3, dtype=torch.float64, lengths=[4, 1, 3])
    inputs = [x.requires_grad_(True)] + [w.requires_grad_(True) for w in weights]

    def fn(x, *ws):
        return masked_bilstm(x, lengths, ws)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


def test_gradcheck_float64_reference():
    x, lengths, weights = make_inputs(3, 3, 2, 2, dtype=torch.float64, lengths=[3, 2, 1])
    inputs = [x.requires_grad_(True)] + [w.requires_grad_(True) for w in weights]

    def fn(x, *ws):
        return masked_bilstm_reference(x, lengths, ws)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


def test_python_op_maths_match_reference():
    """The pure-PyTorch op kernels (the CPU fallback) against the packed reference and autograd."""
    B, T, E, H = 4, 7, 5, 6
    x, lengths, weights = make_inputs(B, T, E, H, dtype=torch.float64)
    cap = int(lengths.sum()) + 3
    out, h_n, c_n, gates, cells = mb_mod.masked_bilstm_reference_forward(x, lengths, *weights, cap)
    ref = masked_bilstm_reference(x, lengths, weights)
    for a, b in zip((out, h_n, c_n), ref):
        torch.testing.assert_close(a, b)
    assert gates.shape == (2, cap, 4 * H) and torch.all(gates[:, -3:] == 0)
    ups = upstream(B, T, H, dtype=torch.float64)
    w4 = [weights[i] for i in (0, 1, 4, 5)]
    grads = mb_mod.masked_bilstm_reference_backward(*ups, x, lengths, *w4, out, gates, cells)
    _, ref_grads = grads_of(masked_bilstm_reference, x, lengths, weights, ups)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


@needs_ext
def test_cpp_kernels_called_directly():
    B, T, E, H = 5, 6, 4, 9
    x, lengths, weights = make_inputs(B, T, E, H, dtype=torch.float64)
    N = int(lengths.sum())
    for cap in (N, B * T):
        res = torch.ops.edgekd.masked_bilstm.default(x, lengths, *weights, cap)
        exp = mb_mod.masked_bilstm_reference_forward(x, lengths, *weights, cap)
        assert_all_close_f64(res, exp, n=n_acc(B, T, E, H), names=NAMES + ("gates", "cells"))
        ups = upstream(B, T, H, dtype=torch.float64)
        w4 = [weights[i] for i in (0, 1, 4, 5)]
        got = torch.ops.edgekd.masked_bilstm_backward.default(*ups, x, lengths, *w4, res[0], res[3], res[4])
        exp_g = mb_mod.masked_bilstm_reference_backward(*ups, x, lengths, *w4, exp[0], exp[3], exp[4])
        assert_all_close_f64(got, exp_g, n=n_acc(B, T, E, H), names=GRAD_NAMES)
    with pytest.raises(RuntimeError, match="capacity"):
        torch.ops.edgekd.masked_bilstm.default(x, lengths, *weights, N - 1)


def test_opcheck():
    x, lengths, weights = make_inputs(3, 5, 4, 6)
    args = (x.requires_grad_(True), lengths, *[w.requires_grad_(True) for w in weights], int(lengths.sum()))
    torch.library.opcheck(torch.ops.edgekd.masked_bilstm.default, args)
    with torch.no_grad():
        out = torch.ops.edgekd.masked_bilstm.default(*args)
    ups = upstream(3, 5, 6)
    w4 = [weights[i].detach() for i in (0, 1, 4, 5)]
    bargs = (*ups, x.detach(), lengths, *w4, out[0], out[3], out[4])
    torch.library.opcheck(torch.ops.edgekd.masked_bilstm_backward.default, bargs)


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    x, lengths, weights = make_inputs(4, 6, 5, 8)
    ws = [w.requires_grad_(True) for w in weights]

    def f(x, lengths, *ws):
        out, h_n, c_n = masked_bilstm(x, lengths, ws)
        return out.square().sum() + h_n.sum() + c_n.sum()

    def f_ref(x, lengths, *ws):
        out, h_n, c_n = masked_bilstm_reference(x, lengths, ws)
        return out.square().sum() + h_n.sum() + c_n.sum()

    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    x0 = x.clone().requires_grad_(True)
    a = cf(x0, lengths, *ws)
    ga = torch.autograd.grad(a, [x0, *ws])
    x64, ws64 = to_f64((x.requires_grad_(True), ws))
    b = f_ref(x64, lengths, *ws64)
    gb = torch.autograd.grad(b, [x64, *ws64])
    n = n_acc(4, 6, 5, 8) * 2  # plus the loss's sum over the outputs
    assert_close_f64(a, b, n=n, scale=float(b.abs()) + 4 * 6 * 16, name="loss")
    assert_all_close_f64(ga, gb, n=n, names=GRAD_NAMES)


def test_module_wrapper_and_no_grad():
    lstm = torch.nn.LSTM(5, 7, batch_first=True, bidirectional=True)
    x, lengths, _ = make_inputs(3, 4, 5, 7)
    with torch.no_grad():
        got = masked_bilstm_module(x, lengths, lstm)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, (h_n, c_n) = lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=4)
        ref = reference_f64(masked_bilstm_reference, x, lengths, [getattr(lstm, n) for n in WEIGHT_NAMES])
    assert_all_close_f64(got, ref, n=n_acc(3, 4, 5, 7), names=NAMES)
    with pytest.raises(EdgekdValueError, match="bidirectional"):
        masked_bilstm_module(x, lengths, torch.nn.LSTM(5, 7, batch_first=True))
    with pytest.raises(EdgekdValueError, match="nn.LSTM"):
        masked_bilstm_module(x, lengths, torch.nn.GRU(5, 7, batch_first=True, bidirectional=True))


# ------------------------------------------------------------------------------------------------
# bad inputs


def _bad_cases():
    x, lengths, w = make_inputs(3, 4, 5, 6)
    return [
        ("length 0", (x, torch.tensor([4, 0, 2]), w), r"length >= 1.*lengths\[1\] = 0"),
        ("length > T", (x, torch.tensor([4, 5, 2]), w), r"<= T = 4.*lengths\[1\] = 5"),
        ("lengths dtype", (x, lengths.int(), w), "lengths must be int64"),
        ("lengths float", (x, lengths.float(), w), "lengths must be int64"),
        ("lengths rank", (x, lengths[:, None], w), "lengths must have shape"),
        ("lengths list", (x, [4, 1, 2], w), "lengths must be a torch.Tensor"),
        ("batch mismatch", (x, lengths[:2], w), "2 rows but x has batch 3"),
        ("x rank", (x[0], lengths, w), "x must have shape"),
        ("x dtype", (x.half(), lengths, w), "float32 or float64"),
        ("x int", (x.long(), lengths, w), "float32 or float64"),
        ("x nan", (x.index_put((torch.tensor([1]),), torch.tensor(float("nan"))), lengths, w), "NaN or inf"),
        ("x inf", (x.index_put((torch.tensor([2]), torch.tensor([3])), torch.tensor(-float("inf"))), lengths, w), "NaN or inf"),
        ("weights count", (x, lengths, w[:7]), "8 tensors"),
        ("weights tensor", (x, lengths, w[0]), "sequence of 8"),
        ("weight_ih shape", (x, lengths, [w[0][:, :4]] + w[1:]), r"weight_ih_l0 must have shape \(24, 5\)"),
        ("weight_hh shape", (x, lengths, w[:5] + [w[5][:20]] + w[6:]), r"weight_hh_l0_reverse must have shape"),
        ("bias shape", (x, lengths, w[:3] + [w[3][:5]] + w[4:]), r"bias_hh_l0 must have shape \(24,\)"),
        ("weight dtype", (x, lengths, w[:2] + [w[2].double()] + w[3:]), "bias_ih_l0 has dtype"),
        ("weight device", (x, lengths, w[:1] + [w[1].to("meta")] + w[2:]), "weight_hh_l0 is on meta"),
        ("lengths device", (x, lengths.to("meta"), w), "lengths must be on the CPU or on x's device"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_bad_inputs_raise_edgekd_value_error(case):
    _, args, match = case
    with pytest.raises(EdgekdValueError, match=match):
        masked_bilstm(*args)


def test_bad_inputs_are_value_errors():
    x, _, w = make_inputs(2, 3, 4, 5)
    with pytest.raises(ValueError):
        masked_bilstm(x, torch.tensor([0, 1]), w)


# ------------------------------------------------------------------------------------------------
# fallback without the extension


def test_fallback_without_extension_works_and_warns_once():
    code = r"""
import warnings, torch
warnings.simplefilter("always")
import edgekd.ops
from edgekd._ext import has_extension
from edgekd.ops import masked_bilstm
from edgekd.ops.masked_bilstm import masked_bilstm_reference
assert not has_extension()
torch.manual_seed(0)
B, T, E, H = 3, 5, 4, 6
x = torch.randn(B, T, E, requires_grad=True)
lengths = torch.tensor([5, 1, 3])
ws = [torch.randn(s, requires_grad=True) * 0.3 for s in [(4*H, E), (4*H, H), (4*H,), (4*H,)] * 2]
ws = [w.detach().requires_grad_(True) for w in ws]
with warnings.catch_warnings(record=True) as rec:
    warnings.simplefilter("always")
    for _ in range(2):
        out, h_n, c_n = masked_bilstm(x, lengths, ws)
        (out.sum() + h_n.sum() + c_n.sum()).backward()
n_warn = sum("native CPU extension is not available" in str(w.message) for w in rec)
g1 = [x.grad.clone()] + [w.grad.clone() for w in ws]
x.grad = None
for w in ws: w.grad = None
ref = masked_bilstm_reference(x, lengths, ws)
for a, b in zip((out, h_n, c_n), ref):
    torch.testing.assert_close(a, b)
for _ in range(2):
    (ref[0].sum() + ref[1].sum() + ref[2].sum()).backward(retain_graph=True)
for a, b in zip(g1, [x.grad] + [w.grad for w in ws]):
    torch.testing.assert_close(a, b)
print("warnings", n_warn)
"""
    env = dict(os.environ, EDGEKD_DISABLE_EXT="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "warnings 1" in r.stdout


# ------------------------------------------------------------------------------------------------
# Triton (interpreter on CPU tensors; a real GPU when present)

try:
    import triton  # noqa: F401

    from edgekd.kernels import masked_bilstm as tk

    _TRITON = True
except Exception:  # pragma: no cover  (triton missing on this platform)
    _TRITON = False

_TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_CAN_RUN_TRITON = _TRITON and (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1")

TRITON_SHAPES = [(1, 6, 5, 16), (4, 5, 3, 16), (3, 4, 6, 50), (2, 3, 4, 128), (5, 4, 3, 7)]


@pytest.mark.triton
@pytest.mark.skipif(not _CAN_RUN_TRITON, reason="needs triton with a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("shape", TRITON_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_triton_forward_and_backward_match_reference(shape):
    B, T, E, H = shape
    x, lengths, weights = make_inputs(B, T, E, H, seed=sum(shape))
    dev = _TRITON_DEVICE
    x, lengths, weights = x.to(dev), lengths.to(dev), [w.to(dev) for w in weights]
    N = int(lengths.sum())
    # compact capacity always; the padded bound B*T (used under torch.compile) on one shape
    caps = (N, B * T) if shape == TRITON_SHAPES[1] else (N,)
    for cap in caps:
        n = n_acc(B, T, E, H)
        res = tk.masked_bilstm_forward(x, lengths, weights, cap)
        exp = reference_f64(mb_mod.masked_bilstm_reference_forward, x, lengths, *weights, cap)
        assert_all_close_f64(res, exp, n=n, names=NAMES + ("gates", "cells"))
        ups = [u.to(dev) for u in upstream(B, T, H)]
        w4 = [weights[i] for i in (0, 1, 4, 5)]
        got = tk.masked_bilstm_backward(*ups, x, lengths, w4, res[0], res[3], res[4])
        _, ref_grads = grads_of(masked_bilstm_reference, *to_f64((x, lengths, weights, ups)))
        assert_all_close_f64(got, ref_grads, n=n, names=GRAD_NAMES)


@pytest.mark.triton
@pytest.mark.skipif(not torch.cuda.is_available() or not _TRITON, reason="needs a CUDA GPU")
def test_cuda_op_dispatch_and_autograd():
    x, lengths, weights = make_inputs(8, 12, 10, 50)
    ups = upstream(8, 12, 50)
    outs, grads = grads_of(masked_bilstm, x.cuda(), lengths, [w.cuda() for w in weights], [u.cuda() for u in ups])
    ref_outs, ref_grads = grads_of(masked_bilstm_reference, *to_f64((x, lengths, weights, ups)))
    assert_all_close_f64(list(outs) + grads, list(ref_outs) + ref_grads, n=n_acc(8, 12, 10, 50), names=NAMES + GRAD_NAMES)
