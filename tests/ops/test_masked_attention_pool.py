"""Tests of edgekd::masked_attention_pool: C++ CPU kernel and Triton kernels (interpreter on CPU)
against the plain-PyTorch reference, gradcheck, opcheck, torch.compile and bad inputs."""
from __future__ import annotations

import pytest
import torch

from edgekd import _ext
from edgekd.errors import EdgekdValueError
from edgekd.ops import masked_attention_pool
from edgekd.ops.masked_attention_pool import (
    masked_attention_pool_reference,
    masked_attention_pool_reference_backward as reference_backward,
    masked_attention_pool_reference_forward as reference_forward,
)
from numerics import assert_all_close_f64, assert_close_f64, reference_f64, to_f64

NAMES = ("context", "attention_logits", "attention", "u")
GRAD_NAMES = ("grad states", "grad W", "grad v")


def scales(states, v):
    """The magnitude of each forward output's terms (numerics.py): the logits e = v . tanh(W h)
    are sums of A terms bounded by |v_a| that can cancel to ~0; |u| <= 1 and attention <= 1;
    the context is a convex combination of the states."""
    return [float(states.abs().max()), float(v.abs().sum()), 1.0, 1.0]


def n_acc(B, T, D, A):
    """Accumulation length (numerics.py): the D- and A-long dots, the sums over T and over B*T."""
    return D + A + B * T

# (B, T, D, A, mask kind)
SHAPES = [
    (1, 1, 4, 3, "full"),  # batch 1, length 1
    (1, 7, 10, 5, "full"),
    (3, 5, 100, 100, "post"),  # DiXtill: D = 2H = 100, A = 100
    (5, 13, 17, 11, "post"),  # odd sizes
    (4, 9, 16, 32, "random"),  # arbitrary (not post-padded) masks
    (2, 6, 8, 8, "len1"),  # every row has length 1
]


def make_inputs(B, T, D, A, kind, dtype=torch.float32, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(B, T, D, generator=g, dtype=dtype)
    W = torch.randn(A, D, generator=g, dtype=dtype) / D**0.5
    v = torch.randn(A, generator=g, dtype=dtype)
    if kind == "full":
        mask = torch.ones(B, T, dtype=torch.bool)
    elif kind == "post":
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        lengths[0] = T
        lengths[-1] = 1
        mask = torch.arange(T) < lengths[:, None]
    elif kind == "len1":
        mask = torch.zeros(B, T, dtype=torch.bool)
        mask[:, 0] = True
    else:
        mask = torch.rand(B, T, generator=g) < 0.6
        mask[:, T // 2] = True
    states = states * mask[..., None].to(dtype)  # zeros at padding, as the BiLSTM produces
    if requires_grad:
        for t in (states, W, v):
            t.requires_grad_(True)
    return states, mask, W, v


def upstream(B, T, D, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, D, generator=g, dtype=dtype), torch.randn(B, T, generator=g, dtype=dtype),
            torch.randn(B, T, generator=g, dtype=dtype))


def _grad_u(B, T, A, seed=2):
    return torch.randn(B, T, A, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_public_op_forward_and_grads_match_reference(shape):
    B, T, D, A, kind = shape
    states, mask, W, v = make_inputs(B, T, D, A, kind, requires_grad=True)
    gc, gl, ga = upstream(B, T, D)
    out = masked_attention_pool(states, mask, W, v)
    grads = torch.autograd.grad((out[0] * gc).sum() + (out[1] * gl).sum() + (out[2] * ga).sum(), (states, W, v))
    s64, W64, v64, gc, gl, ga = to_f64((states, W, v, gc, gl, ga))
    ref = masked_attention_pool_reference(s64, mask, W64, v64)
    ref_grads = torch.autograd.grad((ref[0] * gc).sum() + (ref[1] * gl).sum() + (ref[2] * ga).sum(), (s64, W64, v64))
    n = n_acc(B, T, D, A)
    assert_all_close_f64(out, ref, n=n, names=NAMES, scales=scales(states, v)[:3])
    assert_all_close_f64(grads, ref_grads, n=n, names=GRAD_NAMES)
    # masked positions: logits and attention exactly 0, attention sums to one, no grad to padding
    assert (out[1][~mask] == 0).all() and (out[2][~mask] == 0).all()
    assert_close_f64(out[2].sum(-1), torch.ones(B, dtype=torch.float64), n=T, name="sum of attention")
    assert (grads[0][~mask] == 0).all()


@pytest.mark.skipif(not _ext.has_extension(), reason="edgekd._C not built")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("with_grad_u", [False, True])
def test_cpp_kernels_called_directly(shape, with_grad_u):
    B, T, D, A, kind = shape
    states, mask, W, v = make_inputs(B, T, D, A, kind)
    n = n_acc(B, T, D, A)
    fwd = torch.ops.edgekd.masked_attention_pool.default(states, mask, W, v)
    ref = reference_f64(reference_forward, states, mask, W, v)
    assert_all_close_f64(fwd, ref, n=n, names=NAMES, scales=scales(states, v))
    gc, gl, ga = upstream(B, T, D)
    gu = _grad_u(B, T, A) if with_grad_u else None
    bwd = torch.ops.edgekd.masked_attention_pool_backward.default(gc, gl, ga, gu, states, mask, W, v, fwd[2], fwd[3])
    ref_b = reference_f64(reference_backward, gc, gl, ga, gu, states, mask, W, v, ref[2], ref[3])
    assert_all_close_f64(bwd, ref_b, n=n, names=GRAD_NAMES)
    # the explicit reference backward agrees with autograd through the reference forward (float64)
    s2, W2, v2 = (t.double().requires_grad_(True) for t in (states, W, v))
    gc, gl, ga, gu = to_f64((gc, gl, ga, gu))
    r = reference_forward(s2, mask, W2, v2)
    loss = (r[0] * gc).sum() + (r[1] * gl).sum() + (r[2] * ga).sum() + ((r[3] * gu).sum() if gu is not None else 0)
    assert_all_close_f64(torch.autograd.grad(loss, (s2, W2, v2)), ref_b, n=n, names=GRAD_NAMES)


def test_nonpadded_states_at_masked_positions_are_ignored():
    # the op must not depend on whatever the states hold at masked positions
    states, mask, W, v = make_inputs(3, 8, 12, 6, "random")
    noisy = states + 5.0 * (~mask)[..., None].float() * torch.randn_like(states)
    a = masked_attention_pool(states, mask, W, v)
    b = masked_attention_pool(noisy, mask, W, v)
    for x, y in zip(a, b):  # the same valid values in the same order: the same result
        assert torch.equal(x, y)


def test_int_mask_is_accepted():
    states, mask, W, v = make_inputs(3, 5, 8, 4, "post")
    a = masked_attention_pool(states, mask, W, v)
    b = masked_attention_pool(states, mask.to(torch.int64), W, v)
    c = masked_attention_pool(states, mask.to(torch.int32), W, v)
    for x, y, z in zip(a, b, c):
        assert torch.equal(x, y) and torch.equal(x, z)


@pytest.mark.parametrize("kind", ["post", "random"])
def test_gradcheck_float64(kind):
    states, mask, W, v = make_inputs(2, 5, 6, 4, kind, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s, w, vv: masked_attention_pool(s, mask, w, vv), (states, W, v))


def test_opcheck():
    states, mask, W, v = make_inputs(3, 6, 8, 5, "random", requires_grad=True)
    torch.library.opcheck(torch.ops.edgekd.masked_attention_pool.default, (states, mask, W, v))
    states, mask, W, v = make_inputs(3, 6, 8, 5, "post")
    fwd = reference_forward(states, mask, W, v)
    gc, gl, ga = upstream(3, 6, 8)
    torch.library.opcheck(
        torch.ops.edgekd.masked_attention_pool_backward.default,
        (gc, gl, ga, torch.randn(3, 6, 5), states, mask, W, v, fwd[2], fwd[3]),
    )


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    states, mask, W, v = make_inputs(2, 5, 8, 4, "post", requires_grad=True)

    def f(s, m, w, vv):
        c, e, a = masked_attention_pool(s, m, w, vv)
        return c.sum() + (e * a).sum()

    def f_ref(s, m, w, vv):
        c, e, a = masked_attention_pool_reference(s, m, w, vv)
        return c.sum() + (e * a).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(states, mask, W, v)
    grads = torch.autograd.grad(out, (states, W, v))
    leaves = to_f64((states, W, v))
    ref = f_ref(leaves[0], mask, leaves[1], leaves[2])
    ref_grads = torch.autograd.grad(ref, leaves)
    n = n_acc(2, 5, 8, 4) + 2 * 8
    assert_close_f64(out, ref, n=n, scale=float(ref.abs()) + 2 * 8, name="loss")
    assert_all_close_f64(grads, ref_grads, n=n, names=GRAD_NAMES)


# ---------------------------------------------------------------------------------------------
# Triton (interpreter on CPU tensors; a real GPU when present)
# ---------------------------------------------------------------------------------------------
def _triton_device():
    if torch.cuda.is_available():
        return "cuda"
    import os

    if os.environ.get("TRITON_INTERPRET") == "1":
        return "cpu"
    return None


TRITON_SHAPES = [
    (1, 1, 4, 3, "full"),
    (2, 37, 20, 18, "post"),  # T spans two BLOCK_T blocks, odd D and A
    (3, 9, 100, 100, "random"),
    (2, 6, 8, 40, "len1"),  # A spans two BLOCK_A chunks
]


@pytest.mark.triton
@pytest.mark.parametrize("shape", TRITON_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_triton_kernels_match_reference(shape):
    dev = _triton_device()
    if dev is None:
        pytest.skip("no GPU and TRITON_INTERPRET is not set")
    triton_kernels = pytest.importorskip("edgekd.kernels.masked_attention_pool", reason="triton not installed")
    B, T, D, A, kind = shape
    states, mask, W, v = (t.to(dev) for t in make_inputs(B, T, D, A, kind))
    n = n_acc(B, T, D, A)
    fwd = triton_kernels.forward(states, mask, W, v)
    ref64 = reference_f64(reference_forward, states, mask, W, v)
    assert_all_close_f64(fwd, ref64, n=n, names=NAMES, scales=scales(states, v))
    gc, gl, ga = (t.to(dev) for t in upstream(B, T, D))
    for gu in (None, _grad_u(B, T, A).to(dev)):
        bwd = triton_kernels.backward(gc, gl, ga, gu, states, mask, W, v, fwd[2], fwd[3])
        ref_b = reference_f64(reference_backward, gc, gl, ga, gu, states, mask, W, v, ref64[2], ref64[3])
        assert_all_close_f64(bwd, ref_b, n=n, names=GRAD_NAMES)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU for the dispatcher's CUDA kernel")
def test_cuda_dispatch_matches_reference():
    states, mask, W, v = (t.cuda() for t in make_inputs(4, 33, 100, 100, "post", requires_grad=False))
    for t in (states, W, v):
        t.requires_grad_(True)
    out = masked_attention_pool(states, mask, W, v)
    ref = reference_f64(masked_attention_pool_reference, states, mask, W, v)
    assert_all_close_f64(out, ref, n=n_acc(4, 33, 100, 100), names=NAMES[:3], scales=scales(states, v)[:3])


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------
def _good():
    return make_inputs(2, 4, 6, 3, "post")


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda s, m, w, v: (s[0], m, w, v), "'states' must have rank 3"),
        (lambda s, m, w, v: (s, m[0], w, v), "'mask' must have rank 2"),
        (lambda s, m, w, v: (s, m, w[0], v), "'W' must have rank 2"),
        (lambda s, m, w, v: (s, m, w, v[None]), "'v' must have rank 1"),
        (lambda s, m, w, v: (s.long(), m, w, v), "'states' must be floating point"),
        (lambda s, m, w, v: (s, m, w.double(), v), "dtype of 'states'"),
        (lambda s, m, w, v: (s, m.float(), w, v), "'mask' must be bool or integer"),
        (lambda s, m, w, v: (s, m[:, :3], w, v), "'mask' must have shape"),
        (lambda s, m, w, v: (s, m, w[:, :5], v), "'W' must have shape"),
        (lambda s, m, w, v: (s, m, w, v[:2]), "'v' must have shape"),
        (lambda s, m, w, v: (s, m, w, "v"), "'v' must be a torch.Tensor"),
        (lambda s, m, w, v: (s, torch.zeros_like(m), w, v), "no valid position"),
        (lambda s, m, w, v: (s.index_fill(0, torch.tensor([1]), float("nan")), m, w, v), "NaN"),
        (lambda s, m, w, v: (s, m, w.index_fill(0, torch.tensor([0]), float("inf")), v), "NaN or inf"),
        (lambda s, m, w, v: (s, m.to("meta"), w, v), "all inputs must share a device"),
    ],
)
def test_bad_inputs_raise(mutate, match):
    args = mutate(*_good())
    with pytest.raises(EdgekdValueError, match=match):
        masked_attention_pool(*args)


def test_fully_masked_row_among_valid_rows_is_named():
    s, m, w, v = _good()
    m = m.clone()
    m[1] = False
    with pytest.raises(EdgekdValueError, match=r"fully masked rows \[1\]"):
        masked_attention_pool(s, m, w, v)


def test_saturated_and_tiny_projections():
    # tanh saturates (|W h| up to ~1e3) or is ~linear near 0 (|W h| ~1e-6). tanh (and 1 - u^2 in
    # the backward) is accurate to eps *absolutely* (its range is [-1, 1]), so the scale of every
    # result is that of its terms, |v| max(1, |W|) (1 + |h|), not of the result (~1e-6 here).
    for scale in (300.0, 1e-6):
        states, mask, W, v = make_inputs(3, 9, 16, 12, "post", requires_grad=False)
        W = W * scale

        def run(fn, dtype):
            leaves = [t.to(dtype).requires_grad_(True) for t in (states, W, v)]
            out = fn(leaves[0], mask, leaves[1], leaves[2])
            grads = torch.autograd.grad(sum((o * (k + 1)).sum() for k, o in enumerate(out)), leaves)
            return [t.double() for t in (*out, *grads)]

        ours = run(masked_attention_pool, torch.float32)
        truth = run(masked_attention_pool_reference, torch.float64)
        terms = float(v.abs().max() * max(1.0, W.abs().max()) * (1 + states.abs().max()))
        for name, a, t in zip(NAMES[:3] + GRAD_NAMES, ours, truth):
            assert torch.isfinite(a).all()
            big = max(float(t.abs().max()), terms)
            assert_close_f64(a.float(), t, n=n_acc(3, 9, 16, 12), scale=big, name=f"{name} at |W| x {scale}")
