"""edgekd.qa.embedder: the ONNX sentence embedder against torch's mean-pooled embeddings (a tiny
random BERT, and the packaged MiniLM), and the folders it refuses."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from factories import TEXTS, save_tiny_bert
from edgekd.assets import AssetNotInstalledError, asset_path
from edgekd.errors import EdgekdValueError
from edgekd.qa.embedder import export_sentence_embedder
from edgekd.runtime.retrieval import DenseIndex, OnnxSentenceEmbedder, load_index


def _reference(src, texts, max_length=512):
    """Mean pooling over the mask and L2 norm, from a float64 copy of the encoder."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(src)).double().eval()
    tok = AutoTokenizer.from_pretrained(str(src))
    enc = tok(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"][..., None].double()
    v = (h * m).sum(1) / m.sum(1)
    return (v / v.norm(dim=1, keepdim=True)).numpy()


def _cosines(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_tiny_bert_export_parity_and_index(tmp_path):
    src = save_tiny_bert(tmp_path / "bert", TEXTS, classifier=False, hf_tokenizer=True, attn="eager")
    out = export_sentence_embedder(src, tmp_path / "onnx")
    cfg = json.loads((out / "embedder.json").read_text())
    assert cfg["dim"] == 32 and cfg["pooling"] == "mean" and cfg["parity_min_cosine"] > 0.9999
    emb = OnnxSentenceEmbedder(out, batch_size=3)
    texts = TEXTS[:7] + ["", "oil " * 40]
    got = emb.embed(texts)
    assert got.dtype == np.float32 and got.shape == (len(texts), 32)
    assert _cosines(got.astype(np.float64), _reference(src, texts)).min() > 0.9999
    # a dense index carries the embedder with it
    DenseIndex.build([f"t{i}" for i in range(12)], TEXTS, emb).save(tmp_path / "idx")
    back = load_index(tmp_path / "idx")
    assert back.search(TEXTS[3], k=1)[0][0] == "t3"
    assert sorted(p.name for p in (tmp_path / "idx" / "embedder").iterdir()) == ["embedder.json", "model.onnx",
                                                                                 "tokenizer.json"]


def test_minilm_export_parity(tmp_path):
    try:
        src = asset_path("minilm")
    except AssetNotInstalledError as exc:
        pytest.skip(str(exc))
    out = export_sentence_embedder(src, tmp_path / "minilm")
    texts = ["We may share your location with advertisers.", "How do I delete my account?", "",
             "cookies " * 300]  # longer than MiniLM's 256 tokens: truncated like sentence-transformers
    got = OnnxSentenceEmbedder(out).embed(texts).astype(np.float64)
    assert got.shape == (4, 384)
    assert _cosines(got, _reference(src, texts, max_length=256)).min() > 0.9999


def test_bad_sources(tmp_path):
    with pytest.raises(EdgekdValueError, match="config.json"):
        export_sentence_embedder(tmp_path, tmp_path / "o")
    src = save_tiny_bert(tmp_path / "b", TEXTS, classifier=False)
    (src / "tokenizer.json").unlink()
    with pytest.raises(EdgekdValueError, match="tokenizer.json"):
        export_sentence_embedder(src, tmp_path / "o")
    src = save_tiny_bert(tmp_path / "c", TEXTS, classifier=False, hf_tokenizer=True)
    (src / "1_Pooling").mkdir()
    (src / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True,
                                                               "pooling_mode_mean_tokens": False}))
    with pytest.raises(EdgekdValueError, match="mean"):
        export_sentence_embedder(src, tmp_path / "o")
    (src / "1_Pooling" / "config.json").unlink()
    (src / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(EdgekdValueError, match="cannot load"):
        export_sentence_embedder(src, tmp_path / "o")
