"""Small helpers shared by the Triton launchers."""
from __future__ import annotations

import os


def next_power_of_2(n: int) -> int:
    n = int(n)
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def interpret_mode() -> bool:
    """True when Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


MAX_FUSED_SIZE = 65536


def calculate_settings(n: int) -> tuple[int, int]:
    """Block size and warps of a kernel that covers a row of ``n`` elements (Liger-Kernel's helper):
    the next power of two of ``n`` (at most :data:`MAX_FUSED_SIZE`), 4 to 32 warps by size."""
    block = next_power_of_2(n)
    if block > MAX_FUSED_SIZE:
        raise ValueError(f"calculate_settings: n = {n} needs a block larger than {MAX_FUSED_SIZE}")
    num_warps = 4
    if block >= 32768:
        num_warps = 32
    elif block >= 8192:
        num_warps = 16
    elif block >= 2048:
        num_warps = 8
    return block, num_warps
