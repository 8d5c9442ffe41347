"""Shared data and builders for the compile tests, imported by name (`from conftest import` is
ambiguous when several test folders have a conftest)."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

TEXTS = [
    "Stocks rally as $AAPL beats earnings estimates",
    "Oil prices slump on weak demand outlook",
    "Fed holds rates steady, markets flat",
    "Tesla shares plunge after recall of 2 million cars",
    "Bank of Japan keeps policy unchanged",
    "Gold climbs to a record high on safe-haven buying",
    "Retail sales miss forecasts; dollar weakens",
    "Nvidia surges 10% on strong data center revenue",
    "Bond yields rise as inflation stays hot",
    "Amazon to cut 9,000 more jobs",
    "Shares of Boeing fall after the FAA grounds jets",
    "Microsoft raises its dividend and buyback",
]
LABELS = [1, 0, 2, 0, 2, 1, 0, 1, 0, 0, 0, 1]
LABEL_NAMES = ["bearish", "bullish", "neutral"]


def make_word_tokenizer(texts: list[str], path: pathlib.Path) -> pathlib.Path:
    """A WordLevel tokenizer like the distillation helper's: 0=[PAD], 1=[UNK], lowercase."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    words: list[str] = []
    pre = pre_tokenizers.Whitespace()
    for t in texts:
        for w, _ in pre.pre_tokenize_str(t.lower()):
            if w not in words:
                words.append(w)
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre
    tok.save(str(path))
    return path


def save_random_student(out: pathlib.Path, vocab_size: int, E: int = 16, H: int = 12, A: int = 10, C: int = 3,
                        seed: int = 0, scale: float = 0.5) -> pathlib.Path:
    """Save an edgekd BiLSTMAttentionStudent with random weights (std ``scale``, so that logits
    and attention are far from uniform) through its own ``save_pretrained``."""
    import torch

    from edgekd.students import BiLSTMAttentionStudent

    torch.manual_seed(seed)
    model = BiLSTMAttentionStudent(vocab_size, embed_dim=E, hidden_size=H, num_classes=C, pad_id=0,
                                   attention_dim=A, label_names=LABEL_NAMES[:C])
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, scale)
        model.embedding.weight[0] = 0.0
    model.save_pretrained(out)
    return out


def make_tiny_teacher(d: pathlib.Path) -> pathlib.Path:
    """A 2-layer, 32-wide random BERT classifier with a WordPiece tokenizer.json over TEXTS."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification

    d.mkdir(parents=True, exist_ok=True)
    words = sorted({w for t in TEXTS for w, _ in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(t.lower())})
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + ["##s", "##ing"])}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.save(str(d / "tokenizer.json"))
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=3,
                     id2label=dict(enumerate(LABEL_NAMES)), label2id={n: i for i, n in enumerate(LABEL_NAMES)})
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(d)
    return d
