"""Paragraph retrieval for legal QA, torch-free (runs on the device next to an ONNX LM).

Three indexes over a fixed list of paragraphs, each with ``search(query, k)`` ->
``[(paragraph_id, score), ...]`` (best first) and ``search_batch(queries, k)``:

- :class:`BM25Index`: sparse BM25 built with the ``bm25s`` package (``pip install bm25s``,
  imported only when a BM25 index is built or loaded). Chosen over own code and ``rank-bm25``:
  bm25s precomputes the BM25 score of every (token, document) pair into a sparse matrix, so a
  query is a sum of a few sparse rows (fast), and its index is plain ``.npy`` arrays + JSON.
  Tokenisation is bm25s's regex tokenizer (lower-case, ``\\w\\w+`` tokens) with its English
  stopwords, stored in the index (so a device with another bm25s version splits queries the same
  way); no stemmer (PyStemmer is a C extension not every board has).
- :class:`DenseIndex`: cosine similarity between L2-normalised sentence embeddings (a float32
  matrix); the queries are embedded by an :class:`Embedder`, e.g. :class:`OnnxSentenceEmbedder`
  (MiniLM exported by :func:`edgekd.qa.embedder.export_sentence_embedder`), the same on the
  host and the device.
- :class:`HybridIndex`: a BM25 and a dense index over the same paragraphs, fused per query by
  weighted reciprocal rank fusion (``fusion="rrf"``: ``w / (rrf_k + rank_dense) + (1 - w) /
  (rrf_k + rank_bm25)``, Cormack et al. 2009) or a weighted sum of min-max normalised scores
  (``fusion="minmax"``); ``weight`` is the dense side's weight.

**Saving.** ``index.save(folder)`` writes ``index.json`` (kind, settings, paragraph ids, and a
``files`` table: the sha256 and size of every other file), the arrays as ``.npy`` (read back with
``allow_pickle=False``), the BM25 vocabulary and parameters as JSON (bm25s's own ``save``, which
writes JSON + ``.npy`` and no pickle), the paragraph texts as JSON and, when the dense side has an
:class:`OnnxSentenceEmbedder`, its files under ``embedder/``. :func:`load_index` verifies every
listed file (size, sha256, path inside the folder, no symlink leaving it) and validates every
array and setting before use; any problem is an :class:`~edgekd.errors.EdgekdValueError` naming
the file.

>>> idx = BM25Index.build(["p1", "p2"], ["We share data with advertisers.", "You may delete your account."])
>>> idx.search("delete account", k=1)[0][0]
'p2'
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from edgekd.errors import EdgekdValueError
from edgekd.runtime.manifest import check_relpath
from edgekd.runtime.preprocess import validate_texts

__all__ = ["Embedder", "OnnxSentenceEmbedder", "BM25Index", "DenseIndex", "HybridIndex", "RetrievalIndex",
           "build_index", "load_index", "INDEX_FORMAT", "INDEX_FILE", "EMBEDDER_FORMAT"]

INDEX_FORMAT = "edgekd-retrieval-index"
INDEX_VERSION = 1
INDEX_FILE = "index.json"
TEXTS_FILE = "paragraphs.json"
EMBEDDER_FORMAT = "edgekd-sentence-embedder"
EMBEDDER_FILE = "embedder.json"
KINDS = ("bm25", "dense", "hybrid")
FUSIONS = ("rrf", "minmax")
BM25_METHODS = ("robertson", "lucene", "atire", "bm25l", "bm25+")
_BM25_PARAM_KEYS = {"k1", "b", "delta", "method", "idf_method", "dtype", "int_dtype", "num_docs", "version",
                    "backend"}
MAX_JSON_BYTES = 1 << 30


# ------------------------------------------------------------------------------------ helpers
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _no_constants(name: str) -> Any:
    raise EdgekdValueError(f"JSON holds {name}, which is not JSON (NaN/Infinity are refused)")


def _read_json(path: Path, what: str) -> Any:
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise EdgekdValueError(f"{what}: {path} is larger than {MAX_JSON_BYTES} bytes")
        return json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constants)
    except FileNotFoundError:
        raise EdgekdValueError(f"{what}: {path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise EdgekdValueError(f"{what}: {path} is not valid JSON ({exc})") from None


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, allow_nan=False, indent=1), encoding="utf-8")


def _load_npy(path: Path, what: str) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode=None)
    except FileNotFoundError:
        raise EdgekdValueError(f"{what}: {path} is missing") from None
    except (ValueError, OSError, EOFError) as exc:  # object arrays (pickle), truncated or garbage files
        raise EdgekdValueError(f"{what}: {path} is not a plain .npy array ({str(exc)[:200]})") from None
    if not isinstance(arr, np.ndarray):
        raise EdgekdValueError(f"{what}: {path} is not a single .npy array")
    return arr


def _check_ids(ids: Any, what: str = "ids") -> list[str]:
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise EdgekdValueError(f"{what}: expected a list of paragraph ids, got {type(ids).__name__}")
    ids = list(ids)
    if not ids:
        raise EdgekdValueError(f"{what}: an index needs at least one paragraph")
    for k, i in enumerate(ids):
        if not isinstance(i, str) or not i:
            raise EdgekdValueError(f"{what}[{k}]: a paragraph id must be a non-empty string, got {i!r:.60}")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise EdgekdValueError(f"{what}: paragraph id {dup!r} occurs more than once; ids must be unique")
    return ids


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise EdgekdValueError(f"k: expected a positive integer, got {k!r}")
    return int(k)


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest entries of each row, best first (ties: lower index first)."""
    n = scores.shape[-1]
    k = min(k, n)
    # stable order: sort by (-score, index)
    order = np.argsort(-scores, axis=-1, kind="stable")
    return order[..., :k]


def _minmax(scores: np.ndarray) -> np.ndarray:
    lo = scores.min(axis=-1, keepdims=True)
    hi = scores.max(axis=-1, keepdims=True)
    span = hi - lo
    return np.where(span > 0, (scores - lo) / np.where(span > 0, span, 1), 0.0).astype(np.float32)


def _rrf(scores: np.ndarray, rrf_k: float) -> np.ndarray:
    """Reciprocal-rank scores ``1 / (rrf_k + rank)`` (rank 1 = best) of each row."""
    order = np.argsort(-scores, axis=-1, kind="stable")
    ranks = np.empty_like(order)
    rows = np.arange(scores.shape[0])[:, None]
    ranks[rows, order] = np.arange(1, scores.shape[-1] + 1)[None, :]
    return (1.0 / (rrf_k + ranks)).astype(np.float32)


# ----------------------------------------------------------------------------------- embedders
@runtime_checkable
class Embedder(Protocol):
    """Anything that turns texts into L2-normalised float32 vectors of shape ``(len(texts), dim)``."""

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class OnnxSentenceEmbedder:
    """A sentence embedder exported to ONNX (``model.onnx`` + ``tokenizer.json`` + ``embedder.json``):
    tokenize (``tokenizers``), run the encoder (``onnxruntime``), mean-pool the token vectors over
    the attention mask and L2-normalise (sentence-transformers' MiniLM recipe), all in numpy.

    ``embedder.json``: ``{"format": "edgekd-sentence-embedder", "max_length": 256, "dim": 384,
    "pooling": "mean", "normalize": true, "output": "last_hidden_state"}``. Texts are embedded in
    batches of ``batch_size``, sorted by length so little padding is computed.
    """

    FILES = ("model.onnx", "tokenizer.json", EMBEDDER_FILE)

    def __init__(self, model_dir: str | os.PathLike, *, batch_size: int = 32, threads: int | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.model_dir = Path(model_dir)
        for f in self.FILES:
            if not (self.model_dir / f).is_file():
                raise EdgekdValueError(f"embedder: {self.model_dir / f} is missing (export one with "
                                       "edgekd.qa.embedder.export_sentence_embedder)")
        cfg = _read_json(self.model_dir / EMBEDDER_FILE, "embedder")
        if not isinstance(cfg, dict) or cfg.get("format") != EMBEDDER_FORMAT:
            raise EdgekdValueError(f"embedder: {self.model_dir / EMBEDDER_FILE} is not an edgekd sentence "
                                   f"embedder config (format != {EMBEDDER_FORMAT!r})")
        self.max_length = cfg.get("max_length")
        self.dim = cfg.get("dim")
        for key, val in (("max_length", self.max_length), ("dim", self.dim)):
            if isinstance(val, bool) or not isinstance(val, int) or not 1 <= val <= 1 << 20:
                raise EdgekdValueError(f"embedder: {EMBEDDER_FILE} {key} must be a positive integer, got {val!r}")
        if cfg.get("pooling", "mean") != "mean":
            raise EdgekdValueError(f"embedder: pooling {cfg.get('pooling')!r} is not supported (only 'mean')")
        self.normalize = bool(cfg.get("normalize", True))
        self.output = str(cfg.get("output", "last_hidden_state"))
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise EdgekdValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        try:
            self.tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        except Exception as exc:  # tokenizers raises its own Exception type
            raise EdgekdValueError(f"embedder: cannot read {self.model_dir / 'tokenizer.json'}: {str(exc)[:200]}") from None
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_length)
        pad = cfg.get("pad_id", 0)
        self.pad_id = int(pad) if isinstance(pad, int) and not isinstance(pad, bool) else 0
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.model_dir / "model.onnx"), opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own exception types for a bad graph
            raise EdgekdValueError(f"embedder: cannot load {self.model_dir / 'model.onnx'}: {str(exc)[:200]}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if self.output not in outputs:
            raise EdgekdValueError(f"embedder: the model has no output {self.output!r} (it has {outputs})")

    def files(self) -> list[Path]:
        return [self.model_dir / f for f in self.FILES]

    def embed(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        texts = validate_texts(texts)
        bs = batch_size or self.batch_size
        encs = self.tokenizer.encode_batch(texts, add_special_tokens=True)
        order = sorted(range(len(texts)), key=lambda i: len(encs[i].ids))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for s in range(0, len(order), bs):
            rows = order[s:s + bs]
            T = max(1, max(len(encs[i].ids) for i in rows))
            ids = np.full((len(rows), T), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(rows), T), dtype=np.int64)
            for r, i in enumerate(rows):
                n = len(encs[i].ids)
                ids[r, :n] = encs[i].ids
                mask[r, :n] = 1
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self.input_names:
                feeds["token_type_ids"] = np.zeros_like(ids)
            hidden = self.session.run([self.output], {k: feeds[k] for k in self.input_names})[0]
            if hidden.ndim != 3 or hidden.shape[-1] != self.dim:
                raise EdgekdValueError(f"embedder: output {self.output!r} has shape {hidden.shape}, expected "
                                       f"(batch, tokens, {self.dim})")
            m = mask[..., None].astype(np.float32)
            pooled = (hidden.astype(np.float32) * m).sum(1) / np.maximum(m.sum(1), 1e-9)
            out[rows] = pooled
        if self.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


def _check_embeddings(emb: Any, n: int | None, what: str) -> np.ndarray:
    if not isinstance(emb, np.ndarray) or emb.ndim != 2 or emb.shape[1] < 1:
        raise EdgekdValueError(f"{what}: expected a 2-D array (texts, dim), got "
                               f"{getattr(emb, 'shape', type(emb).__name__)}")
    if n is not None and emb.shape[0] != n:
        raise EdgekdValueError(f"{what}: {emb.shape[0]} rows for {n} texts")
    if not np.issubdtype(emb.dtype, np.floating):
        raise EdgekdValueError(f"{what}: expected float embeddings, got dtype {emb.dtype}")
    emb = np.asarray(emb, dtype=np.float32)
    if not np.isfinite(emb).all():
        raise EdgekdValueError(f"{what}: embeddings hold NaN or infinity")
    return emb


def _normalise_rows(emb: np.ndarray) -> np.ndarray:
    return (emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)).astype(np.float32)


# ------------------------------------------------------------------------------------- indexes
class RetrievalIndex:
    """The common interface: ``ids`` (paragraph ids, index order), ``texts`` (or None),
    :meth:`scores` (queries x paragraphs), :meth:`search`, :meth:`search_batch`, :meth:`save`."""

    kind = ""

    def __init__(self, ids: Sequence[str], texts: Sequence[str] | None = None):
        self.ids = _check_ids(ids)
        if texts is not None:
            texts = list(texts)
            if len(texts) != len(self.ids):
                raise EdgekdValueError(f"texts: {len(texts)} texts for {len(self.ids)} ids")
            for k, t in enumerate(texts):
                if not isinstance(t, str):
                    raise EdgekdValueError(f"texts[{k}]: expected a string, got {type(t).__name__}")
        self.texts: list[str] | None = texts
        self._pos = {i: k for k, i in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def text_of(self, paragraph_id: str) -> str:
        if self.texts is None:
            raise EdgekdValueError("this index was built without the paragraph texts (pass texts= to build)")
        if paragraph_id not in self._pos:
            raise EdgekdValueError(f"paragraph id {paragraph_id!r} is not in the index")
        return self.texts[self._pos[paragraph_id]]

    def scores(self, queries: Sequence[str]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def search_batch(self, queries: Sequence[str], k: int = 5, *, chunk: int = 256) -> list[list[tuple[str, float]]]:
        """The ``k`` best paragraphs of each query: ``[(id, score), ...]``, best first."""
        k = _check_k(k)
        queries = validate_texts(queries)
        out: list[list[tuple[str, float]]] = []
        for s in range(0, len(queries), chunk):
            sc = self.scores(queries[s:s + chunk])
            top = _top_k(sc, k)
            out += [[(self.ids[j], float(sc[r, j])) for j in top[r]] for r in range(sc.shape[0])]
        return out

    def search(self, query: str, k: int = 5) -> list[tuple[str, float]]:
        if not isinstance(query, str):
            raise EdgekdValueError(f"query: expected a string, got {type(query).__name__} (search_batch takes lists)")
        return self.search_batch([query], k)[0]

    # ---- saving
    def settings(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _save_parts(self, folder: Path, prefix: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the index into ``folder`` (created; an existing index there is replaced)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if (folder / INDEX_FILE).exists():
            (folder / INDEX_FILE).unlink()  # a half-written folder is never mistaken for an index
        self._save_parts(folder, "")
        if self.texts is not None:
            _write_json(folder / TEXTS_FILE, self.texts)
        files = {}
        for p in sorted(folder.rglob("*")):
            if p.is_file() and p.name != INDEX_FILE:
                rel = p.relative_to(folder).as_posix()
                files[rel] = {"sha256": _sha256(p), "size": p.stat().st_size}
        doc = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "kind": self.kind, "ids": self.ids,
               "has_texts": self.texts is not None, "settings": self.settings(), "files": files}
        tmp = folder / (INDEX_FILE + ".tmp")
        _write_json(tmp, doc)
        os.replace(tmp, folder / INDEX_FILE)
        return folder


class BM25Index(RetrievalIndex):
    """BM25 over the paragraphs (``bm25s``; see the module docstring). ``k1``, ``b``, ``method``
    are bm25s's (default Lucene's variant, k1 1.5, b 0.75)."""

    kind = "bm25"

    def __init__(self, ids: Sequence[str], retriever: Any, *, texts: Sequence[str] | None = None,
                 stopwords: Sequence[str] = (), token_pattern: str = r"(?u)\b\w\w+\b", lower: bool = True):
        super().__init__(ids, texts)
        self.retriever = retriever
        self.stopwords = list(stopwords)
        self.token_pattern = token_pattern
        self.lower = bool(lower)

    @staticmethod
    def _bm25s():
        try:
            import bm25s
        except ImportError:
            raise EdgekdValueError("BM25 retrieval needs the bm25s package: pip install bm25s "
                                   "(or pip install 'edgekd-runtime[retrieval]')") from None
        return bm25s

    @classmethod
    def build(cls, ids: Sequence[str], texts: Sequence[str], *, k1: float = 1.5, b: float = 0.75,
              method: str = "lucene", stopwords: str | Sequence[str] = "en", keep_texts: bool = True) -> "BM25Index":
        bm25s = cls._bm25s()
        ids = _check_ids(ids)
        texts = validate_texts(texts)
        if len(texts) != len(ids):
            raise EdgekdValueError(f"texts: {len(texts)} texts for {len(ids)} ids")
        if method not in BM25_METHODS:
            raise EdgekdValueError(f"method: expected one of {BM25_METHODS}, got {method!r}")
        for name, v in (("k1", k1), ("b", b)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise EdgekdValueError(f"{name}: expected a finite number >= 0, got {v!r}")
        if isinstance(stopwords, str):
            from bm25s.stopwords import STOPWORDS_EN

            if stopwords not in ("en", "english"):
                raise EdgekdValueError(f"stopwords: only 'en' or a list of words, got {stopwords!r}")
            stopwords = list(STOPWORDS_EN)
        stopwords = [str(s) for s in stopwords]
        index = cls(ids, None, texts=texts if keep_texts else None, stopwords=stopwords)
        tokens = index._tokenize(texts)
        retriever = bm25s.BM25(k1=float(k1), b=float(b), method=method, backend="numpy")
        retriever.index(tokens, show_progress=False)
        index.retriever = retriever
        return index

    def _tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        bm25s = self._bm25s()
        toks = bm25s.tokenize(list(texts), lower=self.lower, token_pattern=self.token_pattern,
                              stopwords=self.stopwords, stemmer=None, return_ids=False, show_progress=False)
        return [list(t) for t in toks]

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        queries = validate_texts(queries)
        out = np.zeros((len(queries), len(self.ids)), dtype=np.float32)
        vocab = self.retriever.vocab_dict
        n_cols = len(self.retriever.scores["indptr"]) - 1
        for r, toks in enumerate(self._tokenize(queries)):
            known = [vocab[t] for t in toks if t in vocab and vocab[t] < n_cols]
            if known:  # no known token: every paragraph scores 0
                out[r] = self.retriever.get_scores(known)
        return out

    def settings(self) -> dict[str, Any]:
        return {"k1": float(self.retriever.k1), "b": float(self.retriever.b), "method": self.retriever.method,
                "stopwords": self.stopwords, "token_pattern": self.token_pattern, "lower": self.lower}

    def _save_parts(self, folder: Path, prefix: str) -> None:
        self.retriever.save(str(folder / (prefix + "bm25")), corpus=None, allow_pickle=False, show_progress=False)

    @classmethod
    def _load_parts(cls, folder: Path, prefix: str, ids: list[str], texts: list[str] | None,
                    settings: dict[str, Any]) -> "BM25Index":
        bm25s = cls._bm25s()
        sub = folder / (prefix + "bm25")
        params = _read_json(sub / "params.index.json", "index")
        if not isinstance(params, dict) or set(params) - _BM25_PARAM_KEYS:
            extra = sorted(set(params) - _BM25_PARAM_KEYS) if isinstance(params, dict) else params
            raise EdgekdValueError(f"index: {sub / 'params.index.json'} has unknown BM25 parameters {extra!r:.200}")
        if params.get("method") not in BM25_METHODS or params.get("idf_method", params.get("method")) not in BM25_METHODS:
            raise EdgekdValueError(f"index: {sub / 'params.index.json'}: unknown BM25 method {params.get('method')!r:.60}")
        if params.get("dtype") not in ("float32", "float64") or params.get("int_dtype") not in ("int32", "int64"):
            raise EdgekdValueError(f"index: {sub / 'params.index.json'}: dtype/int_dtype must be float32|float64 / "
                                   "int32|int64")
        if params.get("num_docs") != len(ids):
            raise EdgekdValueError(f"index: the BM25 part covers {params.get('num_docs')!r:.40} paragraphs, the "
                                   f"index lists {len(ids)}")
        for key in ("k1", "b", "delta"):
            v = params.get(key, 0.0)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise EdgekdValueError(f"index: BM25 parameter {key} must be a finite number, got {v!r:.40}")
        vocab = _read_json(sub / "vocab.index.json", "index")
        if not isinstance(vocab, dict) or not vocab:
            raise EdgekdValueError(f"index: {sub / 'vocab.index.json'} must be a non-empty JSON object")
        n_vocab = len(vocab)
        vals = list(vocab.values())
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in vals) or sorted(vals) != list(range(n_vocab)):
            raise EdgekdValueError(f"index: {sub / 'vocab.index.json'} must map tokens to the ids 0..{n_vocab - 1}")
        data = _load_npy(sub / "data.csc.index.npy", "index")
        indices = _load_npy(sub / "indices.csc.index.npy", "index")
        indptr = _load_npy(sub / "indptr.csc.index.npy", "index")
        if data.ndim != 1 or indices.ndim != 1 or indptr.ndim != 1 or data.shape != indices.shape:
            raise EdgekdValueError("index: the BM25 score arrays must be 1-D, data and indices of one length")
        if not np.issubdtype(data.dtype, np.floating) or not np.isfinite(data).all():
            raise EdgekdValueError("index: the BM25 scores must be finite floats")
        if not (np.issubdtype(indices.dtype, np.integer) and np.issubdtype(indptr.dtype, np.integer)):
            raise EdgekdValueError("index: the BM25 indices must be integers")
        # one column per token; bm25s adds the empty token "" to the vocabulary after the matrix
        if (len(indptr) not in (n_vocab, n_vocab + 1) or indptr[0] != 0 or indptr[-1] != len(data)
                or (len(indptr) > 1 and np.any(np.diff(indptr) < 0))):
            raise EdgekdValueError(f"index: the BM25 indptr array does not fit the vocabulary ({n_vocab} tokens) "
                                   f"and the {len(data)} scores")
        if len(indices) and (indices.min() < 0 or indices.max() >= len(ids)):
            raise EdgekdValueError("index: a BM25 document index lies outside the paragraphs")
        try:
            retriever = bm25s.BM25.load(str(sub), load_corpus=False, mmap=False, allow_pickle=False,
                                        show_progress=False, override_params={"backend": "numpy"})
        except Exception as exc:  # bm25s's own errors for a file it cannot use
            raise EdgekdValueError(f"index: bm25s cannot load {sub}: {str(exc)[:200]}") from None
        stop = settings.get("stopwords", [])
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise EdgekdValueError("index: settings.stopwords must be a list of strings")
        pattern = settings.get("token_pattern", r"(?u)\b\w\w+\b")
        if not isinstance(pattern, str) or len(pattern) > 200:
            raise EdgekdValueError("index: settings.token_pattern must be a short regular expression")
        import re

        try:
            re.compile(pattern)
        except re.error as exc:
            raise EdgekdValueError(f"index: settings.token_pattern is not a regular expression ({exc})") from None
        return cls(ids, retriever, texts=texts, stopwords=stop, token_pattern=pattern,
                   lower=bool(settings.get("lower", True)))


class DenseIndex(RetrievalIndex):
    """Cosine similarity between the query's embedding and each paragraph's (rows L2-normalised)."""

    kind = "dense"

    def __init__(self, ids: Sequence[str], embeddings: np.ndarray, embedder: Embedder | None = None, *,
                 texts: Sequence[str] | None = None):
        super().__init__(ids, texts)
        self.embeddings = _normalise_rows(_check_embeddings(embeddings, len(self.ids), "embeddings"))
        self.embedder = embedder

    @classmethod
    def build(cls, ids: Sequence[str], texts: Sequence[str], embedder: Embedder, *,
              keep_texts: bool = True) -> "DenseIndex":
        if not hasattr(embedder, "embed"):
            raise EdgekdValueError(f"embedder: expected an object with .embed(texts), got {type(embedder).__name__}")
        texts = validate_texts(texts)
        emb = _check_embeddings(embedder.embed(texts), len(texts), "embedder output")
        return cls(ids, emb, embedder, texts=texts if keep_texts else None)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def scores_from_embeddings(self, query_embeddings: np.ndarray) -> np.ndarray:
        q = _check_embeddings(query_embeddings, None, "query embeddings")
        if q.shape[1] != self.dim:
            raise EdgekdValueError(f"query embeddings: dimension {q.shape[1]}, the index has {self.dim}")
        return (_normalise_rows(q) @ self.embeddings.T).astype(np.float32)

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        if self.embedder is None:
            raise EdgekdValueError("this dense index has no embedder: pass embedder= to load_index (or build it "
                                   "with an OnnxSentenceEmbedder, which is saved with the index)")
        queries = validate_texts(queries)
        return self.scores_from_embeddings(self.embedder.embed(queries))

    def settings(self) -> dict[str, Any]:
        has = isinstance(self.embedder, OnnxSentenceEmbedder)
        return {"dim": self.dim, "embedder": "embedder" if has else None}

    def _save_parts(self, folder: Path, prefix: str) -> None:
        np.save(folder / (prefix + "embeddings.npy"), self.embeddings, allow_pickle=False)
        if isinstance(self.embedder, OnnxSentenceEmbedder):
            dst = folder / "embedder"
            dst.mkdir(exist_ok=True)
            for f in self.embedder.files():
                if f.resolve() != (dst / f.name).resolve():
                    shutil.copyfile(f, dst / f.name)

    @classmethod
    def _load_parts(cls, folder: Path, prefix: str, ids: list[str], texts: list[str] | None,
                    settings: dict[str, Any], embedder: Embedder | None = None, threads: int | None = None) -> "DenseIndex":
        emb = _load_npy(folder / (prefix + "embeddings.npy"), "index")
        if emb.ndim != 2 or emb.shape[0] != len(ids):
            raise EdgekdValueError(f"index: {prefix}embeddings.npy has shape {emb.shape}, expected ({len(ids)}, dim)")
        if emb.dtype != np.float32:
            raise EdgekdValueError(f"index: {prefix}embeddings.npy must be float32, got {emb.dtype}")
        if embedder is None and settings.get("embedder"):
            embedder = OnnxSentenceEmbedder(folder / check_relpath(str(settings["embedder"]), "settings.embedder"),
                                            threads=threads)
        if embedder is not None and getattr(embedder, "dim", emb.shape[1]) != emb.shape[1]:
            raise EdgekdValueError(f"index: the embedder gives {embedder.dim}-d vectors, the index holds "
                                   f"{emb.shape[1]}-d ones")
        return cls(ids, emb, embedder, texts=texts)


class HybridIndex(RetrievalIndex):
    """BM25 + dense over the same paragraphs; ``weight`` is the dense side's share (0 = BM25 only,
    1 = dense only); ``fusion`` ``"rrf"`` (reciprocal rank fusion, constant ``rrf_k``) or
    ``"minmax"`` (per query, each side's scores scaled to [0, 1], then weighted)."""

    kind = "hybrid"

    def __init__(self, bm25: BM25Index, dense: DenseIndex, *, weight: float = 0.5, fusion: str = "rrf",
                 rrf_k: float = 60.0):
        if bm25.ids != dense.ids:
            raise EdgekdValueError("hybrid: the BM25 and dense indexes must cover the same paragraph ids in one order")
        super().__init__(bm25.ids, bm25.texts if bm25.texts is not None else dense.texts)
        if fusion not in FUSIONS:
            raise EdgekdValueError(f"fusion: expected one of {FUSIONS}, got {fusion!r}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= weight <= 1.0:
            raise EdgekdValueError(f"weight: expected a number in [0, 1], got {weight!r}")
        if isinstance(rrf_k, bool) or not isinstance(rrf_k, (int, float)) or not math.isfinite(rrf_k) or rrf_k < 0:
            raise EdgekdValueError(f"rrf_k: expected a finite number >= 0, got {rrf_k!r}")
        self.bm25, self.dense = bm25, dense
        self.weight, self.fusion, self.rrf_k = float(weight), fusion, float(rrf_k)

    @classmethod
    def build(cls, ids: Sequence[str], texts: Sequence[str], embedder: Embedder, *, weight: float = 0.5,
              fusion: str = "rrf", rrf_k: float = 60.0, keep_texts: bool = True, **bm25_kw) -> "HybridIndex":
        bm25 = BM25Index.build(ids, texts, keep_texts=keep_texts, **bm25_kw)
        dense = DenseIndex.build(ids, texts, embedder, keep_texts=keep_texts)
        return cls(bm25, dense, weight=weight, fusion=fusion, rrf_k=rrf_k)

    def fuse(self, bm25_scores: np.ndarray, dense_scores: np.ndarray) -> np.ndarray:
        if self.fusion == "rrf":
            return self.weight * _rrf(dense_scores, self.rrf_k) + (1 - self.weight) * _rrf(bm25_scores, self.rrf_k)
        return self.weight * _minmax(dense_scores) + (1 - self.weight) * _minmax(bm25_scores)

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        queries = validate_texts(queries)
        return self.fuse(self.bm25.scores(queries), self.dense.scores(queries)).astype(np.float32)

    def settings(self) -> dict[str, Any]:
        return {"weight": self.weight, "fusion": self.fusion, "rrf_k": self.rrf_k,
                "bm25": self.bm25.settings(), "dense": self.dense.settings()}

    def _save_parts(self, folder: Path, prefix: str) -> None:
        self.bm25._save_parts(folder, prefix)
        self.dense._save_parts(folder, prefix)

    @classmethod
    def _load_parts(cls, folder: Path, prefix: str, ids: list[str], texts: list[str] | None,
                    settings: dict[str, Any], embedder: Embedder | None = None, threads: int | None = None) -> "HybridIndex":
        bm25 = BM25Index._load_parts(folder, prefix, ids, texts, _dict(settings.get("bm25"), "settings.bm25"))
        dense = DenseIndex._load_parts(folder, prefix, ids, texts, _dict(settings.get("dense"), "settings.dense"),
                                       embedder, threads)
        try:
            return cls(bm25, dense, weight=settings.get("weight", 0.5), fusion=settings.get("fusion", "rrf"),
                       rrf_k=settings.get("rrf_k", 60.0))
        except EdgekdValueError as exc:
            raise EdgekdValueError(f"index: settings: {exc}") from None


def _dict(v: Any, what: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise EdgekdValueError(f"index: {what} must be a JSON object, got {type(v).__name__}")
    return v


# ---------------------------------------------------------------------------------- build / load
def build_index(kind: str, ids: Sequence[str], texts: Sequence[str], *, embedder: Embedder | None = None,
                **kw) -> RetrievalIndex:
    """``kind`` ``"bm25"``, ``"dense"`` or ``"hybrid"`` over paragraphs ``ids``/``texts`` (dense and
    hybrid need an ``embedder``); ``kw`` go to the index's ``build``."""
    if kind not in KINDS:
        raise EdgekdValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    if kind == "bm25":
        return BM25Index.build(ids, texts, **kw)
    if embedder is None:
        raise EdgekdValueError(f"a {kind} index needs an embedder (an OnnxSentenceEmbedder folder)")
    return (DenseIndex if kind == "dense" else HybridIndex).build(ids, texts, embedder, **kw)


_REQUIRED = {"bm25": ("bm25/params.index.json", "bm25/vocab.index.json", "bm25/data.csc.index.npy",
                      "bm25/indices.csc.index.npy", "bm25/indptr.csc.index.npy"),
             "dense": ("embeddings.npy",)}


def verify_index_files(folder: str | os.PathLike) -> dict[str, Any]:
    """Read ``index.json`` and check every file it lists (inside the folder, size, sha256); returns
    the document. Files in the folder that are not listed are ignored (never read)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EdgekdValueError(f"index: {folder} is not a folder (build one with `edgekd qa index`)")
    doc = _read_json(folder / INDEX_FILE, "index")
    if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
        raise EdgekdValueError(f"index: {folder / INDEX_FILE} is not an edgekd retrieval index (format != "
                               f"{INDEX_FORMAT!r})")
    if doc.get("version") != INDEX_VERSION:
        raise EdgekdValueError(f"index: version {doc.get('version')!r:.20} is not supported (this edgekd reads "
                               f"{INDEX_VERSION}); rebuild the index")
    kind = doc.get("kind")
    if kind not in KINDS:
        raise EdgekdValueError(f"index: unknown kind {kind!r:.40} (expected one of {KINDS})")
    files = _dict(doc.get("files"), "files")
    root = folder.resolve()
    for rel, entry in files.items():
        try:
            norm = check_relpath(rel, "index files")
        except EdgekdValueError as exc:
            raise EdgekdValueError(f"index: {exc}") from None
        entry = _dict(entry, f"files[{rel!r}]")
        path = folder / norm
        if norm == INDEX_FILE or not path.resolve().is_relative_to(root):
            raise EdgekdValueError(f"index: file {rel!r:.200} leaves the index folder")
        if not path.is_file():
            raise EdgekdValueError(f"index: {path} is missing (listed in {INDEX_FILE})")
        size = path.stat().st_size
        if entry.get("size") != size:
            raise EdgekdValueError(f"index: {path} has {size} bytes, {INDEX_FILE} says {entry.get('size')!r:.30}: "
                                   "the index is corrupt or was changed; rebuild it")
        if entry.get("sha256") != _sha256(path):
            raise EdgekdValueError(f"index: {path} does not match its sha256 in {INDEX_FILE}: the index is corrupt "
                                   "or was changed; rebuild it")
    need = list(_REQUIRED.get(kind, ())) if kind != "hybrid" else [*_REQUIRED["bm25"], *_REQUIRED["dense"]]
    settings = _dict(doc.get("settings"), "settings")
    dense_settings = settings if kind == "dense" else settings.get("dense", {}) if kind == "hybrid" else {}
    if isinstance(dense_settings, dict) and dense_settings.get("embedder"):
        need += [f"embedder/{f}" for f in OnnxSentenceEmbedder.FILES]
    if doc.get("has_texts"):
        need.append(TEXTS_FILE)
    missing = [f for f in need if f not in files]
    if missing:
        raise EdgekdValueError(f"index: {INDEX_FILE} does not list (and so does not verify) {missing}; rebuild the index")
    return doc


def load_index(folder: str | os.PathLike, *, embedder: Embedder | None = None,
               threads: int | None = None) -> RetrievalIndex:
    """Load an index written by ``save``, after :func:`verify_index_files`. A dense or hybrid index
    uses ``embedder`` if given, else the ONNX embedder saved with it."""
    folder = Path(folder)
    doc = verify_index_files(folder)
    ids = _check_ids(doc.get("ids"), "index: ids")
    texts = None
    if doc.get("has_texts"):
        texts = _read_json(folder / TEXTS_FILE, "index")
        if not isinstance(texts, list) or len(texts) != len(ids) or not all(isinstance(t, str) for t in texts):
            raise EdgekdValueError(f"index: {TEXTS_FILE} must be a list of {len(ids)} strings")
    settings = doc["settings"]
    kind = doc["kind"]
    if kind == "bm25":
        return BM25Index._load_parts(folder, "", ids, texts, settings)
    if kind == "dense":
        return DenseIndex._load_parts(folder, "", ids, texts, settings, embedder, threads)
    return HybridIndex._load_parts(folder, "", ids, texts, settings, embedder, threads)
