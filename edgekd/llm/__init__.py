"""Distillation of causal language models: token-level KD losses and the sparse teacher cache."""
from edgekd.llm.losses import LOSSES, KDLossConfig, SparseTeacher, kd_loss

__all__ = ["LOSSES", "KDLossConfig", "SparseTeacher", "kd_loss"]
