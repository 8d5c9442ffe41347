"""Compression inside transformers: token pruning (PrunePert) and attention-head pruning.

- :mod:`edgekd.prune.api`: the entry points :func:`train_token_pruned` (token pruning + fine-tuning on
  the shared loop :mod:`edgekd.training`) and :func:`prune_heads_by_importance`, both returning a
  :class:`PruneResult` (model, tokenizer, metrics).
- :mod:`edgekd.prune.tokens`: :class:`TokenPruningConfig`, :func:`apply_token_pruning`,
  :class:`TokenPrunedModel`, :func:`load_pruned_model`.
- :mod:`edgekd.prune.heads`: Michel et al. head importance and real head removal
  (:func:`head_importance`, :func:`prune_heads`, :func:`prune_least_important_heads`,
  :func:`load_head_pruned_model`).
- :mod:`edgekd.prune.export`: ONNX export (TopK + Gather for token-pruned models) and parity checks.
- :mod:`edgekd.prune.cli`: ``edgekd prune tokens`` and ``edgekd prune heads`` (thin layers over the API).

int8 post-training quantisation is in :mod:`edgekd.quantize`.

The names below are imported on first use (the CLI imports this package to register its
commands, and the torch-free commands must not pay for torch).
"""
from edgekd._lazy import lazy_package

_EXPORTS = {
    **dict.fromkeys(["train_token_pruned", "prune_heads_by_importance", "PruneResult", "evaluate_classifier"], "api"),
    **dict.fromkeys(["TokenPruningConfig", "TokenScorer", "TokenPrunedModel", "TokenPrunedOutput",
                     "apply_token_pruning", "load_pruned_model"], "tokens"),
    **dict.fromkeys(["head_importance", "prune_heads", "prune_least_important_heads", "pruned_heads",
                     "remaining_heads", "load_head_pruned_model"], "heads"),
}
lazy_package(__name__, _EXPORTS)
