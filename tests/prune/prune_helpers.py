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
