"""The comparison rule of tests/numerics.py catches real bugs: a kernel result off by 1e-3
relative, or one value taken from a wrong index, fails it (while fp32 rounding passes it)."""
from __future__ import annotations

import pytest
import torch

from edgekd.ops import masked_attention_pool, masked_bilstm
from edgekd.ops.masked_attention_pool import masked_attention_pool_reference
from edgekd.ops.masked_bilstm import masked_bilstm_reference
from numerics import SAFETY, assert_close_f64, reference_f64, tolerance, to_f64


def _bilstm_case():
    B, T, E, H = 64, 20, 8, 24  # the case that failed with absolute tolerances on an AMD EPYC
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(B, T, E, generator=g) * 3).requires_grad_(True)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    shapes = [(4 * H, E), (4 * H, H), (4 * H,), (4 * H,)] * 2
    ws = [((torch.rand(s, generator=g) * 2 - 1) * 3 * H**-0.5).requires_grad_(True) for s in shapes]
    up = torch.randn(B, T, 2 * H, generator=g)
    return x, lengths, ws, up, T * (E + H) + B * T


def _grads(fn, x, lengths, ws, up):
    out = fn(x, lengths, ws)[0]
    return out, torch.autograd.grad((out * up).sum(), [x, *ws])


def test_rounding_passes_and_small_errors_fail():
    x, lengths, ws, up, n = _bilstm_case()
    out, grads = _grads(masked_bilstm, x, lengths, ws, up)
    ref_out, ref_grads = _grads(masked_bilstm_reference, *to_f64((x, lengths, ws, up)))
    for i, (a, r) in enumerate(zip(grads, ref_grads)):
        assert_close_f64(a, r, n=n, name=f"grad {i}")  # fp32 rounding passes
        with pytest.raises(AssertionError):  # a gradient 1e-3 relative off fails
            assert_close_f64(a * (1 + 1e-3), r, n=n, name=f"grad {i} * (1 + 1e-3)")
    wrong = out.clone()  # one output read from the neighbouring timestep (a wrong index)
    b = int(lengths.argmax())
    wrong[b, 1] = out[b, 2]
    with pytest.raises(AssertionError):
        assert_close_f64(wrong, ref_out, n=n, name="output with a wrong index")


def test_attention_pool_errors_fail():
    g = torch.Generator().manual_seed(0)
    states, W, v = torch.randn(3, 9, 16, generator=g), torch.randn(12, 16, generator=g) / 4, torch.randn(12, generator=g)
    mask = torch.ones(3, 9, dtype=torch.bool)
    out = masked_attention_pool(states, mask, W, v)
    ref = reference_f64(masked_attention_pool_reference, states, mask, W, v)
    assert_close_f64(out[2], ref[2], n=16 + 12 + 27, name="attention")
    with pytest.raises(AssertionError):
        assert_close_f64(out[2] * (1 + 1e-3), ref[2], n=16 + 12 + 27, name="attention * (1 + 1e-3)")


def test_tolerance_is_tight_enough():
    assert SAFETY >= 4  # margin over the worst rounding seen (ratio ~1.1, see numerics.py)
    atol, rtol = tolerance(torch.float32, n=1920, scale=1.0)
    assert atol + rtol < 1e-3  # a 1e-3 relative error on the largest value always fails
    with pytest.raises(AssertionError, match="too loose"):
        tolerance(torch.float32, n=10**6)
