"""Tests of edgekd::fused_linear_kd: the C++ CPU kernel, the chunked PyTorch path and the Triton
kernel (interpreter on CPU) against the oracle, ``edgekd.llm.kd_loss`` on materialised logits in
float64; gradcheck, opcheck, torch.compile and bad inputs."""
from __future__ import annotations

import pytest
import torch

from edgekd import _ext
from edgekd.errors import EdgekdValueError
from edgekd.llm import LOSSES, SparseTeacher, kd_loss
from edgekd.ops import fused_linear_kd
from edgekd.ops.fused_linear_kd import chunked_forward
from numerics import assert_close_f64, to_f64

TAU = 1.5


def make_case(N, H, V, *, sparse=False, k=4, dtype=torch.float32, seed=0, bias=True, ignore=True):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, H, generator=g, dtype=dtype)
    W = torch.randn(V, H, generator=g, dtype=dtype) / H**0.5
    b = torch.randn(V, generator=g, dtype=dtype) * 0.5 if bias else None
    t = torch.randn(N, V, generator=g, dtype=dtype) * 2.0
    labels = torch.randint(0, V, (N,), generator=g)
    if ignore and N > 2:
        labels[1] = -100
        labels[N - 1] = -100
    teacher = t
    if sparse:
        lp = torch.log_softmax(t.double() / TAU, -1)
        vals, ids = lp.topk(k, dim=-1)
        tail = torch.log1p(-vals.exp().sum(-1)) if k < V else torch.full((N,), float("-inf"), dtype=torch.float64)
        teacher = SparseTeacher(ids, vals.to(dtype), tail.to(dtype), TAU)
    return h, W, b, teacher, labels


def oracle(h, W, b, teacher, labels, **kw):
    """kd_loss on the materialised logits in float64, with autograd gradients."""
    h64, W64 = to_f64(h).requires_grad_(True), to_f64(W).requires_grad_(True)
    b64 = to_f64(b).requires_grad_(True) if b is not None else None
    if isinstance(teacher, SparseTeacher):
        teacher = SparseTeacher(teacher.topk_ids, to_f64(teacher.topk_logprobs), to_f64(teacher.tail_logmass),
                                teacher.temperature)
    else:
        teacher = to_f64(teacher)
    z = h64 @ W64.t() + (b64 if b64 is not None else 0.0)
    loss = kd_loss(z, teacher, labels=labels, **kw)
    grads = torch.autograd.grad(loss, [h64, W64] + ([b64] if b64 is not None else []))
    return loss.detach(), grads


def run_op(h, W, b, teacher, labels, **kw):
    h = h.clone().requires_grad_(True)
    W = W.clone().requires_grad_(True)
    b = b.clone().requires_grad_(True) if b is not None else None
    loss = fused_linear_kd(h, W, teacher, bias=b, labels=labels, **kw)
    grads = torch.autograd.grad(loss, [h, W] + ([b] if b is not None else []))
    return loss.detach(), grads


def compare(got, want, N, V, H):
    loss, grads = got
    wloss, wgrads = want
    n = N * V + H
    # the loss is a mean of sums of V terms that cancel: its scale is the size of those terms
    assert_close_f64(loss, wloss, n=n, scale=max(1.0, float(wloss.abs())) * 4, name="loss")
    for name, a, e in zip(("grad hidden", "grad weight", "grad bias"), grads, wgrads):
        assert_close_f64(a, e, n=n, name=name)


CASES = [(13, 7, 37, 4), (1, 5, 11, 0), (9, 8, 64, 16), (32, 6, 29, 5)]  # (N, H, V, chunk_size)
LOSS_NAMES = list(LOSSES)


@pytest.mark.parametrize("loss", LOSS_NAMES)
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("N,H,V,chunk", CASES)
def test_cpu_kernel_matches_oracle(loss, sparse, N, H, V, chunk):
    h, W, b, teacher, labels = make_case(N, H, V, sparse=sparse, k=min(5, V))
    kw = dict(loss=loss, temperature=TAU, beta=0.3, alpha=0.2, ce_weight=0.25)
    compare(run_op(h, W, b, teacher, labels, chunk_size=chunk, **kw), oracle(h, W, b, teacher, labels, **kw), N, V, H)


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_pure_kd_no_bias_sparse_k_equals_v_and_mask(loss):
    N, H, V = 10, 4, 9
    h, W, _, teacher, _ = make_case(N, H, V, sparse=True, k=V, bias=False)
    mask = torch.tensor([1, 1, 0, 1, 0, 1, 1, 1, 1, 0], dtype=torch.bool)
    kw = dict(loss=loss, temperature=TAU, alpha=0.2)
    got = run_op(h, W, None, teacher, None, mask=mask, chunk_size=3, **kw)
    want = oracle(h, W, None, teacher, None, mask=mask, **kw)
    compare(got, want, N, V, H)
    # masked rows get no gradient
    assert torch.all(got[1][0][~mask] == 0)


@pytest.mark.parametrize("loss", LOSS_NAMES)
@pytest.mark.parametrize("sparse", [False, True])
def test_chunked_pytorch_path_matches_oracle(loss, sparse):
    N, H, V = 11, 5, 23
    h, W, b, teacher, labels = make_case(N, H, V, sparse=sparse, dtype=torch.float64)
    kw = dict(loss=loss, temperature=TAU, beta=0.3, alpha=0.2, ce_weight=0.25)
    valid = labels != -100
    if sparse:
        ids, lps, tail = teacher.topk_ids, teacher.topk_logprobs, teacher.tail_logmass
        args = (None, ids, lps, tail)
    else:
        args = (teacher, None, None, None)
    total, gh, gw, gb = chunked_forward(h, W, b, valid, *args, labels, loss, TAU, 0.3, 0.2, 0.25, 4)
    n = int(valid.sum())
    wl, (wh, ww, wb) = oracle(h, W, b, teacher, labels, **kw)
    torch.testing.assert_close(total / n, wl, rtol=1e-10, atol=1e-12)
    for a, e in ((gh / n, wh), (gw / n, ww), (gb / n, wb)):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-12)


def test_direct_op_call_returns_sums():
    N, H, V = 7, 4, 13
    h, W, b, t, labels = make_case(N, H, V, dtype=torch.float64)
    valid = labels != -100
    total, gh, gw, gb = torch.ops.edgekd.fused_linear_kd.default(
        h, W, b, valid, t, None, None, None, labels, "jsd", TAU, 0.3, 0.2, 0.5, 2)
    wl, (wh, ww, wb) = oracle(h, W, b, t, labels, loss="jsd", temperature=TAU, beta=0.3, ce_weight=0.5)
    n = int(valid.sum())
    torch.testing.assert_close(total, wl * n, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gw, ww * n, rtol=1e-9, atol=1e-12)


def test_gradient_accumulation_matches_one_batch():
    N, H, V = 12, 4, 10
    h, W, b, t, labels = make_case(N, H, V, dtype=torch.float64)
    n = int((labels != -100).sum())
    full = run_op(h, W, b, t, labels, ce_weight=0.3)
    parts = [run_op(h[s], W, b, t[s], labels[s], ce_weight=0.3, num_valid_tokens=n) for s in (slice(0, 5), slice(5, 12))]
    torch.testing.assert_close(parts[0][0] + parts[1][0], full[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(parts[0][1][1] + parts[1][1][1], full[1][1], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("loss", ["forward_kl", "jsd", "skew_reverse_kl", "clipped_kl"])
@pytest.mark.parametrize("sparse", [False, True])
def test_gradcheck_float64(loss, sparse):
    N, H, V = 5, 3, 7
    h, W, b, teacher, labels = make_case(N, H, V, sparse=sparse, k=3, dtype=torch.float64)
    h.requires_grad_(True)
    W.requires_grad_(True)
    b.requires_grad_(True)

    def f(h, W, b):
        return fused_linear_kd(h, W, teacher, bias=b, labels=labels, loss=loss, temperature=TAU, beta=0.3,
                               alpha=0.2, ce_weight=0.25, chunk_size=2)

    assert torch.autograd.gradcheck(f, (h, W, b), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("sparse", [False, True])
def test_opcheck(sparse):
    N, H, V = 6, 4, 9
    h, W, b, teacher, labels = make_case(N, H, V, sparse=sparse, k=3)
    valid = labels != -100
    if sparse:
        args = (None, teacher.topk_ids, teacher.topk_logprobs, teacher.tail_logmass)
    else:
        args = (teacher, None, None, None)
    torch.library.opcheck(
        torch.ops.edgekd.fused_linear_kd.default,
        (h.requires_grad_(True), W.requires_grad_(True), b.requires_grad_(True), valid, *args, labels,
         "forward_kl", TAU, 0.5, 0.1, 0.25, 4),
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration", "test_aot_dispatch_dynamic"),
    )


def test_torch_compile_fullgraph():
    N, H, V = 8, 4, 10
    h, W, b, t, labels = make_case(N, H, V)

    def f(h, W, b, t, labels):
        return fused_linear_kd(h, W, t, bias=b, labels=labels, ce_weight=0.5, temperature=TAU, validate=False,
                               num_valid_tokens=6)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    hh = h.clone().requires_grad_(True)
    out = compiled(hh, W, b, t, labels)
    out.backward()
    h2 = h.clone().requires_grad_(True)
    ref = f(h2, W, b, t, labels)
    ref.backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(hh.grad, h2.grad)


def test_uses_the_native_kernel():
    assert _ext.has_extension()


def test_bad_inputs():
    h, W, b, t, labels = make_case(4, 3, 6)
    with pytest.raises(EdgekdValueError, match="unknown loss"):
        fused_linear_kd(h, W, t, loss="kl")
    with pytest.raises(EdgekdValueError, match="needs a token mapping"):
        fused_linear_kd(h, W, torch.randn(4, 7))
    with pytest.raises(EdgekdValueError, match="teacher logits contain NaN"):
        fused_linear_kd(h, W, torch.full((4, 6), float("nan")))
    with pytest.raises(EdgekdValueError, match="hidden contains NaN"):
        fused_linear_kd(torch.full((4, 3), float("nan")), W, t)
    with pytest.raises(EdgekdValueError, match="k larger than the vocabulary"):
        fused_linear_kd(h, W, SparseTeacher(torch.zeros(4, 7, dtype=torch.long), torch.zeros(4, 7), torch.zeros(4)))
    with pytest.raises(EdgekdValueError, match="empty input"):
        fused_linear_kd(h[:0], W, t[:0])
    with pytest.raises(EdgekdValueError, match="no valid rows"):
        fused_linear_kd(h, W, t, mask=torch.zeros(4, dtype=torch.bool))
    with pytest.raises(EdgekdValueError, match="weight must be"):
        fused_linear_kd(h, W[:, :2], t)
    with pytest.raises(EdgekdValueError, match="float32 or float64"):
        fused_linear_kd(h.bfloat16(), W.bfloat16(), t)
    with pytest.raises(EdgekdValueError, match="labels must be in"):
        fused_linear_kd(h, W, t, labels=torch.tensor([0, 1, 2, 6]), ce_weight=0.5)


@pytest.mark.parametrize("loss", LOSS_NAMES)
@pytest.mark.parametrize("max_block", [4096, 8])  # one block per row / a loop over 3 blocks
def test_triton_kernel_interpreter_matches_oracle(loss, max_block, monkeypatch):
    from edgekd.kernels import fused_linear_kd as kernel
    from edgekd.kernels.utils import interpret_mode

    monkeypatch.setattr(kernel, "MAX_BLOCK", max_block)
    if not torch.cuda.is_available():
        assert interpret_mode(), "tests/conftest.py sets TRITON_INTERPRET=1 on machines without a GPU"
    from edgekd.ops.fused_linear_kd import triton_forward

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    N, H, V = 5, 4, 21
    h, W, b, t, labels = make_case(N, H, V)
    valid = labels != -100
    kw = dict(loss=loss, temperature=TAU, beta=0.3, alpha=0.2, ce_weight=0.25)
    total, gh, gw, gb = triton_forward(h.to(dev), W.to(dev), b.to(dev), valid.to(dev), t.to(dev), labels.to(dev),
                                       loss, TAU, 0.3, 0.2, 0.25, 2)
    n = int(valid.sum())
    compare((total / n, (gh / n, gw / n, gb / n)), oracle(h, W, b, t, labels, **kw), N, V, H)


@pytest.mark.parametrize("ce_weight", [0.0, 0.25])
@pytest.mark.parametrize("tau", [1.0, 1.5])
@pytest.mark.parametrize("sparse", [False, True])
def test_temperature_one_and_ce_paths_match_oracle(ce_weight, tau, sparse):
    """The C++ kernel's special paths: forward KL with a dense teacher (CE folded in at tau = 1),
    and the sparse write-back (CE from the student's q at tau = 1, from the logits otherwise)."""
    N, H, V = 13, 7, 37
    h, W, b, t, labels = make_case(N, H, V, sparse=sparse, k=6)
    if sparse:
        t = SparseTeacher(t.topk_ids, t.topk_logprobs, t.tail_logmass, tau)
    kw = dict(loss="forward_kl", temperature=tau, ce_weight=ce_weight)
    compare(run_op(h, W, b, t, labels, chunk_size=4, **kw), oracle(h, W, b, t, labels, **kw), N, V, H)
