"""The one comparison rule of every numerical test of a native kernel (C++, Triton, the fused op).

A kernel's result is compared with the op's *float64 reference*: the plain-PyTorch reference run
in float64 on the same inputs cast to float64 (:func:`to_f64`). The tolerance follows the usual
floating-point error model of a computation whose longest chain of accumulated roundings has
length ``n`` (a dot product of length n, a recurrence over T steps of length-(E+H) dots, a sum
over B*T rows)::

    unit = C * eps(dtype) * sqrt(n)
    |actual - reference| <= unit * (scale + |reference|)       elementwise,
    scale = max |reference| over the tensor (or the caller's ``scale``)

so the check is relative to the magnitude of the values, never an absolute 1e-5. ``C`` is a safety
factor calibrated on the suite's worst case (``EDGEKD_NUMERICS_LOG=path`` writes, per comparison,
the worst ratio ``|a - r| / (eps * sqrt(n) * (scale + |r|))``; it stays below C/4 under
``ATEN_CPU_CAPABILITY=default``, ``avx2`` and ``avx512``). fp32 rounding in any order, on any
x86-64 CPU, stays far inside; a real bug (a result off by 1e-3 relative, a wrong index) does
not: :func:`tolerance` asserts ``unit < 2.5e-4`` for float32, so a 1e-3 relative error on the
largest element always fails (see tests/ops/test_numerics.py).

Exact things (indices, masks, zeros at padding) are compared exactly, not through this module.
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterable, Optional, Sequence

import torch

#: the safety factor C (see the module docstring)
SAFETY = 16.0
_MAX_UNIT_FP32 = 2.5e-4  # 1e-3 relative error must fail: 2 * unit < 1e-3


def to_f64(obj: Any) -> Any:
    """``obj`` with every floating tensor cast to float64 (detached; ``requires_grad`` kept),
    recursing into lists, tuples and dicts; other values are returned as they are."""
    if isinstance(obj, torch.Tensor):
        if not obj.dtype.is_floating_point:
            return obj
        out = obj.detach().to(torch.float64)
        return out.requires_grad_(True) if obj.requires_grad else out
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_f64(o) for o in obj)
    if isinstance(obj, dict):
        return {k: to_f64(v) for k, v in obj.items()}
    return obj


def reference_f64(fn, *args, **kwargs):
    """Run the reference ``fn`` in float64: every floating tensor argument cast by :func:`to_f64`."""
    return fn(*to_f64(args), **to_f64(kwargs))


def tolerance(dtype: torch.dtype, n: int = 1, scale: float = 1.0) -> tuple[float, float]:
    """``(atol, rtol)`` of a result of ``dtype`` with accumulation length ``n`` and magnitude ``scale``."""
    unit = SAFETY * torch.finfo(dtype).eps * math.sqrt(max(int(n), 1))
    if dtype == torch.float32:
        assert unit < _MAX_UNIT_FP32, (
            f"n={n} makes the float32 tolerance {unit:.1e}: too loose to catch a 1e-3 relative error"
        )
    return unit * scale, unit


def _log(name: str, actual: torch.Tensor, expected: torch.Tensor, n: int, scale: float) -> None:
    path = os.environ.get("EDGEKD_NUMERICS_LOG")
    if not path:
        return
    eps = torch.finfo(actual.dtype).eps * math.sqrt(max(n, 1))
    err = (actual.double() - expected).abs()
    ratio = float((err / (eps * (scale + expected.abs()) + 1e-300)).max()) if err.numel() else 0.0
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{ratio:.3f}\t{test}\t{name}\t{actual.dtype}\tn={n}\n")


def assert_close_f64(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    n: int = 1,
    scale: Optional[float] = None,
    name: str = "",
) -> None:
    """Assert that a kernel's ``actual`` matches the float64 reference ``expected`` (see module doc).

    ``actual`` keeps its own dtype (float32 or float64: the tolerance is that dtype's); ``expected``
    must be float64 unless ``actual`` is (then it is the same computation in float64 anyway).
    ``scale`` defaults to ``max |expected|``; pass a larger one for a tensor whose entries are
    cancellations of much larger terms (e.g. the magnitude of the inputs it is a sum of).
    """
    assert isinstance(actual, torch.Tensor) and isinstance(expected, torch.Tensor), (type(actual), type(expected))
    assert actual.dtype.is_floating_point, f"{name}: {actual.dtype} is not a float tensor; compare exactly"
    expected = expected.detach().to("cpu", torch.float64)
    actual = actual.detach().to("cpu")
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if scale is None:
        scale = float(expected.abs().max()) if expected.numel() else 0.0
    _log(name, actual, expected, n, scale)
    atol, rtol = tolerance(actual.dtype, n, scale)
    torch.testing.assert_close(
        actual.double(), expected, atol=atol, rtol=rtol, equal_nan=False,
        msg=lambda m: f"{name} ({actual.dtype}, n={n}, scale={scale:.3g}, atol={atol:.2e}, rtol={rtol:.2e}): {m}",
    )


def assert_all_close_f64(
    actuals: Iterable[torch.Tensor],
    expecteds: Iterable[torch.Tensor],
    *,
    n: int = 1,
    names: Optional[Sequence[str]] = None,
    scales: Optional[Sequence[Optional[float]]] = None,
) -> None:
    """:func:`assert_close_f64` over pairs (``names`` label each pair in the failure message;
    ``scales``, when given, the ``scale`` of each pair, None for the default)."""
    actuals, expecteds = list(actuals), list(expecteds)
    assert len(actuals) == len(expecteds), (len(actuals), len(expecteds))
    names = list(names) if names is not None else [f"#{i}" for i in range(len(actuals))]
    scales = list(scales) if scales is not None else [None] * len(actuals)
    for name, a, e, scale in zip(names, actuals, expecteds, scales):
        assert_close_f64(a, e, n=n, scale=scale, name=name)


def double_copy(module: torch.nn.Module, **attributes: Any) -> torch.nn.Module:
    """A float64 deep copy of ``module`` (its float64 reference), with ``attributes`` set on it
    (e.g. ``backend="reference"`` for a student)."""
    import copy

    ref = copy.deepcopy(module).double()
    for name, value in attributes.items():
        setattr(ref, name, value)
    return ref
