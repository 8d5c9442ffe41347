"""Export a sentence-transformers encoder (MiniLM, ``edgekd.assets.asset_path("minilm")``) to the
ONNX sentence embedder that :class:`edgekd.runtime.retrieval.OnnxSentenceEmbedder` runs (torch-free,
on the host and on the device).

The graph is the plain encoder (``input_ids``, ``attention_mask``[, ``token_type_ids``] ->
``last_hidden_state``); mean pooling over the mask and L2 normalisation are done by the runtime in
numpy, exactly as sentence-transformers' ``Pooling(mean)`` + ``Normalize`` modules do. Exported
with ``torch.onnx.export(dynamo=True)`` and named dynamic batch/sequence dimensions (the legacy
TorchScript exporter bakes traced shapes into transformers 5's mask code), then checked: the
ONNX embeddings of a few texts against the torch reference, cosine > ``min_cosine``.

>>> from edgekd.assets import asset_path                           # doctest: +SKIP
>>> export_sentence_embedder(asset_path("minilm"), "minilm-onnx")  # doctest: +SKIP
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from edgekd.errors import EdgekdValueError
from edgekd.runtime.retrieval import EMBEDDER_FILE, EMBEDDER_FORMAT, OnnxSentenceEmbedder

__all__ = ["export_sentence_embedder", "torch_sentence_embeddings", "PARITY_TEXTS"]

PARITY_TEXTS = ("We share your personal information with advertising partners.",
                "You can delete your account at any time from the settings page.",
                "cookies", "")


def _max_length(src: Path, config) -> int:
    n = int(getattr(config, "max_position_embeddings", 512))
    f = src / "sentence_bert_config.json"
    if f.is_file():
        try:
            n = min(n, int(json.loads(f.read_text(encoding="utf-8")).get("max_seq_length", n)))
        except (ValueError, TypeError, json.JSONDecodeError):
            pass
    return n


def _check_pooling(src: Path) -> None:
    f = src / "1_Pooling" / "config.json"
    if f.is_file():
        cfg = json.loads(f.read_text(encoding="utf-8"))
        if not cfg.get("pooling_mode_mean_tokens", True) or cfg.get("pooling_mode_cls_token"):
            raise EdgekdValueError(f"{src}: the sentence encoder pools with something other than the mean "
                                   "(1_Pooling/config.json); only mean pooling is supported")


def torch_sentence_embeddings(model, tokenizer, texts: Sequence[str], max_length: int = 256) -> np.ndarray:
    """The torch reference: mean of ``last_hidden_state`` over the attention mask, L2-normalised
    (float64 accumulation), as sentence-transformers computes MiniLM's embeddings."""
    import torch

    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state.double()
    m = enc["attention_mask"].unsqueeze(-1).double()
    pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


def export_sentence_embedder(src_dir: str | os.PathLike, out_dir: str | os.PathLike, *, opset: int = 18,
                             min_cosine: float = 0.9999) -> Path:
    """Export the encoder in ``src_dir`` (a sentence-transformers or plain BERT-family folder with
    ``tokenizer.json``) to ``out_dir`` (``model.onnx``, ``tokenizer.json``, ``embedder.json``) and
    check parity; returns ``out_dir``."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    src, out = Path(src_dir), Path(out_dir)
    if not (src / "config.json").is_file():
        raise EdgekdValueError(f"{src}: no config.json (expected a transformers / sentence-transformers model folder)")
    if not (src / "tokenizer.json").is_file():
        raise EdgekdValueError(f"{src}: no tokenizer.json (the device runtime needs a fast tokenizer file)")
    _check_pooling(src)
    try:
        model = AutoModel.from_pretrained(str(src)).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(src))
    except (OSError, ValueError) as exc:
        raise EdgekdValueError(f"{src}: cannot load the encoder: {' '.join(str(exc).split())[:300]}") from None
    max_length = _max_length(src, model.config)
    names = ["input_ids", "attention_mask"]
    if getattr(model.config, "type_vocab_size", 0):
        names.append("token_type_ids")

    class Encoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kw = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kw["token_type_ids"] = token_type_ids
            return self.m(**kw).last_hidden_state

    out.mkdir(parents=True, exist_ok=True)
    enc = tokenizer(list(PARITY_TEXTS[:2]), padding=True, return_tensors="pt")
    args = tuple(enc[n] if n in enc else torch.zeros_like(enc["input_ids"]) for n in names)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    tmp = out / "model.onnx.tmp"
    with torch.no_grad():
        torch.onnx.export(Encoder(model), args, str(tmp), input_names=names, output_names=["last_hidden_state"],
                          dynamic_shapes={n: {0: batch, 1: seq} for n in names}, opset_version=opset,
                          dynamo=True, external_data=False, verbose=False)
    os.replace(tmp, out / "model.onnx")
    if (out / "model.onnx.tmp.data").exists():  # pragma: no cover - only with external data
        (out / "model.onnx.tmp.data").unlink()
    shutil.copyfile(src / "tokenizer.json", out / "tokenizer.json")
    pad = tokenizer.pad_token_id
    cfg = {"format": EMBEDDER_FORMAT, "max_length": int(max_length), "dim": int(model.config.hidden_size),
           "pooling": "mean", "normalize": True, "output": "last_hidden_state",
           "pad_id": int(pad) if pad is not None else 0, "source": src.name}
    (out / EMBEDDER_FILE).write_text(json.dumps(cfg, indent=1), encoding="utf-8")

    ref = torch_sentence_embeddings(model, tokenizer, PARITY_TEXTS, max_length)
    got = OnnxSentenceEmbedder(out).embed(list(PARITY_TEXTS)).astype(np.float64)
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    if float(cos.min()) < min_cosine:
        raise EdgekdValueError(f"export: the ONNX embeddings differ from torch's (min cosine {cos.min():.6f} < "
                               f"{min_cosine}); the export is broken")
    cfg["parity_min_cosine"] = float(cos.min())
    (out / EMBEDDER_FILE).write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    return out
