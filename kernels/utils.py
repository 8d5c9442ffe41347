"""Small helpers shared by the Triton launchers: the one launch-settings rule, interpreter mode."""
from __future__ import annotations

import os

#: the largest block one program handles along a dimension (Liger-Kernel's MAX_FUSED_SIZE)
MAX_FUSED_SIZE = 65536
#: above this many elements per program, launch 8 warps instead of 4
_ELEMENTS_PER_4_WARPS = 4096


def next_power_of_2(n: int) -> int:
    n = int(n)
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def calculate_settings(n: int, *, min_block: int = 1, max_block: int = MAX_FUSED_SIZE, tile: int = 1) -> tuple[int, int]:
    """``(BLOCK, num_warps)`` of a program that covers ``n`` elements along one dimension.

    The one launch-settings rule of every launcher in ``kernels/`` (Liger-Kernel's
    ``calculate_settings``): ``BLOCK`` is the next power of two of ``n`` clamped to
    ``[min_block, max_block]``; the warps follow the number of elements one program holds,
    ``BLOCK * tile`` (``tile``: the size of the program's other block dimensions): 4 warps up to
    4096 elements, 8 above. These kernels are recurrences and small tiles, where more warps only
    add synchronisation (Liger-Kernel goes to 16 and 32 warps for 8k- and 32k-element rows).
    """
    block = max(next_power_of_2(n), int(min_block))
    if block > min(int(max_block), MAX_FUSED_SIZE):
        if max_block >= MAX_FUSED_SIZE:  # the caller needs one program to cover all n elements
            raise ValueError(f"calculate_settings: n = {n} needs a block over {MAX_FUSED_SIZE} elements")
        block = int(max_block)  # the caller tiles the dimension in blocks of max_block
    num_warps = 4 if block * int(tile) <= _ELEMENTS_PER_4_WARPS else 8
    return block, num_warps


def interpret_mode() -> bool:
    """True when Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True
