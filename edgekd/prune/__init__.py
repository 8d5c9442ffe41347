"""Compression inside transformers: token pruning (PrunePert) and attention-head pruning.

- :mod:`edgekd.prune.tokens`: :class:`TokenPruningConfig`, :func:`apply_token_pruning`,
  :class:`TokenPrunedModel`, :func:`load_pruned_model`.
- :mod:`edgekd.prune.heads`: Michel et al. head importance and real head removal
  (:func:`head_importance`, :func:`prune_heads`, :func:`prune_least_important_heads`,
  :func:`load_head_pruned_model`).
- :mod:`edgekd.prune.export`: ONNX export (TopK + Gather for token-pruned models) and parity checks.

int8 post-training quantisation is in :mod:`edgekd.quantize`.
"""
from edgekd.prune.heads import (
    head_importance,
    load_head_pruned_model,
    prune_heads,
    prune_least_important_heads,
    pruned_heads,
    remaining_heads,
)
from edgekd.prune.tokens import (
    TokenPrunedModel,
    TokenPrunedOutput,
    TokenPruningConfig,
    TokenScorer,
    apply_token_pruning,
    load_pruned_model,
)

__all__ = [
    "TokenPruningConfig",
    "TokenScorer",
    "TokenPrunedModel",
    "TokenPrunedOutput",
    "apply_token_pruning",
    "load_pruned_model",
    "head_importance",
    "prune_heads",
    "prune_least_important_heads",
    "pruned_heads",
    "remaining_heads",
    "load_head_pruned_model",
]
