"""Optimizer and RNG state as safetensors + JSON (never pickle): moved to :mod:`edgekd.training`
(the shared fine-tuning loop); imported from there."""
from edgekd.training import load_optimizer, rng_state, save_optimizer, set_rng_state

__all__ = ["save_optimizer", "load_optimizer", "rng_state", "set_rng_state"]
