"""Teacher annotation: logits and Integrated-Gradients word attributions, cached on disk.

For each text the teacher gives its logits and, with captum's ``LayerIntegratedGradients`` on
its word-embedding layer, one attribution per sub-word (summed over the hidden dimension, for
the teacher's predicted class by default). Sub-word scores are merged into the student's words
by their mean (DiXtill): each sub-word goes to the student word whose character span holds it
(offsets from both tokenizers), so a text gets exactly as many scores as the student tokenizer
gives it words (after the same truncation).

The cache is a folder per (data, teacher weights, student tokenizer, settings) sha256 key, with
one safetensors file per chunk of texts written atomically; an interrupted annotation resumes
from the first missing chunk. Under ``torchrun`` the ranks share the missing chunks out and write
them to the same folder (:mod:`edgekd.distributed`); the files are those of a single process.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from edgekd import distributed as dist
from edgekd.chunks import chunk_path, load_chunk, save_chunk_atomic
from edgekd.data.datasets import TextDataset
from edgekd.data.tokenizer import WordTokenizer
from edgekd.errors import EdgekdValueError
from edgekd.teacher.config import IGConfig  # defined once there, with the other teacher settings
from edgekd.teacher.model import Teacher

_FORMAT_VERSION = 1
_COST_ONLY = ("batch_size", "max_tokens", "internal_batch_size", "freeze_parameters")


@dataclass
class Annotations:
    """Teacher outputs for a dataset, row-aligned with it.

    Attributes:
        logits: [N, C] float32 teacher logits.
        attributions: per text, float32 word attributions (length = the student's word count);
            an all-zero array where ``has_attr`` is False.
        has_attr: [N] bool, whether the text was attributed.
        key: the cache key.
    """

    logits: np.ndarray
    attributions: list[np.ndarray]
    has_attr: np.ndarray
    key: str = ""
    delta: np.ndarray | None = None  # [N] captum's convergence delta (0 where not attributed)

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    def select(self, indices: Sequence[int]) -> "Annotations":
        idx = [int(i) for i in indices]
        return Annotations(self.logits[idx], [self.attributions[i] for i in idx], self.has_attr[idx], self.key,
                           None if self.delta is None else self.delta[idx])


# --------------------------------------------------------------------------------------------
# sub-word -> word merging


def merge_subwords_to_words(
    subword_scores: Sequence[float],
    subword_offsets: Sequence[tuple[int, int]],
    word_offsets: Sequence[tuple[int, int]],
    special: Sequence[bool] | None = None,
) -> np.ndarray:
    """Mean sub-word score per word.

    A sub-word with character span ``[a, b)`` belongs to the word whose span holds ``a`` (else the
    first word it overlaps). Special and empty-span sub-words are ignored; a word that gets no
    sub-word (e.g. beyond the teacher's truncation) scores 0.
    """
    n_words = len(word_offsets)
    sums = np.zeros(n_words, dtype=np.float64)
    counts = np.zeros(n_words, dtype=np.int64)
    starts = np.array([s for s, _ in word_offsets], dtype=np.int64)
    ends = np.array([e for _, e in word_offsets], dtype=np.int64)
    for j, (a, b) in enumerate(subword_offsets):
        if special is not None and special[j]:
            continue
        a, b = int(a), int(b)
        if b <= a:
            continue
        w = -1
        k = int(np.searchsorted(starts, a, side="right")) - 1
        if k >= 0 and starts[k] <= a < ends[k]:
            w = k
        else:
            hits = np.nonzero((starts < b) & (ends > a))[0]
            if hits.size:
                w = int(hits[0])
        if w >= 0:
            sums[w] += float(subword_scores[j])
            counts[w] += 1
    out = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
    return out.astype(np.float32)


# --------------------------------------------------------------------------------------------
# IG


class _Attributor:
    def __init__(self, teacher: Teacher, cfg: IGConfig):
        from captum.attr import IntegratedGradients, LayerIntegratedGradients

        self.teacher = teacher
        self.cfg = cfg
        model = teacher.model
        self.emb = model.get_input_embeddings()

        def fwd_ids(input_ids, attention_mask):
            return model(input_ids=input_ids, attention_mask=attention_mask).logits

        def fwd_embeds(inputs_embeds, attention_mask):
            return model(inputs_embeds=inputs_embeds, attention_mask=attention_mask).logits

        self.lig = LayerIntegratedGradients(fwd_ids, self.emb)
        self.ig = IntegratedGradients(fwd_embeds)
        tok = teacher.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.mask_id = tok.mask_token_id
        if cfg.baseline == "mask" and self.mask_id is None:
            raise EdgekdValueError("IGConfig.baseline='mask' but the teacher tokenizer has no [MASK] token")

    def __call__(self, input_ids, attention_mask, special, target) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.cfg
        if cfg.baseline == "zeros":
            with torch.no_grad():
                embeds = self.emb(input_ids)
            attr, delta = self.ig.attribute(
                embeds,
                baselines=torch.zeros_like(embeds),
                additional_forward_args=(attention_mask,),
                target=target,
                n_steps=cfg.steps,
                method=cfg.method,
                internal_batch_size=cfg.internal_batch_size,
                return_convergence_delta=True,
            )
        else:
            fill = self.pad_id if cfg.baseline == "pad" else self.mask_id
            base = torch.where(special.bool(), input_ids, torch.full_like(input_ids, fill))
            attr, delta = self.lig.attribute(
                input_ids,
                baselines=base,
                additional_forward_args=(attention_mask,),
                target=target,
                n_steps=cfg.steps,
                method=cfg.method,
                internal_batch_size=cfg.internal_batch_size,
                return_convergence_delta=True,
            )
        scores = attr.sum(-1).detach().float().cpu().numpy()
        return scores, delta.detach().float().cpu().numpy()


# --------------------------------------------------------------------------------------------
# cache


def annotation_key(
    dataset: TextDataset,
    teacher: Teacher,
    word_tokenizer: WordTokenizer,
    ig: IGConfig | None,
    attribute_indices: Sequence[int] | None,
) -> str:
    h = hashlib.sha256()
    h.update(f"edgekd-annotations-v{_FORMAT_VERSION}".encode())
    h.update(dataset.fingerprint().encode())
    h.update(teacher.fingerprint().encode())
    h.update(str(teacher.max_length).encode())
    h.update(word_tokenizer.to_json().encode())
    # the settings that decide the attributions; batching and weight-gradient switches only change the cost
    what = {k: v for k, v in asdict(ig).items() if k not in _COST_ONLY} if ig is not None else None
    h.update(json.dumps(what, sort_keys=True).encode())
    if attribute_indices is not None:
        h.update(np.asarray(sorted(set(int(i) for i in attribute_indices)), dtype=np.int64).tobytes())
    return h.hexdigest()


def _save_chunk(path: Path, logits, attrs: list[np.ndarray], has_attr, delta) -> None:
    lengths = np.array([a.size for a in attrs], dtype=np.int64)
    flat = np.concatenate(attrs).astype(np.float32) if attrs else np.zeros(0, np.float32)
    save_chunk_atomic(
        path,
        {
            "logits": np.asarray(logits, dtype=np.float32),
            "attr_flat": flat,
            "lengths": lengths,
            "has_attr": np.asarray(has_attr, dtype=np.uint8),
            "delta": np.asarray(delta, dtype=np.float32),
        },
    )


def _load_chunk(path: Path) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, np.ndarray]:
    d = load_chunk(path, "annotation cache")
    lengths = d["lengths"]
    splits = np.cumsum(lengths)[:-1]
    attrs = [a.astype(np.float32) for a in np.split(d["attr_flat"], splits)] if lengths.size else []
    return d["logits"], attrs, d["has_attr"].astype(bool), d["delta"]


def annotate(
    teacher: Teacher,
    dataset: TextDataset,
    word_tokenizer: WordTokenizer,
    *,
    cache_dir: str | os.PathLike | None = None,
    ig: IGConfig | None = None,
    attribute_indices: Sequence[int] | None = None,
    chunk_size: int = 256,
    logits_batch_size: int = 64,
    max_chunks: int | None = None,
    progress: bool = True,
) -> Annotations:
    """Teacher logits for every text and IG word attributions (``ig`` given) for every text or
    for the rows in ``attribute_indices``.

    Args:
        cache_dir: root of the on-disk cache (None: no cache). Results go to
            ``cache_dir/<key>/``; finished chunks are reused and a run resumes at the first
            missing chunk. Under ``torchrun`` the missing chunks are shared out over the ranks
            (:func:`edgekd.distributed.shard`), each rank writes its own, and every rank returns
            the whole result; the folder must be one all ranks see.
        chunk_size: texts per chunk file.
        max_chunks: compute at most this many new chunks (per rank), then stop (the returned annotations
            are then incomplete and :class:`EdgekdValueError` is raised); used to bound a run's
            time, and by tests to simulate an interruption.
    """
    if ig is not None:
        ig.validate()
    if chunk_size < 1:
        raise EdgekdValueError(f"annotate: chunk_size must be >= 1, got {chunk_size}")
    if teacher.num_labels != dataset.num_classes:
        raise EdgekdValueError(
            f"annotate: the teacher has {teacher.num_labels} labels but the dataset {dataset.num_classes}"
        )
    n = len(dataset)
    if attribute_indices is not None:
        bad = [i for i in attribute_indices if not 0 <= int(i) < n]
        if bad:
            raise EdgekdValueError(f"annotate: attribute_indices out of range 0..{n - 1}: {bad[:5]}")
        wanted = np.zeros(n, dtype=bool)
        wanted[np.asarray(list(attribute_indices), dtype=np.int64)] = True
    else:
        wanted = np.full(n, ig is not None, dtype=bool)
    if ig is None:
        wanted[:] = False
    key = annotation_key(dataset, teacher, word_tokenizer, ig, attribute_indices)
    d: Path | None = None
    # under torchrun the missing chunks are dealt out over the ranks (edgekd.distributed.shard) and
    # meet in the shared cache folder; without a cache folder every rank computes everything
    sharded = cache_dir is not None and dist.dist_context().is_distributed
    if cache_dir is not None:
        d = Path(cache_dir) / key
        d.mkdir(parents=True, exist_ok=True)
        if dist.is_main():
            meta = {
                "version": _FORMAT_VERSION,
                "n": n,
                "chunk_size": chunk_size,
                "ig": asdict(ig) if ig is not None else None,
                "teacher": teacher.path,
                "dataset": dataset.source,
                "attributed": int(wanted.sum()),
            }
            mp = d / "meta.json"
            if mp.exists():
                old = json.loads(mp.read_text())
                if old.get("chunk_size") != chunk_size:
                    # chunk boundaries differ: the old chunks cannot be reused
                    for f in d.glob("chunk_*.safetensors"):
                        f.unlink()
            tmp = mp.with_suffix(".tmp")
            tmp.write_text(json.dumps(meta, indent=2))
            os.replace(tmp, mp)
        dist.barrier()  # meta written, stale chunks gone: every rank now sees the same folder
    n_chunks = (n + chunk_size - 1) // chunk_size

    from tqdm.auto import tqdm

    logits_all = np.zeros((n, teacher.num_labels), dtype=np.float32)
    attrs_all: list[np.ndarray] = [np.zeros(0, np.float32)] * n
    has_all = np.zeros(n, dtype=bool)
    delta_all = np.zeros(n, dtype=np.float32)

    def take(k: int, lg, at, ha, dl) -> None:
        lo = k * chunk_size
        hi = lo + lg.shape[0]
        logits_all[lo:hi] = lg
        attrs_all[lo:hi] = at
        has_all[lo:hi] = ha
        delta_all[lo:hi] = dl

    todo = []
    for k in range(n_chunks):
        p = chunk_path(d, k) if d is not None else None
        if p is not None and p.exists():
            take(k, *_load_chunk(p))
        else:
            todo.append(k)
    if sharded:
        dist.barrier()  # every rank has listed the missing chunks before any rank writes one
    mine = dist.shard(todo) if sharded else todo
    work = int(sum(min(chunk_size, n - k * chunk_size) for k in mine))
    need_ig = ig is not None and any(wanted[k * chunk_size : (k + 1) * chunk_size].any() for k in mine)
    attributor = _Attributor(teacher, ig) if need_ig else None
    bar = tqdm(total=work, desc="teacher annotate" + (f" (IG {ig.steps} steps)" if attributor else " (logits)"),
               disable=not dist.main_progress(progress) or not mine, unit="text")
    done: set[int] = set()
    with _no_weight_grads(teacher.model, attributor is not None and ig.freeze_parameters):
        for k in mine:
            if max_chunks is not None and len(done) >= max_chunks:
                break
            lo, hi = k * chunk_size, min(n, (k + 1) * chunk_size)
            lg, at, ha, dl = _annotate_chunk(
                teacher, dataset, word_tokenizer, range(lo, hi), wanted, attributor, ig, logits_batch_size, bar
            )
            if d is not None:
                _save_chunk(chunk_path(d, k), lg, at, ha, dl)
            take(k, lg, at, ha, dl)
            done.add(k)
    bar.close()
    if sharded:
        dist.barrier()  # the other ranks' chunks are on disk: assemble them
        for k in todo:
            if k not in done and chunk_path(d, k).exists():
                take(k, *_load_chunk(chunk_path(d, k)))
                done.add(k)
    left = len(todo) - len(done)
    if left:
        raise EdgekdValueError(
            f"annotate: stopped after {len(done)} new chunk(s) (max_chunks={max_chunks}"
            f"{' per rank' if sharded else ''}); {left} chunk(s) left, run again to resume"
        )
    return Annotations(logits_all, list(attrs_all), has_all, key, delta_all)


class _no_weight_grads:
    """Turn ``requires_grad`` off on every parameter of ``model`` (when ``on``), restore it after."""

    def __init__(self, model, on: bool):
        self.params = [p for p in model.parameters() if p.requires_grad] if on else []

    def __enter__(self):
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc):
        for p in self.params:
            p.requires_grad_(True)


def ig_batches(lengths: Sequence[int], steps: int, batch_size: int, max_tokens: int | None) -> list[list[int]]:
    """Positions of ``lengths`` grouped into captum calls: sorted by length (stable), each call at
    most ``batch_size`` texts and (``max_tokens`` given) at most ``max_tokens`` interpolated
    positions, ``texts x steps x longest``; a text longer than the budget goes alone."""
    order = sorted(range(len(lengths)), key=lambda j: lengths[j])
    out: list[list[int]] = []
    cur: list[int] = []
    for j in order:
        longest = max(lengths[j], max((lengths[i] for i in cur), default=0))
        if cur and (len(cur) >= batch_size or (max_tokens is not None and (len(cur) + 1) * steps * longest > max_tokens)):
            out.append(cur)
            cur = []
        cur.append(j)
    if cur:
        out.append(cur)
    return out


def _annotate_chunk(teacher, dataset, word_tokenizer, rows, wanted, attributor, ig, logits_batch_size, bar):
    rows = list(rows)
    texts = [dataset.texts[i] for i in rows]
    logits = teacher.logits(texts, batch_size=logits_batch_size)
    words = [word_tokenizer.encode_with_offsets(t) for t in texts]
    attrs = [np.zeros(len(w[0]), np.float32) for w in words]
    has = np.zeros(len(rows), dtype=bool)
    delta = np.zeros(len(rows), dtype=np.float32)
    local = [j for j, i in enumerate(rows) if wanted[i]]
    if attributor is not None and local:
        bar.update(len(rows) - len(local))
        # length buckets: texts sorted by sub-word count, as many per captum call as the budget holds
        n_sub = teacher.tokenizer([texts[j] for j in local], truncation=True, max_length=teacher.max_length,
                                  return_length=True)["length"]
        for pos in ig_batches(n_sub, ig.steps, ig.batch_size, ig.max_tokens):
            js = [local[p] for p in pos]
            enc = teacher.encode([texts[j] for j in js], offsets=True)
            dev = teacher.device
            ids = enc["input_ids"].to(dev)
            am = enc["attention_mask"].to(dev)
            special = (enc["special_tokens_mask"].bool() | (enc["attention_mask"] == 0)).to(dev)
            if ig.target == "pred":
                target = torch.as_tensor(logits[js].argmax(-1), dtype=torch.long)
            else:
                target = torch.as_tensor([dataset.labels[rows[j]] for j in js], dtype=torch.long)
            scores, dl = attributor(ids, am, special, target.to(dev))
            offs = enc["offset_mapping"].tolist()
            sp = special.cpu().tolist()
            for r, j in enumerate(js):
                attrs[j] = merge_subwords_to_words(scores[r], offs[r], words[j][2], sp[r])
                has[j] = True
                delta[j] = dl[r]
            bar.update(len(js))
    else:
        bar.update(len(rows))
    return logits, attrs, has, delta
