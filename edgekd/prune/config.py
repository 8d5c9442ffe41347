"""Where and how many tokens to prune: :class:`TokenPruningConfig` (JSON-serialisable, torch only
for the symbolic sizes of an export). :mod:`edgekd.prune.tokens` holds the model that uses it."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch

from edgekd.errors import EdgekdValueError

__all__ = ["TokenPruningConfig"]

_SCORERS = ("linear", "mlp")
_SCHEDULES = ("linear", "constant")
_ESTIMATORS = ("exact", "diagonal")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class TokenPruningConfig:
    """Where and how many tokens to prune; JSON-serialisable (:meth:`to_dict` / :meth:`from_dict`).

    Args:
        layer: number of encoder layers that run on all tokens before the pruning point
            (0 <= layer < num_hidden_layers). ``layer=2`` scores the output of the second layer
            and runs layers 2, 3, ... (0-based) on the kept tokens. PrunePert's published run
            pruned at encoder layer 3.
        keep_ratio: fraction of the padded length N to keep, in (0, 1]; ``k = ceil(ratio * N)``.
        k: a fixed number of tokens to keep (>= 1), clipped to N. Give exactly one of
            ``keep_ratio`` and ``k``. Both count [CLS].
        scorer: ``"linear"`` (D -> 1) or ``"mlp"`` (D -> scorer_hidden -> GELU -> 1).
        scorer_hidden: hidden width of the MLP scorer.
        num_samples: perturbations per forward pass in training (PrunePert: 200).
        sigma: initial noise scale of the perturbations (PrunePert: 0.2).
        sigma_schedule: ``"linear"`` (sigma * (1 - progress), PrunePert's schedule) or ``"constant"``.
        keep_cls: always keep position 0 ([CLS]), which the pooler and classifier read.
        estimator: gradient estimator of the perturbed top-k, ``"exact"`` or ``"diagonal"``.
    """

    layer: int
    keep_ratio: float | None = None
    k: int | None = None
    scorer: str = "linear"
    scorer_hidden: int = 128
    num_samples: int = 200
    sigma: float = 0.2
    sigma_schedule: str = "linear"
    keep_cls: bool = True
    estimator: str = "exact"

    def __post_init__(self) -> None:
        if not _is_int(self.layer) or self.layer < 0:
            raise EdgekdValueError(f"layer must be an int >= 0, got {self.layer!r}")
        if (self.keep_ratio is None) == (self.k is None):
            raise EdgekdValueError(
                f"give exactly one of keep_ratio and k, got keep_ratio={self.keep_ratio!r}, k={self.k!r}"
            )
        if self.keep_ratio is not None:
            if not _is_number(self.keep_ratio) or not (0.0 < float(self.keep_ratio) <= 1.0):
                raise EdgekdValueError(f"keep_ratio must be a number in (0, 1], got {self.keep_ratio!r}")
            object.__setattr__(self, "keep_ratio", float(self.keep_ratio))
        if self.k is not None and (not _is_int(self.k) or self.k < 1):
            raise EdgekdValueError(f"k must be an int >= 1, got {self.k!r}")
        if self.scorer not in _SCORERS:
            raise EdgekdValueError(f"scorer must be one of {_SCORERS}, got {self.scorer!r}")
        if not _is_int(self.scorer_hidden) or self.scorer_hidden < 1:
            raise EdgekdValueError(f"scorer_hidden must be an int >= 1, got {self.scorer_hidden!r}")
        if not _is_int(self.num_samples) or self.num_samples < 1:
            raise EdgekdValueError(f"num_samples must be an int >= 1, got {self.num_samples!r}")
        if not _is_number(self.sigma) or not math.isfinite(self.sigma) or self.sigma <= 0:
            raise EdgekdValueError(f"sigma must be a finite number > 0, got {self.sigma!r}")
        object.__setattr__(self, "sigma", float(self.sigma))
        if self.sigma_schedule not in _SCHEDULES:
            raise EdgekdValueError(
                f"sigma_schedule must be one of {_SCHEDULES}, got {self.sigma_schedule!r}"
            )
        if not isinstance(self.keep_cls, bool):
            raise EdgekdValueError(f"keep_cls must be a bool, got {self.keep_cls!r}")
        if self.estimator not in _ESTIMATORS:
            raise EdgekdValueError(f"estimator must be one of {_ESTIMATORS}, got {self.estimator!r}")

    # -- sizes and schedule ------------------------------------------------------------------------

    def num_kept(self, seq_len: int) -> int:
        """Tokens kept (including [CLS]) for a padded length ``seq_len``.

        Integer arithmetic only (``ceil`` of a rational ratio), so a symbolic ``seq_len`` under
        ``torch.export`` stays symbolic and the ONNX graph computes k from the input length.
        """
        if self.k is not None:
            if isinstance(seq_len, int):
                return min(self.k, seq_len)
            if isinstance(seq_len, torch.Tensor):  # a traced size (TorchScript ONNX exporter)
                return torch.clamp(seq_len, max=self.k)
            return torch.sym_min(self.k, seq_len)  # a symbolic size (torch.export)
        frac = Fraction(self.keep_ratio).limit_denominator(1 << 20)
        # ceil(N * p / q) with p/q <= 1 stays in [1, N] for N >= 1. Written as a division of
        # non-negative numbers, (N * p + q - 1) // q: the TorchScript ONNX exporter turns a traced
        # `//` into ONNX integer Div, which truncates toward zero, so the usual -((-N * p) // q)
        # became floor(N * p / q) in the graph (fewer tokens kept than in PyTorch).
        return (seq_len * frac.numerator + (frac.denominator - 1)) // frac.denominator

    def sigma_at(self, progress: float) -> float:
        """Noise scale at ``progress`` in [0, 1] of training."""
        if self.sigma_schedule == "constant":
            return self.sigma
        return self.sigma * max(0.0, 1.0 - progress)

    # -- serialisation -----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "TokenPruningConfig":
        if not isinstance(data, dict):
            raise EdgekdValueError(f"a token pruning config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise EdgekdValueError(f"unknown token pruning config keys {unknown}; expected a subset of {sorted(known)}")
        if "layer" not in data:
            raise EdgekdValueError("token pruning config is missing 'layer'")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TokenPruningConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EdgekdValueError(f"token pruning config is not valid JSON: {exc}") from exc
        return cls.from_dict(data)
