"""What every op module of :mod:`edgekd.ops` shares: the one policy for CUDA tensors without Triton,
the check for tracing, and the conversion of a kernel's ``TORCH_CHECK`` into an EdgekdValueError.

Each op module (``edgekd/ops/<op>.py``) has the same sections in the same order: schema, fake
kernel, CPU fallback (only when ``edgekd._C`` is missing), CUDA (Triton), autograd, public
function, reference, input checks (see STYLE.md).
"""
from __future__ import annotations

import importlib
from types import ModuleType

import torch

from edgekd.errors import EdgekdError, EdgekdValueError

__all__ = ["MissingTritonError", "triton_kernels", "tracing", "kernel_error"]


class MissingTritonError(EdgekdError, ImportError):
    """A CUDA tensor reached an edgekd op but Triton (its CUDA kernels) is not importable."""


def triton_kernels(module: str, op: str) -> ModuleType:
    """The Triton launchers ``edgekd.kernels.<module>`` for the CUDA kernel of ``op``.

    The one policy for "CUDA tensor but Triton not importable" of every op: raise
    :class:`MissingTritonError` (an :class:`~edgekd.errors.EdgekdError` and an ``ImportError``)
    naming the op and the fix, rather than silently running a slow reference on the GPU.
    """
    try:
        return importlib.import_module(f"edgekd.kernels.{module}")
    except ImportError as exc:
        raise MissingTritonError(
            f"edgekd op '{op}' got CUDA tensors, but its CUDA kernels need Triton, which is not "
            f"importable ({exc}); install it with `pip install edgekd[gpu]`, or move the inputs to the CPU"
        ) from exc


def tracing(t: torch.Tensor | None = None) -> bool:
    """True under torch.compile / export / jit tracing, where reading tensor values is not possible."""
    if torch.compiler.is_compiling():
        return True
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    if is_exporting is not None and is_exporting():
        return True
    if torch.jit.is_tracing():
        return True
    if t is None:
        return False
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)


def kernel_error(exc: RuntimeError) -> EdgekdValueError:
    """An :class:`EdgekdValueError` with the first line of a kernel's ``TORCH_CHECK`` message."""
    return EdgekdValueError(str(exc).split("\n")[0])
