"""Sparse teacher cache: the teacher's top-k log-probabilities and tail mass per token, on disk.

Run the teacher once over a tokenized corpus and keep, for every valid position, the k most
probable token ids, their log-probabilities (at the cache's temperature) and the log of the
remaining mass (the tail bucket of :class:`edgekd.llm.SparseTeacher`). Training then reads the
cache instead of running the teacher every step.

Layout: ``cache_dir/<key>/meta.json`` and ``chunk_00000.safetensors``, ... (one chunk per
``batches_per_chunk`` batches, written atomically by :mod:`edgekd.chunks`, so an interrupted run
resumes at the first missing chunk; under ``torchrun`` the ranks share the missing chunks out and
write them to the same folder, see :mod:`edgekd.distributed`). ``key`` is the sha256 of the data
(every batch's input ids and
attention mask), the teacher's id/fingerprint given by the caller, and the settings (k,
temperature, format). Per batch a chunk holds only the valid positions (attention mask 1), in
row-major order: ``b<i>.ids`` (n, k) (uint16 when V <= 65,536, else int32), ``b<i>.logprobs``
(n, k) float32 and ``b<i>.tail`` (n,) float32. Bytes per valid token: k * (2 or 4) + 4 k + 4
(k = 64, V = 49,152: 388 bytes against 196,608 for dense float32 logits).

The teacher is any callable ``teacher_logits_fn(input_ids, attention_mask) -> logits (B, T, V)``,
so the cache does not depend on how the model is loaded.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, List, Mapping, Optional

import numpy as np
import torch
from torch import Tensor

from edgekd import distributed as dist
from edgekd.chunks import chunk_path, load_chunk, save_chunk_atomic
from edgekd.errors import EdgekdValueError
from edgekd.llm.losses import SparseTeacher

__all__ = ["CacheSettings", "SparseTeacherCache", "build_sparse_cache", "sparsify", "cache_key"]

_FORMAT_VERSION = 1


@dataclass
class CacheSettings:
    """``topk`` tokens kept per position (32-128 is the useful range), ``temperature`` of the
    stored log-probs, ``batches_per_chunk`` batches per chunk file."""

    topk: int = 64
    temperature: float = 1.0
    batches_per_chunk: int = 8

    def validate(self) -> None:
        if int(self.topk) < 1:
            raise EdgekdValueError(f"sparse cache: topk must be >= 1, got {self.topk}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise EdgekdValueError(f"sparse cache: temperature must be > 0, got {self.temperature}")
        if int(self.batches_per_chunk) < 1:
            raise EdgekdValueError(f"sparse cache: batches_per_chunk must be >= 1, got {self.batches_per_chunk}")


def sparsify(logits: Tensor, topk: int, temperature: float = 1.0) -> SparseTeacher:
    """Top-k log-probs and tail log-mass of dense ``logits`` (..., V) at ``temperature``."""
    V = logits.shape[-1]
    if topk > V:
        raise EdgekdValueError(f"sparse cache: topk = {topk} is larger than the vocabulary V = {V}")
    if bool(torch.isnan(logits).any()):
        raise EdgekdValueError("sparse cache: teacher logits contain NaN")
    lp = torch.log_softmax(logits.double() / temperature, dim=-1)
    vals, ids = lp.topk(topk, dim=-1)
    if topk == V:
        tail = torch.full(vals.shape[:-1], float("-inf"), dtype=torch.float64, device=vals.device)
    else:
        # log(1 - sum exp(vals)) computed as logsumexp over the other entries: exact for a tiny tail
        rest = lp.scatter(-1, ids, float("-inf"))
        tail = torch.logsumexp(rest, dim=-1)
    return SparseTeacher(ids, vals.float(), tail.float(), float(temperature))


def _batch_arrays(batch: Mapping) -> tuple[np.ndarray, np.ndarray]:
    try:
        ids, am = batch["input_ids"], batch["attention_mask"]
    except (KeyError, TypeError):
        raise EdgekdValueError("sparse cache: every batch must be a mapping with input_ids and attention_mask") from None
    ids = np.asarray(ids.cpu() if isinstance(ids, Tensor) else ids, dtype=np.int64)
    am = np.asarray(am.cpu() if isinstance(am, Tensor) else am, dtype=np.int64)
    if ids.ndim != 2 or ids.shape != am.shape or ids.size == 0:
        raise EdgekdValueError(
            f"sparse cache: input_ids and attention_mask must be (B, T) of the same non-empty shape, "
            f"got {ids.shape} and {am.shape}"
        )
    return ids, am


def cache_key(batches: List[tuple], teacher_id: str, settings: CacheSettings) -> str:
    """sha256 of (format, teacher id, settings, every batch's input ids and attention mask)."""
    h = hashlib.sha256()
    h.update(f"edgekd-sparse-teacher-v{_FORMAT_VERSION}".encode())
    h.update(str(teacher_id).encode())
    h.update(json.dumps({"topk": int(settings.topk), "temperature": float(settings.temperature)}).encode())
    for ids, am in batches:
        h.update(np.asarray(ids.shape, np.int64).tobytes())
        h.update(ids.tobytes())
        h.update(am.tobytes())
    return h.hexdigest()


class SparseTeacherCache:
    """A built cache: ``len(cache)`` batches; ``cache[i]`` is the :class:`SparseTeacher` of batch i
    with shape (B, T, k) (padding positions hold a uniform placeholder; mask them in the loss)."""

    def __init__(self, directory: Path, batches: List[tuple], settings: CacheSettings, vocab_size: int):
        self.directory = Path(directory)
        self.settings = settings
        self.vocab_size = int(vocab_size)
        self._shapes = [ids.shape for ids, _ in batches]
        self._masks = [am for _, am in batches]
        self._loaded: dict = {}

    def __len__(self) -> int:
        return len(self._shapes)

    @property
    def key(self) -> str:
        return self.directory.name

    @property
    def bytes_per_token(self) -> float:
        """Stored bytes per valid token (ids + log-probs + tail)."""
        k = int(self.settings.topk)
        return float(k * (2 if self.vocab_size <= 65536 else 4) + 4 * k + 4)

    def __getitem__(self, i: int) -> SparseTeacher:
        if not 0 <= i < len(self):
            raise IndexError(i)
        bpc = int(self.settings.batches_per_chunk)
        c, j = divmod(i, bpc)
        if c not in self._loaded:
            p = chunk_path(self.directory, c)
            if not p.exists():
                raise EdgekdValueError(f"sparse cache: chunk {c} is missing ({p}); run build_sparse_cache to resume")
            self._loaded = {c: load_chunk(p, "sparse cache")}
        d = self._loaded[c]
        k = int(self.settings.topk)
        B, T = self._shapes[i]
        valid = torch.from_numpy(self._masks[i].reshape(-1) != 0)
        ids = torch.arange(k, dtype=torch.int64).repeat(B * T, 1)
        lps = torch.full((B * T, k), -math.log(k + 1), dtype=torch.float32)
        tail = torch.full((B * T,), -math.log(k + 1), dtype=torch.float32)
        ids[valid] = torch.from_numpy(d[f"b{j}.ids"].astype(np.int64))
        lps[valid] = torch.from_numpy(d[f"b{j}.logprobs"])
        tail[valid] = torch.from_numpy(d[f"b{j}.tail"])
        return SparseTeacher(ids.view(B, T, k), lps.view(B, T, k), tail.view(B, T), float(self.settings.temperature))


def build_sparse_cache(
    teacher_logits_fn: Callable[[Tensor, Tensor], Tensor],
    batches: Iterable[Mapping],
    cache_dir: str | os.PathLike,
    *,
    teacher_id: str,
    settings: Optional[CacheSettings] = None,
    max_chunks: Optional[int] = None,
) -> SparseTeacherCache:
    """Run the teacher over ``batches`` (mappings with ``input_ids``, ``attention_mask`` (B, T)) and
    store its sparse distribution; finished chunks are reused, so a second call resumes.

    ``teacher_id`` identifies the teacher (e.g. its path plus a weights fingerprint): it is part of
    the key, so a different teacher never reads another's cache. ``max_chunks`` computes at most
    that many new chunks (per rank), then raises :class:`EdgekdValueError` (bounds a run; tests use
    it to simulate an interruption). Under ``torchrun`` every rank computes its share of the missing
    chunks (:func:`edgekd.distributed.shard`) and returns the whole cache; ``cache_dir`` must be a
    folder every rank sees.
    """
    settings = settings or CacheSettings()
    settings.validate()
    arrays = [_batch_arrays(b) for b in batches]
    if not arrays:
        raise EdgekdValueError("sparse cache: no batches")
    key = cache_key(arrays, teacher_id, settings)
    d = Path(cache_dir) / key
    d.mkdir(parents=True, exist_ok=True)
    bpc = int(settings.batches_per_chunk)
    n_chunks = (len(arrays) + bpc - 1) // bpc
    meta_path = d / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    vocab = meta.get("vocab_size")
    # under torchrun the missing chunks are dealt out over the ranks (edgekd.distributed.shard):
    # every rank lists them, waits for the others to have listed them, writes its own, waits again
    sharded = dist.dist_context().is_distributed
    todo = [c for c in range(n_chunks) if not chunk_path(d, c).exists()]
    if sharded:
        dist.barrier()
    mine = dist.shard(todo) if sharded else todo
    new = 0
    for c in mine:
        p = chunk_path(d, c)
        if max_chunks is not None and new >= max_chunks:
            break
        out = {}
        for j, (ids, am) in enumerate(arrays[c * bpc:(c + 1) * bpc]):
            with torch.no_grad():
                logits = teacher_logits_fn(torch.from_numpy(ids), torch.from_numpy(am))
            if logits.dim() != 3 or tuple(logits.shape[:2]) != ids.shape:
                raise EdgekdValueError(
                    f"sparse cache: teacher_logits_fn returned {tuple(logits.shape)}, expected (B, T, V) with "
                    f"(B, T) = {ids.shape}"
                )
            V = int(logits.shape[-1])
            if vocab is not None and V != vocab:
                raise EdgekdValueError(f"sparse cache: the teacher's vocabulary changed from {vocab} to {V}")
            vocab = V
            valid = torch.from_numpy(am.reshape(-1) != 0)
            st = sparsify(logits.reshape(-1, V)[valid.to(logits.device)], int(settings.topk), settings.temperature)
            id_dtype = np.uint16 if V <= 65536 else np.int32
            out[f"b{j}.ids"] = st.topk_ids.cpu().numpy().astype(id_dtype)
            out[f"b{j}.logprobs"] = st.topk_logprobs.cpu().numpy().astype(np.float32)
            out[f"b{j}.tail"] = st.tail_logmass.cpu().numpy().astype(np.float32)
        if not meta:
            # the same bytes on every rank that gets here first: written atomically, before its first chunk
            meta = {"version": _FORMAT_VERSION, "teacher_id": str(teacher_id), "settings": asdict(settings),
                    "batches": len(arrays), "vocab_size": vocab}
            tmp = meta_path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(meta, indent=2))
            os.replace(tmp, meta_path)
        save_chunk_atomic(p, out)
        new += 1
    if sharded:
        dist.barrier()  # every rank's chunks (and the meta) are on disk
        if vocab is None and meta_path.exists():
            vocab = json.loads(meta_path.read_text()).get("vocab_size")
        vocabs = dist.all_reduce_max([vocab if vocab is not None else -1, -(vocab if vocab is not None else 1 << 40)])
        if vocab is not None and (vocabs[0] != vocab or -vocabs[1] != vocab):
            raise EdgekdValueError(f"sparse cache: the ranks' teachers have different vocabularies "
                                   f"({int(-vocabs[1])} .. {int(vocabs[0])})")
    left = sum(1 for c in todo if not chunk_path(d, c).exists())
    if left:
        raise EdgekdValueError(
            f"sparse cache: stopped after {new} new chunk(s) "
            f"(max_chunks={max_chunks}{' per rank' if sharded else ''}); "
            f"{left} chunk(s) left, run again to resume"
        )
    if vocab is None:
        raise EdgekdValueError(f"sparse cache: {meta_path} is missing; delete {d} to rebuild")
    return SparseTeacherCache(d, arrays, settings, vocab)
