"""What CPU is this? Architecture and the SIMD features that decide which bundle variant runs best."""
from __future__ import annotations

import pathlib
import platform

from edgekd.errors import EdgekdValueError

#: targets a bundle can carry variants for
KNOWN_TARGETS = ("x86_64", "arm64")
_ARCH_ALIASES = {
    "x86_64": "x86_64", "amd64": "x86_64", "x64": "x86_64",
    "aarch64": "arm64", "arm64": "arm64", "armv8": "arm64", "armv8l": "arm64",
}


def normalize_target(name: str) -> str:
    """Map an architecture name (``platform.machine()`` spelling or ours) to a bundle target."""
    if not isinstance(name, str):
        raise EdgekdValueError(f"target: expected a string such as 'x86_64' or 'arm64', got {type(name).__name__}")
    key = name.strip().lower()
    if key not in _ARCH_ALIASES:
        raise EdgekdValueError(f"target: unknown target {name!r}; known targets: {', '.join(KNOWN_TARGETS)}")
    return _ARCH_ALIASES[key]


def host_target() -> str:
    """The bundle target of the machine we run on (from ``platform.machine()``)."""
    return normalize_target(platform.machine())


def cpu_features(cpuinfo: str | pathlib.Path = "/proc/cpuinfo") -> frozenset[str]:
    """CPU feature flags from ``/proc/cpuinfo`` (x86 ``flags``, ARM ``Features``); empty if unreadable."""
    try:
        text = pathlib.Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    feats: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            feats.update(value.split())
    return frozenset(feats)


def has_int8_dot_product(target: str, features: frozenset[str]) -> bool:
    """True when the CPU has int8 dot-product instructions (x86 VNNI, ARM ``asimddp``): then u8s8
    integer GEMMs cannot saturate and full-range int8 weights are safe and fast."""
    if target == "x86_64":
        return bool({"avx512_vnni", "avx_vnni", "avx512vnni"} & features)
    if target == "arm64":
        return "asimddp" in features
    return False
