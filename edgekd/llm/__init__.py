"""Distilling large language models into small generative students.

- :mod:`edgekd.llm.losses`: the token-level KD loss zoo (:func:`kd_loss`, :class:`SparseTeacher`,
  :class:`KDLossConfig`, ``LOSSES``).
- :mod:`edgekd.llm.models`: teachers and students as Hugging Face causal LMs (directory, GGUF file or
  hub id) and students saved as real model directories (:func:`load_causal_lm`, :func:`save_causal_lm`).
- :mod:`edgekd.llm.prune`: students made from the teacher by structured pruning: depth (block
  influence, perplexity drop, evenly spaced layers) and width (MLP channels, whole GQA groups).
- :mod:`edgekd.llm.trainer`: the trainer for generative students on the shared loop
  (:func:`train_causal_lm`: KD against a teacher, or CE only; on-policy GKD mode; fused linear + KD
  loss), held-out perplexity.
- :mod:`edgekd.llm.onpolicy`: the student's sampled completions of on-policy distillation.

The names below are imported on first use.
"""
from edgekd._lazy import lazy_package

_EXPORTS = {
    **dict.fromkeys(["LOSSES", "KDLossConfig", "SparseTeacher", "kd_loss"], "losses"),
    **dict.fromkeys(["load_causal_lm", "save_causal_lm", "plain_copy", "count_parameters", "is_gguf_model"],
                    "models"),
    **dict.fromkeys(["block_influence", "layer_drop_importance", "evenly_spaced_layers", "select_layers",
                     "prune_depth", "width_importance", "prune_width", "calibration_batches"], "prune"),
    **dict.fromkeys(["LLMTrainConfig", "LLMTrainResult", "train_causal_lm", "evaluate_perplexity",
                     "pack_texts", "encode_pairs", "token_data", "cached_teacher", "teacher_fingerprint"], "trainer"),
}
lazy_package(__name__, _EXPORTS)
