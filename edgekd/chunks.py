"""Chunked on-disk caches: one safetensors file per chunk, written atomically.

Used by the IG annotation cache (``edgekd.teacher.annotate``) and the sparse LLM teacher cache
(``edgekd.llm.cache``): a chunk file either exists complete or not at all (written to a temporary
name, then renamed), so an interrupted run resumes at the first missing chunk. numpy + safetensors
only (ground floor; no pickle).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict

import numpy as np

from edgekd.errors import EdgekdValueError

__all__ = ["chunk_path", "save_chunk_atomic", "load_chunk"]


def chunk_path(d: Path, k: int) -> Path:
    """The file of chunk ``k`` in cache folder ``d``."""
    return Path(d) / f"chunk_{k:05d}.safetensors"


def save_chunk_atomic(path: Path, arrays: Dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` as safetensors, atomically (temporary file + rename)."""
    from safetensors.numpy import save_file

    path = Path(path)
    tmp = path.with_suffix(".tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
    os.replace(tmp, path)


def load_chunk(path: Path, who: str = "cache") -> Dict[str, np.ndarray]:
    """Read a chunk file; a corrupt file raises :class:`EdgekdValueError` naming it."""
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as exc:
        raise EdgekdValueError(f"{who}: {path} is corrupt ({exc}); delete it to recompute") from None
