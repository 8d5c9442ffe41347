"""Tests of the perturbed top-k ops: reference == C++ == Triton (interpreter) on the same noise,
exact backward against a dense float64 estimator, convergence, bad inputs, determinism, opcheck,
torch.compile, ONNX export of the hard path, and the pure-PyTorch fallback."""
from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgekd.ops as ops
from edgekd._ext import has_extension
from edgekd.errors import EdgekdValueError
from edgekd.ops import perturbed_topk as pt
from numerics import assert_close_f64, to_f64

ROOT = pathlib.Path(__file__).resolve().parents[2]
needs_ext = pytest.mark.skipif(not has_extension(), reason="edgekd._C is not built")
G = torch.ops.edgekd.perturbed_topk_gather.default
GB = torch.ops.edgekd.perturbed_topk_gather_backward.default
IND = torch.ops.edgekd.perturbed_topk_indicators.default
INDB = torch.ops.edgekd.perturbed_topk_indicators_backward.default


def make_case(B, N, D, S, k=None, seed=0, masked=False, dtype=torch.float32):
    """Random scores / x / noise / mask with at least k valid tokens per row."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(B, N, generator=g, dtype=dtype)
    x = torch.randn(B, N, D, generator=g, dtype=dtype)
    noise = torch.randn(B, S, N, generator=g, dtype=dtype)
    mask = None
    if masked:
        mask = torch.rand(B, N, generator=g) < 0.7
        mask[:, 0] = True
    valid = N if mask is None else int(mask.sum(1).min())
    if k is None:
        k = int(torch.randint(1, valid + 1, (1,), generator=g))
    k = min(k, valid)
    grad = torch.randn(B, k, D, generator=g, dtype=dtype)
    grad_ind = torch.randn(B, k, N, generator=g, dtype=dtype)
    return scores, x, noise, mask, k, grad, grad_ind


def expected_f64(x, noise, idx, sigma, grad, grad_ind):
    """The float results in float64 for given indices (the selection is compared exactly, in the
    op's own dtype: float64 noise could order near-ties differently), with the scale of the
    grad_scores terms: the same sums over absolute values (they cancel; numerics.py)."""
    x, noise, grad, grad_ind = to_f64((x, noise, grad, grad_ind))
    Y = dense_onehots(idx, x.shape[1]).mean(1)  # (B, k, N)
    gs, gx = pt.perturbed_topk_gather_reference_backward(grad, x, noise, idx, sigma)
    gs_scale = float(pt.perturbed_topk_gather_reference_backward(grad.abs(), x.abs(), noise.abs(), idx, sigma)[0].max())
    ind_gs = pt.perturbed_topk_indicators_reference_backward(grad_ind, noise, idx, sigma)
    ind_scale = float(pt.perturbed_topk_indicators_reference_backward(grad_ind.abs(), noise.abs(), idx, sigma).max())
    return dict(out=Y @ x, gs=gs, gx=gx, ind=Y, ind_gs=ind_gs, gs_scale=gs_scale, ind_scale=ind_scale)


def check_all(impl_fwd, impl_bwd, impl_ind, impl_indb, scores, x, noise, mask, k, sigma, grad, grad_ind):
    """Compare one implementation (forward, backward, both forms) with the reference: the indices
    exactly (reference_select in the same dtype), the float results with the float64 reference."""
    S, D = noise.shape[1], x.shape[2]
    ref_idx = pt.perturbed_topk_reference_select(scores, noise, mask, k, sigma)
    out, idx = impl_fwd(scores, x, noise, mask, k, sigma)
    assert torch.equal(idx, ref_idx)
    e = expected_f64(x, noise, ref_idx, sigma, grad, grad_ind)
    assert_close_f64(out, e["out"], n=S, name="out")
    gs, gx = impl_bwd(grad, x, noise, idx, sigma)
    assert_close_f64(gs, e["gs"], n=S * k * D, scale=e["gs_scale"], name="grad scores")  # S*k dots of length D
    assert_close_f64(gx, e["gx"], n=S, name="grad x")
    ind, idx2 = impl_ind(scores, noise, mask, k, sigma)
    assert torch.equal(idx2, ref_idx)
    assert_close_f64(ind, e["ind"], n=S, name="indicators")
    assert_close_f64(impl_indb(grad_ind, noise, idx2, sigma), e["ind_gs"], n=S * k, scale=e["ind_scale"],
                     name="indicators grad scores")


# ------------------------------------------------------------------------------------------------
# forward / backward: reference == C++ == Triton


@needs_ext
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    B=st.integers(1, 3),
    N=st.integers(1, 37),
    D=st.integers(1, 9),
    S=st.integers(1, 7),
    seed=st.integers(0, 10_000),
    masked=st.booleans(),
    f64=st.booleans(),
    sigma=st.sampled_from([0.01, 0.5, 3.0]),
)
def test_cpp_matches_reference(B, N, D, S, seed, masked, f64, sigma):
    dtype = torch.float64 if f64 else torch.float32
    scores, x, noise, mask, k, grad, grad_ind = make_case(B, N, D, S, None, seed, masked, dtype)
    check_all(G, GB, IND, INDB, scores, x, noise, mask, k, sigma, grad, grad_ind)


@needs_ext
@pytest.mark.parametrize("k_mode", ["one", "all"])
@pytest.mark.parametrize("masked", [False, True])
def test_cpp_edge_k(k_mode, masked):
    scores, x, noise, mask, _, _, _ = make_case(2, 13, 5, 4, 1, seed=3, masked=masked)
    valid = 13 if mask is None else int(mask.sum(1).min())
    k = 1 if k_mode == "one" else valid
    if mask is not None:
        mask[1] = mask[0]  # both rows have exactly `valid` tokens, so k = valid is allowed
    g = torch.Generator().manual_seed(1)
    grad = torch.randn(2, k, 5, generator=g)
    grad_ind = torch.randn(2, k, 13, generator=g)
    check_all(G, GB, IND, INDB, scores, x, noise, mask, k, 0.3, grad, grad_ind)
    if k_mode == "all":  # every valid position is selected in every sample
        out, idx = G(scores, x, noise, mask, k, 0.3)
        expect = torch.arange(13) if mask is None else mask[0].nonzero().squeeze(1)
        assert torch.equal(idx, expect.expand(2, 4, k))


@needs_ext
def test_ties_prefer_lower_position():
    scores = torch.tensor([[1.0, 2.0, 2.0, 0.0, 2.0, -0.0]])
    noise = torch.zeros(1, 2, 6)
    x = torch.arange(6.0).view(1, 6, 1)
    for impl in (G, pt.perturbed_topk_gather_reference_forward):
        _, idx = impl(scores, x, noise, None, 2, 1.0)
        assert idx.tolist() == [[[1, 2], [1, 2]]]
        # 0.0 and -0.0 are equal: the lower position wins
        _, idx = impl(scores, x, noise, None, 5, 1.0)
        assert idx.tolist() == [[[0, 1, 2, 3, 4]] * 2]


@needs_ext
def test_cpp_kernel_checks_inputs():
    scores, x, noise, mask, k, _, _ = make_case(1, 8, 3, 2, 3)
    with pytest.raises(RuntimeError, match="k must be in \\[1, N=8\\], got 9"):
        G(scores, x, noise, None, 9, 0.1)
    with pytest.raises(RuntimeError, match="sigma"):
        G(scores, x, noise, None, 2, 0.0)
    with pytest.raises(RuntimeError, match="non-finite"):
        G(torch.full_like(scores, float("nan")), x, noise, None, 2, 0.1)
    m = torch.zeros(1, 8, dtype=torch.bool)
    m[0, :2] = True
    with pytest.raises(RuntimeError, match="valid tokens"):
        G(scores, x, noise, m, 3, 0.1)
    with pytest.raises(RuntimeError, match="x shape"):
        G(scores, x[:, :7], noise, None, 2, 0.1)


triton_mark = pytest.mark.triton


def _tk():
    pytest.importorskip("triton")
    from edgekd.kernels import perturbed_topk as tk

    return tk


@triton_mark
@pytest.mark.parametrize(
    "B,N,D,S,k,masked,dtype",
    [
        (1, 1, 1, 1, 1, False, torch.float32),  # length 1
        (2, 13, 5, 3, 1, True, torch.float32),  # k = 1, mask
        (2, 17, 3, 4, 17, False, torch.float32),  # k = N
        (2, 23, 5, 3, 6, True, torch.float64),  # prime N, float64
        (1, 40, 130, 2, 9, False, torch.float32),  # D above one column block
    ],
)
def test_triton_matches_reference(B, N, D, S, k, masked, dtype):
    tk = _tk()
    scores, x, noise, mask, k, grad, grad_ind = make_case(B, N, D, S, k, seed=N, masked=masked, dtype=dtype)
    check_all(
        tk.gather_forward, tk.gather_backward, tk.indicators_forward, tk.indicators_backward,
        scores, x, noise, mask, k, 0.2, grad, grad_ind,
    )


@triton_mark
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    B=st.integers(1, 2), N=st.integers(2, 24), D=st.integers(1, 6), S=st.integers(1, 3),
    seed=st.integers(0, 1000), masked=st.booleans(),
)
def test_triton_matches_reference_random(B, N, D, S, seed, masked):
    tk = _tk()
    scores, x, noise, mask, k, grad, grad_ind = make_case(B, N, D, S, None, seed, masked)
    check_all(
        tk.gather_forward, tk.gather_backward, tk.indicators_forward, tk.indicators_backward,
        scores, x, noise, mask, k, 0.7, grad, grad_ind,
    )


@triton_mark
def test_triton_ties_and_signed_zero():
    tk = _tk()
    scores = torch.tensor([[1.0, 2.0, 2.0, 0.0, 2.0, -0.0, -3.0]])
    noise = torch.zeros(1, 1, 7)
    assert tk.select_indices(scores, noise, None, 2, 1.0).tolist() == [[[1, 2]]]
    assert tk.select_indices(scores, noise, None, 5, 1.0).tolist() == [[[0, 1, 2, 3, 4]]]
    assert tk.select_indices(scores, noise, None, 7, 1.0).tolist() == [[list(range(7))]]


# ------------------------------------------------------------------------------------------------
# the exact estimator against the dense formula, float64


def dense_onehots(indices, N):
    return torch.nn.functional.one_hot(indices, N).to(torch.float64)  # (B, S, k, N)


@pytest.mark.parametrize("masked", [False, True])
def test_backward_matches_dense_estimator(masked):
    B, N, D, S, sigma = 2, 11, 4, 6, 0.4
    scores, x, noise, mask, k, grad, grad_ind = make_case(B, N, D, S, 4, 7, masked, torch.float64)
    scores.requires_grad_(True)
    x.requires_grad_(True)
    out, idx = G(scores, x, noise, mask, k, sigma)
    out.backward(grad)
    Y = dense_onehots(idx, N)
    # exact estimator: 1/(S sigma) sum_s <G_ind, Y_s> Z_s with G_ind = grad @ x^T
    g_ind = grad @ x.detach().transpose(1, 2)  # (B, k, N)
    w = torch.einsum("bkn,bskn->bs", g_ind, Y)
    expect_scores = torch.einsum("bs,bsn->bn", w, noise) / (S * sigma)
    terms = torch.einsum("bs,bsn->bn", torch.einsum("bkn,bskn->bs", (grad @ x.detach().abs().transpose(1, 2)).abs(), Y),
                         noise.abs()) / (S * sigma)
    assert_close_f64(scores.grad, expect_scores, n=S * k * D, scale=float(terms.max()), name="grad scores")
    # dL/dx: autograd through the dense form Y.mean(1) @ x
    xd = x.detach().clone().requires_grad_(True)
    (Y.mean(1) @ xd).backward(grad)
    assert_close_f64(x.grad, xd.grad, n=S, name="grad x")
    assert_close_f64(out, Y.mean(1) @ x.detach(), n=S, name="out")

    # indicators form
    s2 = scores.detach().clone().requires_grad_(True)
    ind, idx2 = IND(s2, noise, mask, k, sigma)
    assert_close_f64(ind, Y.mean(1), n=S, name="indicators")
    ind.backward(grad_ind)
    w2 = torch.einsum("bkn,bskn->bs", grad_ind, Y)
    terms2 = torch.einsum("bs,bsn->bn", torch.einsum("bkn,bskn->bs", grad_ind.abs(), Y), noise.abs()) / (S * sigma)
    assert_close_f64(s2.grad, torch.einsum("bs,bsn->bn", w2, noise) / (S * sigma), n=S * k,
                     scale=float(terms2.max()), name="indicators grad scores")


def test_gradcheck_x():
    """The output is linear in x for fixed noise, so dL/dx is a true derivative: gradcheck it.
    (The scores gradient is the perturbed-optimiser estimator of the smoothed expectation, not the
    derivative of the piecewise-constant Monte-Carlo forward; it is checked against the dense
    estimator above and against the closed form below.)"""
    scores, x, noise, mask, k, _, _ = make_case(2, 7, 3, 3, 3, 13, True, torch.float64)
    xx = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: G(scores, t, noise, mask, k, 0.3)[0], (xx,))


def test_diagonal_estimator_matches_public_code():
    """estimator='diagonal' equals the PerturbedTopKFunction backward (einsum on dense one-hots)."""
    B, N, S, sigma, k = 2, 9, 5, 0.3, 3
    scores, _, noise, _, k, _, grad_ind = make_case(B, N, 1, S, k, 11, False, torch.float64)
    s = scores.clone().requires_grad_(True)
    ind = pt.diagonal_indicators(s, noise, None, k, sigma)
    ind.backward(grad_ind)
    Y = dense_onehots(pt.perturbed_topk_reference_select(scores, noise, None, k, sigma), N)  # (B, S, k, N)
    expected_gradient = torch.einsum("bnkd,bnd->bkd", Y, noise) / S / sigma
    public = torch.einsum("bkd,bkd->bd", grad_ind, expected_gradient)
    assert_close_f64(s.grad, public, n=S * k, name="diagonal estimator")
    assert_close_f64(ind, Y.mean(1), n=S, name="indicators")
    exact = pt.perturbed_topk_indicators_reference_backward(grad_ind, noise, pt.perturbed_topk_reference_select(scores, noise, None, k, sigma), sigma)
    assert not torch.allclose(exact, public)  # the two estimators differ


def test_convergence_matches_closed_form():
    """N=2, k=1: indicator[0] = P(s0 + sZ0 > s1 + sZ1) = Phi(delta / (sigma sqrt 2)), derivative
    phi(.)/(sigma sqrt 2). Errors of forward and gradient shrink like 1/sqrt(S)."""
    sigma, delta = 0.5, 0.3
    a = delta / (sigma * math.sqrt(2.0))
    p_true = 0.5 * (1.0 + math.erf(a / math.sqrt(2.0)))
    dp_true = math.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi) / (sigma * math.sqrt(2.0))
    rms = {}
    for S in (64, 4096):
        errs_p, errs_g = [], []
        for seed in range(24):
            g = torch.Generator().manual_seed(seed)
            s = torch.tensor([[delta, 0.0]], dtype=torch.float64, requires_grad=True)
            ind = ops.perturbed_topk_indicators(s, 1, num_samples=S, sigma=sigma, generator=g)
            ind[0, 0, 0].backward()
            errs_p.append(ind[0, 0, 0].item() - p_true)
            errs_g.append(s.grad[0, 0].item() - dp_true)
        rms[S] = (
            math.sqrt(sum(e * e for e in errs_p) / len(errs_p)),
            math.sqrt(sum(e * e for e in errs_g) / len(errs_g)),
        )
    # 64x more samples: ~8x smaller error; allow a wide margin for 24 seeds
    assert rms[4096][0] < rms[64][0] / 4
    assert rms[4096][1] < rms[64][1] / 4
    assert rms[4096][0] < 0.02 and rms[4096][1] < 0.1


# ------------------------------------------------------------------------------------------------
# public functions: semantics, bad input, determinism


def test_public_gather_equals_indicators_matmul():
    scores, x, _, mask, k, _, _ = make_case(2, 15, 6, 1, 4, 5, True, torch.float64)
    g1 = torch.Generator().manual_seed(0)
    g2 = torch.Generator().manual_seed(0)
    out = ops.perturbed_topk_gather(scores, x, k, num_samples=9, sigma=0.2, mask=mask, generator=g1)
    ind = ops.perturbed_topk_indicators(scores, k, num_samples=9, sigma=0.2, mask=mask, generator=g2)
    assert_close_f64(out, ind @ x, n=9 + 15, name="gather vs indicators @ x")
    # padding never selected
    assert float(ind.sum(1)[~mask].abs().max()) == 0.0


def test_k_ratio_and_int_mask():
    scores = torch.randn(2, 10)
    x = torch.randn(2, 10, 3)
    mask = torch.ones(2, 10, dtype=torch.int64)
    mask[1, 7:] = 0  # shortest row: 7 valid tokens
    assert ops.perturbed_topk_gather(scores, x, 0.25).shape == (2, 3, 3)  # ceil(2.5)
    assert ops.perturbed_topk_gather(scores, x, 0.5, mask=mask).shape == (2, 4, 3)  # ceil(3.5)
    assert ops.perturbed_topk_gather(scores, x, 0.01).shape == (2, 1, 3)
    assert ops.topk_indices(scores, 1.0, mask=mask).shape == (2, 7)
    idx = ops.topk_indices(scores, 7, mask=mask)
    assert (idx[1] < 7).all()


def test_hard_path():
    scores = torch.tensor([[0.1, 3.0, -1.0, 2.0, 5.0]])
    x = torch.arange(10.0).view(1, 5, 2)
    idx = ops.topk_indices(scores, 3)
    assert idx.tolist() == [[1, 3, 4]]
    out = ops.perturbed_topk_gather(scores, x, 3, hard=True)
    assert torch.equal(out, x[:, [1, 3, 4]])
    with torch.no_grad():  # hard=None follows grad mode
        assert torch.equal(ops.perturbed_topk_gather(scores, x, 3), out)
        ind = ops.perturbed_topk_indicators(scores, 3)
    assert torch.equal(ind.argmax(-1), idx)
    mask = torch.tensor([[1, 1, 1, 1, 0]], dtype=torch.bool)
    assert ops.topk_indices(scores, 3, mask).tolist() == [[0, 1, 3]]


def _bad_cases():
    s = torch.randn(2, 6)
    x = torch.randn(2, 6, 3)
    m = torch.ones(2, 6, dtype=torch.bool)
    m[1, 2:] = False
    nan = s.clone()
    nan[1, 3] = float("nan")
    inf = s.clone()
    inf[0, 0] = float("inf")
    return [
        ("k must be >= 1", dict(scores=s, x=x, k=0)),
        ("k must be >= 1", dict(scores=s, x=x, k=-2)),
        ("larger than the number of tokens", dict(scores=s, x=x, k=7)),
        ("valid \\(unmasked\\) tokens in row 1", dict(scores=s, x=x, k=3, mask=m)),
        ("keep ratio", dict(scores=s, x=x, k=1.5)),
        ("keep ratio", dict(scores=s, x=x, k=0.0)),
        ("k must be an int", dict(scores=s, x=x, k="3")),
        ("k must be an int", dict(scores=s, x=x, k=True)),
        ("sigma must be a finite number > 0", dict(scores=s, x=x, k=2, sigma=0.0)),
        ("sigma must be a finite number > 0", dict(scores=s, x=x, k=2, sigma=-1.0)),
        ("sigma must be a finite number > 0", dict(scores=s, x=x, k=2, sigma=float("inf"))),
        ("num_samples must be an int >= 1", dict(scores=s, x=x, k=2, num_samples=0)),
        ("num_samples must be an int >= 1", dict(scores=s, x=x, k=2, num_samples=2.0)),
        ("scores must be finite", dict(scores=nan, x=x, k=2)),
        ("scores must be finite", dict(scores=inf, x=x, k=2)),
        ("rank 2", dict(scores=s[0], x=x, k=2)),
        ("rank 3", dict(scores=s, x=x[0], k=2)),
        ("float32 or float64", dict(scores=s.half(), x=x, k=2)),
        ("float32 or float64", dict(scores=s.long(), x=x, k=2)),
        ("x dtype", dict(scores=s, x=x.double(), k=2)),
        ("does not match scores shape", dict(scores=s, x=x[:, :5], k=2)),
        ("mask must have the shape", dict(scores=s, x=x, k=2, mask=m[:, :5])),
        ("mask must be bool or integer", dict(scores=s, x=x, k=2, mask=m.float())),
        ("x is on meta", dict(scores=s, x=x.to("meta"), k=2)),
        ("mask is on meta", dict(scores=s, x=x, k=2, mask=m.to("meta"))),
        ("estimator", dict(scores=s, x=x, k=2, estimator="dense")),
        ("generator must be a torch.Generator", dict(scores=s, x=x, k=2, generator=0)),
        ("scores must be a torch.Tensor", dict(scores=[1.0, 2.0], x=x, k=2)),
    ]


@pytest.mark.parametrize("message,kwargs", _bad_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_bad_input(message, kwargs):
    with pytest.raises(EdgekdValueError, match=message):
        ops.perturbed_topk_gather(**kwargs)
    if "x" in message or "rank 3" in message or "does not match" in message:
        return
    kw = {k: v for k, v in kwargs.items() if k != "x"}
    with pytest.raises(ValueError, match=message):  # EdgekdValueError is a ValueError
        ops.perturbed_topk_indicators(**kw)


def test_determinism():
    scores, x, _, mask, k, grad, _ = make_case(2, 30, 8, 1, 5, 2, True)
    runs = []
    for _ in range(2):
        s = scores.clone().requires_grad_(True)
        xx = x.clone().requires_grad_(True)
        g = torch.Generator().manual_seed(1234)
        out = ops.perturbed_topk_gather(s, xx, k, num_samples=17, sigma=0.3, mask=mask, generator=g)
        out.backward(grad)
        runs.append((out, s.grad, xx.grad))
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    g = torch.Generator().manual_seed(99)
    other = ops.perturbed_topk_gather(scores, x, k, num_samples=17, sigma=0.3, mask=mask, generator=g)
    assert not torch.equal(other, runs[0][0])


@needs_ext
def test_cpp_result_independent_of_thread_count():
    scores, x, noise, mask, k, grad, _ = make_case(3, 200, 16, 20, 40, 6, True)
    res = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out, idx = G(scores, x, noise, mask, k, 0.2)
            res.append((out, idx, *GB(grad, x, noise, idx, 0.2)))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*res):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------
# registration: opcheck, torch.compile


def test_opcheck():
    scores, x, noise, mask, k, grad, grad_ind = make_case(2, 9, 3, 4, 3, 1, True)
    scores.requires_grad_(True)
    x.requires_grad_(True)
    test_utils = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(G, (scores, x, noise, mask, k, 0.3), test_utils=test_utils)
    torch.library.opcheck(IND, (scores, noise, mask, k, 0.3), test_utils=test_utils)
    _, idx = G(scores.detach(), x.detach(), noise, mask, k, 0.3)
    torch.library.opcheck(GB, (grad, x.detach(), noise, idx, 0.3))
    torch.library.opcheck(INDB, (grad_ind, noise, idx, 0.3))


def test_torch_compile_fullgraph():
    scores, x, noise, _, k, grad, _ = make_case(2, 16, 4, 5, 3, 4)

    def f(s, xx, z):
        out = torch.ops.edgekd.perturbed_topk_gather(s.tanh(), xx * 2.0, z, None, 3, 0.25)[0]
        return (out * grad).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (f, compiled):
        s = scores.clone().requires_grad_(True)
        xx = x.clone().requires_grad_(True)
        loss = fn(s, xx, noise)
        loss.backward()
        results.append((loss, s.grad, xx.grad))
    for a, b in zip(*results):  # the same kernels in the same order: bitwise the same
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------
# ONNX export of the hard path


def test_hard_path_onnx_export(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")

    class Keep(torch.nn.Module):
        def forward(self, scores, x, mask):
            return ops.perturbed_topk_gather(scores, x, 4, mask=mask, hard=True)

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 12, generator=g)
    x = torch.randn(2, 12, 5, generator=g)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 9:] = False
    path = tmp_path / "keep.onnx"
    torch.onnx.export(Keep(), (scores, x, mask), str(path), dynamo=True)
    model = onnx.load(str(path))
    op_types = {n.op_type for n in model.graph.node}
    assert "TopK" in op_types
    assert op_types & {"Gather", "GatherElements"}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    got = sess.run(None, dict(zip(names, [scores.numpy(), x.numpy(), mask.numpy()])))[0]
    expect = Keep()(scores, x, mask)
    torch.testing.assert_close(torch.from_numpy(got), expect)


# ------------------------------------------------------------------------------------------------
# fallback without the extension

_FALLBACK_SCRIPT = r"""
import json, sys, warnings
import torch
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import edgekd.ops as ops
    from edgekd._ext import has_extension
    from edgekd.ops import perturbed_topk as pt
    data = torch.load(sys.argv[1], weights_only=True)
    s = data["scores"].clone().requires_grad_(True)
    x = data["x"].clone().requires_grad_(True)
    out, idx = torch.ops.edgekd.perturbed_topk_gather(s, x, data["noise"], data["mask"], 3, 0.3)
    out.backward(data["grad"])
    out2, _ = torch.ops.edgekd.perturbed_topk_gather(s, x, data["noise"], data["mask"], 3, 0.3)
    torch.save({"out": out.detach(), "idx": idx, "gs": s.grad, "gx": x.grad}, sys.argv[2])
n = sum(1 for w in caught if issubclass(w.category, RuntimeWarning) and "edgekd" in str(w.message))
print(json.dumps({"has_extension": has_extension(), "warnings": n}))
"""


def test_fallback_subprocess(tmp_path):
    scores, x, noise, mask, _, _, _ = make_case(2, 10, 4, 5, 3, 8, True)
    grad = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    inp = tmp_path / "in.pt"
    outp = tmp_path / "out.pt"
    torch.save({"scores": scores, "x": x, "noise": noise, "mask": mask, "grad": grad}, inp)
    env = dict(os.environ, EDGEKD_DISABLE_EXT="1")
    res = subprocess.run(
        [sys.executable, "-c", _FALLBACK_SCRIPT, str(inp), str(outp)],
        env=env, capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info == {"has_extension": False, "warnings": 1}
    fb = torch.load(outp, weights_only=True)
    s = scores.clone().requires_grad_(True)
    xx = x.clone().requires_grad_(True)
    out, idx = G(s, xx, noise, mask, 3, 0.3)
    out.backward(grad)
    assert torch.equal(fb["idx"], idx)
    e = expected_f64(x, noise, idx, 0.3, grad, torch.zeros(2, 3, 10))
    for name, got in (("fallback", fb), ("C++", {"out": out.detach(), "gs": s.grad, "gx": xx.grad})):
        assert_close_f64(got["out"], e["out"], n=5, name=f"{name} out")
        assert_close_f64(got["gs"], e["gs"], n=5 * 3 * 4, scale=e["gs_scale"], name=f"{name} grad scores")
        assert_close_f64(got["gx"], e["gx"], n=5, name=f"{name} grad x")
