"""Triton GPU kernels of edgekd, shipped as ``edgekd.kernels``.

One op per module: the ``@triton.jit`` kernels and their host launchers. Registration with
``torch.library`` happens in ``edgekd/ops/<op>.py``, not here. Importing this package never
requires triton; the op modules import the kernel modules lazily.
"""
