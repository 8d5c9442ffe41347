"""Tiny random BERT models for the pruning tests (no download)."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")


def tiny_config(attn: str = "eager", **overrides):
    kwargs = dict(
        vocab_size=97,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
        num_labels=3,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    kwargs.update(overrides)
    cfg = transformers.BertConfig(**kwargs)
    cfg._attn_implementation = attn
    return cfg


def tiny_classifier(seed: int = 0, attn: str = "eager", **overrides):
    torch.manual_seed(seed)
    return transformers.BertForSequenceClassification(tiny_config(attn, **overrides)).eval()


def tiny_encoder(seed: int = 0, attn: str = "eager", **overrides):
    torch.manual_seed(seed)
    return transformers.BertModel(tiny_config(attn, **overrides)).eval()


def make_batch(batch: int, seq: int, lengths: list[int] | None = None, seed: int = 0, vocab: int = 97):
    """input_ids / attention_mask / token_type_ids; rows right-padded to ``lengths``."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if lengths is not None:
        for row, n in enumerate(lengths):
            mask[row, n:] = 0
            ids[row, n:] = 0
    return {"input_ids": ids, "attention_mask": mask}


CLI_TEXTS = [
    "stocks rally as profits beat estimates", "oil prices slump on weak demand", "the fed holds rates steady",
    "shares plunge after the recall", "bank keeps policy unchanged", "gold climbs to a record high",
    "retail sales miss forecasts", "chip maker surges on strong revenue", "bond yields rise as inflation stays hot",
    "retailer to cut more jobs", "airline shares fall after the grounding", "software maker raises its dividend",
]
CLI_LABELS = [1, 0, 2, 0, 2, 1, 0, 1, 0, 0, 0, 1]
CLI_LABEL_NAMES = ["bearish", "bullish", "neutral"]


def save_tiny_model_dir(d, classifier: bool = True, num_labels: int = 3, seed: int = 0, label_names=None, **overrides):
    """A tiny random BERT (4 layers, 4 heads, 32 wide) saved with save_pretrained, plus a WordPiece
    ``tokenizer.json`` over CLI_TEXTS that transformers' AutoTokenizer loads (model_type bert)."""
    import pathlib

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    d = pathlib.Path(d)
    d.mkdir(parents=True, exist_ok=True)
    words = sorted({w for t in CLI_TEXTS for w in t.split()})
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words)}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.save(str(d / "tokenizer.json"))
    kwargs = dict(vocab_size=len(vocab), num_labels=num_labels)
    if label_names is not None:
        kwargs.update(id2label=dict(enumerate(label_names)), label2id={n: i for i, n in enumerate(label_names)})
    kwargs.update(overrides)
    cfg = tiny_config(**kwargs)
    torch.manual_seed(seed)
    model = (transformers.BertForSequenceClassification if classifier else transformers.BertModel)(cfg)
    model.save_pretrained(d)
    return d
