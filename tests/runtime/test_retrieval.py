"""edgekd.runtime.retrieval: BM25 against the formula, dense cosine, fusion, save/load, corrupt and
hostile index folders, and use without torch."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from factories import save_bow_embedder
from edgekd.errors import EdgekdValueError
from edgekd.runtime.retrieval import (BM25Index, DenseIndex, HybridIndex, OnnxSentenceEmbedder, build_index,
                                      load_index)

IDS = ["p0", "p1", "p2", "p3", "p4"]
TEXTS = [
    "We share your personal data with advertising partners and advertising networks.",
    "You can delete your account and your data at any time.",
    "Cookies are small files stored on your device; cookies track visits.",
    "Children under thirteen may not use the service.",
    "We keep logs of the location of your device for thirty days.",
]


class HashEmbedder:
    """A deterministic numpy embedder: each lower-cased word hashes to a fixed random vector."""

    def __init__(self, dim: int = 12):
        self.dim = dim

    def _vec(self, word: str) -> np.ndarray:
        seed = sum(ord(c) * 31 ** i for i, c in enumerate(word)) % (2**32)
        return np.random.default_rng(seed).normal(size=self.dim)

    def embed(self, texts):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            words = re.findall(r"\w+", t.lower()) or ["<empty>"]
            v = np.mean([self._vec(w) for w in words], axis=0)
            out[i] = v / np.linalg.norm(v)
        return out


@pytest.fixture(scope="module")
def bm25():
    return BM25Index.build(IDS, TEXTS)


@pytest.fixture(scope="module")
def bow(tmp_path_factory):
    d, table = save_bow_embedder(tmp_path_factory.mktemp("bow"), TEXTS + ["location cookies"])
    return d, table


def _bm25_reference(index: BM25Index, query: str, k1=1.5, b=0.75) -> np.ndarray:
    """Lucene BM25 in float64 from its definition: idf = ln(1 + (N - df + 0.5) / (df + 0.5)),
    tf part = tf / (tf + k1 (1 - b + b |d| / avgdl)); tokens: lower-cased \\w\\w+ minus stopwords."""
    stop = set(index.stopwords)

    def toks(t):
        return [w for w in re.findall(r"(?u)\b\w\w+\b", t.lower()) if w not in stop]

    docs = [toks(t) for t in TEXTS]
    N, avg = len(docs), np.mean([len(d) for d in docs])
    df = Counter(w for d in docs for w in set(d))
    out = np.zeros(N)
    for w in toks(query):
        if w not in df:
            continue
        idf = math.log(1 + (N - df[w] + 0.5) / (df[w] + 0.5))
        for j, d in enumerate(docs):
            tf = d.count(w)
            out[j] += idf * tf / (tf + k1 * (1 - b + b * len(d) / avg))
    return out


@pytest.mark.parametrize("query", ["delete my account", "advertising partners data", "cookies device", "zzz qqq"])
def test_bm25_scores_match_the_formula(bm25, query):
    got = bm25.scores([query])[0]
    ref = _bm25_reference(bm25, query)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(ref).max()))


def test_search_orders_and_batches(bm25):
    hits = bm25.search("how do I delete my account", k=3)
    assert hits[0][0] == "p1" and len(hits) == 3
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    batch = bm25.search_batch(["delete my account", "cookies", "children"], k=2)
    assert [b[0][0] for b in batch] == ["p1", "p2", "p3"]
    assert batch[0] == bm25.search("delete my account", k=2)
    assert len(bm25.search("cookies", k=50)) == len(IDS)  # k larger than the index: every paragraph


def test_queries_without_known_words_score_zero(bm25):
    for q in ["", "   ", "the and of", "xyzzy", "🚀 株価"]:
        hits = bm25.search(q, k=5)
        assert [s for _, s in hits] == [0.0] * 5 and [i for i, _ in hits] == IDS  # ties keep index order


def test_bad_arguments(bm25):
    with pytest.raises(EdgekdValueError, match="k"):
        bm25.search("x", k=0)
    with pytest.raises(EdgekdValueError, match="string"):
        bm25.search(["a list"], k=1)
    with pytest.raises(EdgekdValueError, match="dict"):
        bm25.search_batch({"a": 1}, k=1)
    with pytest.raises(EdgekdValueError, match="more than once"):
        BM25Index.build(["a", "a"], ["x y", "y z"])
    with pytest.raises(EdgekdValueError, match="at least one"):
        BM25Index.build([], [])
    with pytest.raises(EdgekdValueError, match="texts"):
        BM25Index.build(["a", "b"], ["only one text"])
    with pytest.raises(EdgekdValueError, match="method"):
        BM25Index.build(["a"], ["x"], method="nope")
    with pytest.raises(EdgekdValueError, match="k1"):
        BM25Index.build(["a"], ["x"], k1=float("nan"))
    with pytest.raises(EdgekdValueError, match="kind"):
        build_index("sparse", ["a"], ["x"])
    with pytest.raises(EdgekdValueError, match="embedder"):
        build_index("dense", ["a"], ["x"])
    with pytest.raises(EdgekdValueError, match="not in the index"):
        bm25.text_of("nope")


def test_dense_is_cosine_and_rejects_bad_embeddings():
    emb = HashEmbedder()
    idx = DenseIndex.build(IDS, TEXTS, emb)
    q = ["delete account", "cookies"]
    ref = emb.embed(q).astype(np.float64) @ emb.embed(TEXTS).astype(np.float64).T
    np.testing.assert_allclose(idx.scores(q), ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(EdgekdValueError, match="NaN"):
        DenseIndex(IDS, np.full((5, 3), np.nan, dtype=np.float32))
    with pytest.raises(EdgekdValueError, match="rows"):
        DenseIndex(IDS, np.ones((4, 3), dtype=np.float32))
    with pytest.raises(EdgekdValueError, match="2-D"):
        DenseIndex(IDS, np.ones(5, dtype=np.float32))
    with pytest.raises(EdgekdValueError, match="dimension"):
        idx.scores_from_embeddings(np.ones((1, 5), dtype=np.float32))
    with pytest.raises(EdgekdValueError, match="no embedder"):
        DenseIndex(IDS, emb.embed(TEXTS)).scores(["x"])


def test_hybrid_fusion(bm25):
    emb = HashEmbedder()
    dense = DenseIndex.build(IDS, TEXTS, emb)
    q = ["share data with partners", "device location"]
    b, d = bm25.scores(q).astype(np.float64), dense.scores(q).astype(np.float64)
    for w in (0.0, 0.3, 1.0):
        rrf = HybridIndex(bm25, dense, weight=w, fusion="rrf", rrf_k=10).scores(q)
        ranks_b = np.argsort(np.argsort(-b, axis=1, kind="stable"), axis=1, kind="stable") + 1
        ranks_d = np.argsort(np.argsort(-d, axis=1, kind="stable"), axis=1, kind="stable") + 1
        np.testing.assert_allclose(rrf, w / (10 + ranks_d) + (1 - w) / (10 + ranks_b), rtol=1e-6)
        mm = HybridIndex(bm25, dense, weight=w, fusion="minmax").scores(q)

        def norm(x):
            return (x - x.min(1, keepdims=True)) / (x.max(1, keepdims=True) - x.min(1, keepdims=True))

        np.testing.assert_allclose(mm, w * norm(d) + (1 - w) * norm(b), rtol=1e-5, atol=1e-6)
    only_bm25 = HybridIndex(bm25, dense, weight=0.0).search_batch(q, k=5)
    assert [[i for i, _ in r] for r in only_bm25] == [[i for i, _ in r] for r in bm25.search_batch(q, k=5)]
    with pytest.raises(EdgekdValueError, match="weight"):
        HybridIndex(bm25, dense, weight=1.5)
    with pytest.raises(EdgekdValueError, match="fusion"):
        HybridIndex(bm25, dense, fusion="max")
    with pytest.raises(EdgekdValueError, match="same paragraph ids"):
        HybridIndex(bm25, DenseIndex.build(IDS[::-1], TEXTS[::-1], emb))


def test_onnx_embedder_mean_pools_and_normalises(bow):
    d, table = bow
    e = OnnxSentenceEmbedder(d, batch_size=2)
    texts = ["cookies track visits", "location", "", "delete your account and your data at any time"]
    got = e.embed(texts)
    ref = []
    for t in texts:
        ids = e.tokenizer.encode(t).ids
        v = table[ids].astype(np.float64).mean(0)
        ref.append(v / np.linalg.norm(v) if np.linalg.norm(v) > 0 else v)
    np.testing.assert_allclose(got, np.array(ref), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(e.embed(texts[::-1]), got[::-1], rtol=1e-6, atol=1e-7)  # order-independent batching


def test_onnx_embedder_bad_folders(tmp_path, bow):
    d, _ = bow
    with pytest.raises(EdgekdValueError, match="missing"):
        OnnxSentenceEmbedder(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ("model.onnx", "tokenizer.json"):
        (bad / f).write_bytes((d / f).read_bytes())
    (bad / "embedder.json").write_text(json.dumps({"format": "x"}))
    with pytest.raises(EdgekdValueError, match="format"):
        OnnxSentenceEmbedder(bad)
    (bad / "embedder.json").write_text(json.dumps({"format": "edgekd-sentence-embedder", "max_length": 8,
                                                   "dim": 16, "pooling": "cls"}))
    with pytest.raises(EdgekdValueError, match="pooling"):
        OnnxSentenceEmbedder(bad)
    (bad / "embedder.json").write_text(json.dumps({"format": "edgekd-sentence-embedder", "max_length": 8,
                                                   "dim": 16, "output": "pooler"}))
    with pytest.raises(EdgekdValueError, match="no output"):
        OnnxSentenceEmbedder(bad)
    (bad / "embedder.json").write_text(json.dumps({"format": "edgekd-sentence-embedder", "max_length": 8, "dim": 7}))
    with pytest.raises(EdgekdValueError, match="shape"):
        OnnxSentenceEmbedder(bad).embed(["cookies"])
    (bad / "model.onnx").write_bytes(b"not a graph")
    (bad / "embedder.json").write_text(json.dumps({"format": "edgekd-sentence-embedder", "max_length": 8, "dim": 16}))
    with pytest.raises(EdgekdValueError, match="cannot load"):
        OnnxSentenceEmbedder(bad)


@pytest.mark.parametrize("kind", ["bm25", "dense", "hybrid"])
def test_save_load_round_trip(tmp_path, bow, kind):
    emb = OnnxSentenceEmbedder(bow[0])
    idx = build_index(kind, IDS, TEXTS, embedder=emb if kind != "bm25" else None)
    idx.save(tmp_path / "idx")
    back = load_index(tmp_path / "idx")  # the ONNX embedder travels inside the folder
    q = ["delete account", "cookies on my device", ""]
    np.testing.assert_array_equal(back.scores(q), idx.scores(q))
    assert back.ids == IDS and back.texts == TEXTS and back.kind == kind
    assert not any(p.suffix == ".pkl" for p in (tmp_path / "idx").rglob("*"))


def _corrupt(folder, rel, data: bytes):
    (folder / rel).write_bytes(data)


def _relist(folder):
    """Re-write index.json's files table for the folder's current contents (a consistent hostile index)."""
    import hashlib

    doc = json.loads((folder / "index.json").read_text())
    for rel in doc["files"]:
        p = folder / rel
        doc["files"][rel] = {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "size": p.stat().st_size}
    (folder / "index.json").write_text(json.dumps(doc))


@pytest.fixture
def saved(tmp_path):
    idx = HybridIndex.build(IDS, TEXTS, HashEmbedder(), weight=0.4)
    return idx.save(tmp_path / "idx")


def test_corrupt_indexes_are_refused(saved):
    emb = HashEmbedder()
    assert load_index(saved, embedder=emb).search("cookies", 1)[0][0] == "p2"
    raw = (saved / "embeddings.npy").read_bytes()
    _corrupt(saved, "embeddings.npy", raw[:-4] + b"\x00\x00\x80\x7f")  # same size, last float -> inf
    with pytest.raises(EdgekdValueError, match="sha256"):
        load_index(saved, embedder=emb)
    _corrupt(saved, "embeddings.npy", raw[:100])
    with pytest.raises(EdgekdValueError, match="bytes"):
        load_index(saved, embedder=emb)
    _corrupt(saved, "embeddings.npy", raw)
    (saved / "bm25" / "vocab.index.json").unlink()
    with pytest.raises(EdgekdValueError, match="missing"):
        load_index(saved, embedder=emb)
    (saved / "index.json").write_text("{not json")
    with pytest.raises(EdgekdValueError, match="not valid JSON"):
        load_index(saved, embedder=emb)
    (saved / "index.json").unlink()
    with pytest.raises(EdgekdValueError, match="missing"):
        load_index(saved, embedder=emb)
    with pytest.raises(EdgekdValueError, match="not a folder"):
        load_index(saved / "nope")


def _doc(folder):
    return json.loads((folder / "index.json").read_text())


def _put(folder, doc):
    (folder / "index.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("rel", ["../outside.npy", "/etc/passwd", "a/../../x", "C:\\x"])
def test_paths_leaving_the_folder_are_refused(saved, rel):
    doc = _doc(saved)
    doc["files"][rel] = {"sha256": "0" * 64, "size": 1}
    _put(saved, doc)
    with pytest.raises(EdgekdValueError, match="escapes|absolute|contains"):
        load_index(saved, embedder=HashEmbedder())


def test_symlink_out_of_the_folder_is_refused(saved, tmp_path):
    outside = tmp_path / "secret.npy"
    outside.write_bytes((saved / "embeddings.npy").read_bytes())
    (saved / "embeddings.npy").unlink()
    os.symlink(outside, saved / "embeddings.npy")
    with pytest.raises(EdgekdValueError, match="leaves"):
        load_index(saved, embedder=HashEmbedder())


def test_hostile_but_consistent_indexes_are_refused(saved):
    """Files changed AND re-listed with matching sha256s: the content checks still refuse them."""
    emb = HashEmbedder()
    # a pickled object array instead of the embeddings
    np.save(saved / "embeddings.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    _relist(saved)
    with pytest.raises(EdgekdValueError, match="plain .npy"):
        load_index(saved, embedder=emb)
    np.save(saved / "embeddings.npy", np.ones((5, 12), dtype=np.float64))
    _relist(saved)
    with pytest.raises(EdgekdValueError, match="float32"):
        load_index(saved, embedder=emb)
    np.save(saved / "embeddings.npy", np.ones((5, 12), dtype=np.float32))
    _relist(saved)
    assert len(load_index(saved, embedder=emb)) == 5
    # BM25 parameters bm25s would pass to its constructor
    params = json.loads((saved / "bm25" / "params.index.json").read_text())
    (saved / "bm25" / "params.index.json").write_text(json.dumps({**params, "backend": "numba", "evil": 1}))
    _relist(saved)
    with pytest.raises(EdgekdValueError, match="unknown BM25 parameters"):
        load_index(saved, embedder=emb)
    (saved / "bm25" / "params.index.json").write_text(json.dumps({**params, "num_docs": 99}))
    _relist(saved)
    with pytest.raises(EdgekdValueError, match="covers"):
        load_index(saved, embedder=emb)
    (saved / "bm25" / "params.index.json").write_text(json.dumps(params))
    # a document index outside the paragraphs
    ind = np.load(saved / "bm25" / "indices.csc.index.npy")
    np.save(saved / "bm25" / "indices.csc.index.npy", ind + 100)
    _relist(saved)
    with pytest.raises(EdgekdValueError, match="outside"):
        load_index(saved, embedder=emb)
    np.save(saved / "bm25" / "indices.csc.index.npy", ind)
    vocab = json.loads((saved / "bm25" / "vocab.index.json").read_text())
    (saved / "bm25" / "vocab.index.json").write_text(json.dumps({k: v * 2 for k, v in vocab.items()}))
    _relist(saved)
    with pytest.raises(EdgekdValueError, match="ids 0"):
        load_index(saved, embedder=emb)
    (saved / "bm25" / "vocab.index.json").write_text(json.dumps(vocab))
    _relist(saved)
    # unlisted required file, wrong kind, duplicate ids, texts of another length
    doc = _doc(saved)
    _put(saved, {**doc, "files": {k: v for k, v in doc["files"].items() if k != "embeddings.npy"}})
    with pytest.raises(EdgekdValueError, match="does not list"):
        load_index(saved, embedder=emb)
    _put(saved, {**doc, "kind": "colbert"})
    with pytest.raises(EdgekdValueError, match="unknown kind"):
        load_index(saved, embedder=emb)
    _put(saved, {**doc, "ids": ["p0"] * 5})
    with pytest.raises(EdgekdValueError, match="more than once"):
        load_index(saved, embedder=emb)
    _put(saved, {**doc, "settings": {**doc["settings"], "weight": 7}})
    with pytest.raises(EdgekdValueError, match="weight"):
        load_index(saved, embedder=emb)
    _put(saved, {**doc, "version": 99})
    with pytest.raises(EdgekdValueError, match="version"):
        load_index(saved, embedder=emb)
    (saved / "paragraphs.json").write_text(json.dumps(["one"]))
    _put(saved, doc)
    _relist(saved)
    with pytest.raises(EdgekdValueError, match="list of 5 strings"):
        load_index(saved, embedder=emb)


def test_runs_without_torch(tmp_path, bow):
    """Build, save, load and search BM25 and hybrid (ONNX embedder) indexes with torch and
    transformers made unimportable, as on a device with only edgekd-runtime + bm25s."""
    code = f"""
import sys, importlib.abc, json
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ("torch", "transformers", "safetensors", "onnx"):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Block())
from edgekd.runtime.retrieval import OnnxSentenceEmbedder, build_index, load_index
ids, texts = {IDS!r}, {TEXTS!r}
for kind in ("bm25", "hybrid"):
    emb = OnnxSentenceEmbedder({str(bow[0])!r}) if kind == "hybrid" else None
    idx = build_index(kind, ids, texts, embedder=emb, **({{"weight": 0.2}} if emb else {{}}))
    idx.save({str(tmp_path)!r} + "/" + kind)
    hits = load_index({str(tmp_path)!r} + "/" + kind).search("delete my account", k=2)
    assert hits == idx.search("delete my account", k=2) and hits[0][0] == "p1", hits
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ("torch", "transformers", "safetensors", "onnx"))))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []
