"""Differentiable perturbed top-k token selection (PrunePert; Berthet et al. 2020, Cordonnier et al. 2021).

Given scores ``(B, N)`` the op keeps ``k`` positions per row. In training it averages, over ``S``
Gaussian perturbations ``scores + sigma * Z_s``, the one-hot selections ``Y_s`` (k, N) of the top-k
positions *sorted by position*; the result is differentiable in the scores through the perturbed
optimiser estimator

    dL/dscores = 1/(S sigma) * sum_s <G, Y_s> Z_s,          G = dL/d(indicators)   (exact)

Two forms:

``perturbed_topk_indicators``  -> (B, k, N) soft indicators ``mean_s Y_s``.
``perturbed_topk_gather``      -> (B, k, D) ``indicators @ x``, fused: per sample the k selected rows of
                                  x are gathered and averaged; no (B, S, k, N) or (B, k, N) tensor is
                                  ever built. Memory kept for backward: the indices (B, S, k) and the
                                  noise (B, S, N). Backward: ``<G, Y_s> = sum_i <dL/dout[i], x[idx_s(i)]>``
                                  and ``dL/dx`` is the scatter-add of ``dL/dout / S`` at the selected rows.

Conventions shared by the reference, the C++ kernel and the Triton kernel:

- ``mask`` (B, N), attention-mask style: True / 1 = a valid token, False / 0 = padding. Padding is
  never selected, in the perturbed and the hard path.
- Selected positions keep their original order (the k positions of each sample are sorted).
- Ties (equal perturbed values) go to the lower position. ``-0.0`` equals ``+0.0``.
- ``k``: an int >= 1, or a float keep ratio in (0, 1]: ``k = max(1, ceil(ratio * L))`` with
  ``L = N`` without a mask and ``L`` = the number of valid tokens of the *shortest* row with a mask
  (every row keeps the same k, and no row is asked for more tokens than it has). A ratio with a
  mask reads the mask's values, so pass an int k under ``torch.compile`` / export.
- ``hard=True`` (or ``hard=None`` while gradients are disabled, e.g. under ``torch.no_grad()`` /
  ``torch.inference_mode()`` at eval time) gives the deterministic top-k of the unperturbed scores,
  built from standard ops (topk, sort, gather) so it exports to ONNX as TopK + Gather. Ties there
  follow ``torch.topk`` (ONNX TopK prefers the lower index).

The low-level ops take the noise as an explicit tensor so the three implementations can be
compared exactly and are deterministic; the public functions draw it with ``torch.randn`` from the
given ``generator``:

``edgekd::perturbed_topk_gather(scores, x, noise, mask, k, sigma) -> (out, indices)``
``edgekd::perturbed_topk_gather_backward(grad_out, x, noise, indices, sigma) -> (grad_scores, grad_x)``
``edgekd::perturbed_topk_indicators(scores, noise, mask, k, sigma) -> (indicators, indices)``
``edgekd::perturbed_topk_indicators_backward(grad, noise, indices, sigma) -> grad_scores``

``estimator="diagonal"`` reproduces the backward of the public perturbed top-k code, which keeps only
the diagonal of the Jacobian (:func:`edgekd.ops.perturbed_topk_diagonal.diagonal_indicators`); it
exists to compare against the exact estimator in token-pruning experiments.

Kernels: C++ on the CPU (``csrc/cpu/perturbed_topk.cpp``), Triton on CUDA
(``kernels/perturbed_topk.py``), the reference as the CPU fallback when ``edgekd._C`` is missing.
Sections (the same in every op module, see STYLE.md): schema, fake kernel, CPU fallback, CUDA
(Triton), autograd, public function, reference, input checks.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from edgekd._ext import has_extension, warn_fallback
from edgekd.errors import EdgekdValueError
from edgekd.ops import perturbed_topk_diagonal as _diagonal
from edgekd.ops._common import tracing, triton_kernels
from edgekd.ops.perturbed_topk_reference import (
    _gather_rows,  # noqa: F401  (used by benchmarks/bench_topk.py as pt._gather_rows)
    perturbed_topk_gather_reference_backward,
    perturbed_topk_gather_reference_forward,
    perturbed_topk_indicators_reference_backward,
    perturbed_topk_indicators_reference_forward,
    perturbed_topk_reference_select,
)

__all__ = [
    "perturbed_topk_indicators",
    "perturbed_topk_gather",
    "topk_indices",
    "diagonal_indicators",
    "perturbed_topk_reference_select",
    "perturbed_topk_gather_reference_forward",
    "perturbed_topk_gather_reference_backward",
    "perturbed_topk_indicators_reference_forward",
    "perturbed_topk_indicators_reference_backward",
    "check_perturbed_topk_inputs",
]

DEFAULT_NUM_SAMPLES = 100
DEFAULT_SIGMA = 0.05
_DTYPES = (torch.float32, torch.float64)
_NO_X = object()  # check_perturbed_topk_inputs without x (the indicators form)
diagonal_indicators = _diagonal.diagonal_indicators
_GATHER = "edgekd::perturbed_topk_gather"
_GATHER_BWD = "edgekd::perturbed_topk_gather_backward"
_IND = "edgekd::perturbed_topk_indicators"
_IND_BWD = "edgekd::perturbed_topk_indicators_backward"


# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------
torch.library.define(_GATHER, "(Tensor scores, Tensor x, Tensor noise, Tensor? mask, int k, float sigma) -> (Tensor, Tensor)")
torch.library.define(_GATHER_BWD, "(Tensor grad_out, Tensor x, Tensor noise, Tensor indices, float sigma) -> (Tensor, Tensor)")
torch.library.define(_IND, "(Tensor scores, Tensor noise, Tensor? mask, int k, float sigma) -> (Tensor, Tensor)")
torch.library.define(_IND_BWD, "(Tensor grad, Tensor noise, Tensor indices, float sigma) -> Tensor")


# --------------------------------------------------------------------------------------------
# Fake kernel
# --------------------------------------------------------------------------------------------
@torch.library.register_fake(_GATHER)
def _gather_fake(scores, x, noise, mask, k, sigma):
    B, S = noise.shape[0], noise.shape[1]
    return x.new_empty(B, k, x.shape[2]), scores.new_empty(B, S, k, dtype=torch.int64)


@torch.library.register_fake(_GATHER_BWD)
def _gather_bwd_fake(grad_out, x, noise, indices, sigma):
    return x.new_empty(x.shape[0], x.shape[1]), torch.empty_like(x)


@torch.library.register_fake(_IND)
def _ind_fake(scores, noise, mask, k, sigma):
    B, N = scores.shape
    return scores.new_empty(B, k, N), scores.new_empty(B, noise.shape[1], k, dtype=torch.int64)


@torch.library.register_fake(_IND_BWD)
def _ind_bwd_fake(grad, noise, indices, sigma):
    return noise.new_empty(noise.shape[0], noise.shape[2])


# --------------------------------------------------------------------------------------------
# CPU fallback (only when edgekd._C is missing)
# --------------------------------------------------------------------------------------------
if not has_extension():

    @torch.library.register_kernel(_GATHER, "cpu")
    def _gather_cpu(scores, x, noise, mask, k, sigma):
        warn_fallback("perturbed_topk_gather")
        return perturbed_topk_gather_reference_forward(scores, x, noise, mask, k, sigma)

    @torch.library.register_kernel(_GATHER_BWD, "cpu")
    def _gather_bwd_cpu(grad_out, x, noise, indices, sigma):
        warn_fallback("perturbed_topk_gather_backward")
        return perturbed_topk_gather_reference_backward(grad_out, x, noise, indices, sigma)

    @torch.library.register_kernel(_IND, "cpu")
    def _ind_cpu(scores, noise, mask, k, sigma):
        warn_fallback("perturbed_topk_indicators")
        return perturbed_topk_indicators_reference_forward(scores, noise, mask, k, sigma)

    @torch.library.register_kernel(_IND_BWD, "cpu")
    def _ind_bwd_cpu(grad, noise, indices, sigma):
        warn_fallback("perturbed_topk_indicators_backward")
        return perturbed_topk_indicators_reference_backward(grad, noise, indices, sigma)


# --------------------------------------------------------------------------------------------
# CUDA (Triton)
# --------------------------------------------------------------------------------------------
@torch.library.register_kernel(_GATHER, "cuda")
def _gather_cuda(scores, x, noise, mask, k, sigma):
    return triton_kernels("perturbed_topk", "perturbed_topk_gather").gather_forward(scores, x, noise, mask, k, sigma)


@torch.library.register_kernel(_GATHER_BWD, "cuda")
def _gather_bwd_cuda(grad_out, x, noise, indices, sigma):
    return triton_kernels("perturbed_topk", "perturbed_topk_gather_backward").gather_backward(grad_out, x, noise, indices, sigma)


@torch.library.register_kernel(_IND, "cuda")
def _ind_cuda(scores, noise, mask, k, sigma):
    return triton_kernels("perturbed_topk", "perturbed_topk_indicators").indicators_forward(scores, noise, mask, k, sigma)


@torch.library.register_kernel(_IND_BWD, "cuda")
def _ind_bwd_cuda(grad, noise, indices, sigma):
    return triton_kernels("perturbed_topk", "perturbed_topk_indicators_backward").indicators_backward(grad, noise, indices, sigma)


# --------------------------------------------------------------------------------------------
# Autograd
# --------------------------------------------------------------------------------------------
def _gather_setup(ctx: Any, inputs: tuple, output: tuple) -> None:
    scores, x, noise, mask, k, sigma = inputs
    _, indices = output
    ctx.save_for_backward(x, noise, indices)
    ctx.sigma = sigma
    ctx.mark_non_differentiable(indices)


def _gather_backward(ctx: Any, grad_out: torch.Tensor | None, grad_indices: Any):
    x, noise, indices = ctx.saved_tensors
    if grad_out is None:
        grad_out = x.new_zeros(x.shape[0], indices.shape[2], x.shape[2])
    grad_scores, grad_x = torch.ops.edgekd.perturbed_topk_gather_backward(
        grad_out.contiguous(), x, noise, indices, ctx.sigma
    )
    return grad_scores, grad_x, None, None, None, None


def _ind_setup(ctx: Any, inputs: tuple, output: tuple) -> None:
    scores, noise, mask, k, sigma = inputs
    _, indices = output
    ctx.save_for_backward(noise, indices)
    ctx.sigma = sigma
    ctx.mark_non_differentiable(indices)


def _ind_backward(ctx: Any, grad: torch.Tensor | None, grad_indices: Any):
    noise, indices = ctx.saved_tensors
    if grad is None:
        grad = noise.new_zeros(noise.shape[0], indices.shape[2], noise.shape[2])
    grad_scores = torch.ops.edgekd.perturbed_topk_indicators_backward(
        grad.contiguous(), noise, indices, ctx.sigma
    )
    return grad_scores, None, None, None, None


torch.library.register_autograd(_GATHER, _gather_backward, setup_context=_gather_setup)
torch.library.register_autograd(_IND, _ind_backward, setup_context=_ind_setup)


# --------------------------------------------------------------------------------------------
# Public function
# --------------------------------------------------------------------------------------------
def perturbed_topk_indicators(
    scores: torch.Tensor,
    k: int | float,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    sigma: float = DEFAULT_SIGMA,
    mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    hard: bool | None = None,
    estimator: str = "exact",
) -> torch.Tensor:
    """Soft top-k indicators (B, k, N): ``mean_s`` of the sorted one-hot selections of
    ``scores + sigma * Z_s``, ``Z_s ~ N(0, I)``, s = 1..num_samples.

    Args:
        scores: (B, N) float32 / float64 token scores.
        k: int >= 1, or a float keep ratio in (0, 1] (see the module docstring).
        num_samples: S, the number of perturbations (>= 1).
        sigma: noise scale (> 0).
        mask: optional (B, N) bool / int, True / 1 = valid token, False / 0 = padding.
        generator: torch.Generator for the noise; the same seed gives identical outputs and gradients.
        hard: True for the deterministic one-hot top-k of the unperturbed scores (no gradient to the
            scores); None chooses hard exactly when gradients are disabled.
        estimator: "exact" (default) or "diagonal" (the public code's backward, for comparisons).

    Returns:
        (B, k, N) tensor; row i holds the (soft) one-hot of the i-th kept position.
    """
    scores, k, mask, num_samples, sigma, hard = check_perturbed_topk_inputs(
        scores, k, mask, num_samples=num_samples, sigma=sigma, estimator=estimator, hard=hard
    )
    if hard:
        idx = _hard_indices(scores, k, mask)
        return F.one_hot(idx, scores.shape[1]).to(scores.dtype)
    noise = _draw_noise(scores, num_samples, generator)
    if estimator == "diagonal":
        return _diagonal.diagonal_indicators(scores, noise, mask, k, sigma)
    return torch.ops.edgekd.perturbed_topk_indicators(scores, noise, mask, k, sigma)[0]


def perturbed_topk_gather(
    scores: torch.Tensor,
    x: torch.Tensor,
    k: int | float,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    sigma: float = DEFAULT_SIGMA,
    mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    hard: bool | None = None,
    estimator: str = "exact",
) -> torch.Tensor:
    """Fused perturbed top-k + gather: (B, k, D) equal to ``perturbed_topk_indicators(...) @ x``.

    Computed without building (B, S, k, N) or (B, k, N): per sample the top-k positions of the
    perturbed scores are selected (sorted by position) and the rows of x gathered and averaged.
    Gradients: the exact perturbed-optimiser estimator for the scores, the scatter-add of
    ``dL/dout / S`` at the selected rows for x. Arguments as in :func:`perturbed_topk_indicators`,
    plus ``x`` (B, N, D) with the dtype and device of the scores. In the hard path the output is
    ``x[b, topk_indices(scores)]`` (gradient to x only).
    """
    scores, k, mask, num_samples, sigma, hard = check_perturbed_topk_inputs(
        scores, k, mask, x=x, num_samples=num_samples, sigma=sigma, estimator=estimator, hard=hard
    )
    if hard:
        idx = _hard_indices(scores, k, mask)
        return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[2]))
    noise = _draw_noise(scores, num_samples, generator)
    if estimator == "diagonal":
        return _diagonal.diagonal_indicators(scores, noise, mask, k, sigma) @ x
    return torch.ops.edgekd.perturbed_topk_gather(scores, x, noise, mask, k, sigma)[0]


def topk_indices(scores: torch.Tensor, k: int | float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Deterministic hard top-k: (B, k) int64 positions of the k largest scores, sorted ascending.

    Built from ``torch.topk`` and ``torch.sort`` only, so it exports to ONNX (TopK). ``mask`` (B, N):
    True / 1 = valid token; padding is never selected. ``k`` as in :func:`perturbed_topk_gather`.
    """
    scores, k, mask, _, _, _ = check_perturbed_topk_inputs(scores, k, mask)
    return _hard_indices(scores, k, mask)


def _hard_indices(scores: torch.Tensor, k: int, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    idx = torch.topk(scores, k, dim=-1, sorted=False).indices
    return torch.sort(idx, dim=-1).values


def _draw_noise(
    scores: torch.Tensor, num_samples: int, generator: torch.Generator | None
) -> torch.Tensor:
    B, N = scores.shape
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise EdgekdValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != scores.device.type:
            raise EdgekdValueError(
                f"generator is on {generator.device} but scores are on {scores.device}"
            )
    return torch.randn(
        (B, num_samples, N), generator=generator, device=scores.device, dtype=scores.dtype
    )


# --------------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------------
# The forward and backward of each low-level op in plain PyTorch live in
# edgekd/ops/perturbed_topk_reference.py (imported above); the names they had before all ops followed
# one naming scheme:
reference_select = perturbed_topk_reference_select
reference_gather_forward = perturbed_topk_gather_reference_forward
reference_gather_backward = perturbed_topk_gather_reference_backward
reference_indicators_forward = perturbed_topk_indicators_reference_forward
reference_indicators_backward = perturbed_topk_indicators_reference_backward


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------
def check_perturbed_topk_inputs(
    scores: Any,
    k: Any,
    mask: Any = None,
    *,
    x: Any = _NO_X,
    num_samples: Any = 1,
    sigma: Any = DEFAULT_SIGMA,
    estimator: str = "exact",
    hard: Any = None,
) -> tuple[torch.Tensor, int, torch.Tensor | None, int, float, bool]:
    """Validate the public arguments; returns ``(scores, k, mask, num_samples, sigma, hard)`` with
    ``k`` resolved to an int, ``mask`` as bool (or None) and ``hard`` resolved from the grad mode.

    ``x`` (B, N, D), when given (the gather form), must match the scores. Raises
    :class:`EdgekdValueError` naming the problem. Reads the values (finite scores, enough valid
    tokens) except while tracing.
    """
    num_samples, sigma = _check_sampling(num_samples, sigma, estimator, hard)
    scores = _check_scores(scores)
    mask = _check_mask(mask, scores)
    is_tracing = tracing(scores)
    k = _resolve_k(k, scores, mask, is_tracing)
    if not is_tracing:
        _check_values(scores, mask, k)
    if x is not _NO_X:
        _check_x(x, scores)
    if hard is None:
        hard = not torch.is_grad_enabled()
    return scores, k, mask, num_samples, sigma, hard


def _check_scores(scores: Any, name: str = "scores") -> torch.Tensor:
    if not isinstance(scores, torch.Tensor):
        raise EdgekdValueError(f"{name} must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() != 2:
        raise EdgekdValueError(
            f"{name} must have shape (B, N) (rank 2), got rank {scores.dim()} shape {tuple(scores.shape)}"
        )
    if scores.dtype not in _DTYPES:
        raise EdgekdValueError(f"{name} must be float32 or float64, got {scores.dtype}")
    if scores.shape[0] < 1 or scores.shape[1] < 1:
        raise EdgekdValueError(f"{name} must be non-empty, got shape {tuple(scores.shape)}")
    return scores


def _check_mask(mask: Any, scores: torch.Tensor) -> torch.Tensor | None:
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise EdgekdValueError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.shape != scores.shape:
        raise EdgekdValueError(
            f"mask must have the shape of scores {tuple(scores.shape)}, got {tuple(mask.shape)}"
        )
    if mask.device != scores.device:
        raise EdgekdValueError(f"mask is on {mask.device} but scores are on {scores.device}")
    if mask.dtype.is_floating_point or mask.dtype.is_complex:
        raise EdgekdValueError(f"mask must be bool or integer (1 = valid token), got {mask.dtype}")
    return mask if mask.dtype == torch.bool else mask != 0


def _resolve_k(k: Any, scores: torch.Tensor, mask: torch.Tensor | None, tracing: bool) -> int:
    N = scores.shape[1]
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        raise EdgekdValueError(f"k must be an int >= 1 or a float ratio in (0, 1], got {k!r}")
    if isinstance(k, float):
        if not (0.0 < k <= 1.0) or math.isnan(k):
            raise EdgekdValueError(f"k as a keep ratio must be in (0, 1], got {k}")
        if mask is None:
            length = N
        elif tracing:
            raise EdgekdValueError(
                "k as a ratio with a mask depends on the mask's values; pass an int k under "
                "torch.compile / export"
            )
        else:
            length = int(mask.sum(dim=1).min().item())
        return max(1, math.ceil(k * length))
    if k < 1:
        raise EdgekdValueError(f"k must be >= 1, got {k}")
    if k > N:
        raise EdgekdValueError(f"k={k} is larger than the number of tokens N={N}")
    return int(k)


def _check_values(scores: torch.Tensor, mask: torch.Tensor | None, k: int) -> None:
    if not bool(torch.isfinite(scores).all()):
        bad = (~torch.isfinite(scores)).nonzero()[0].tolist()
        raise EdgekdValueError(f"scores must be finite; found {scores[tuple(bad)].item()} at {bad}")
    if mask is not None:
        valid = mask.sum(dim=1)
        low = int(valid.min().item())
        if k > low:
            row = int(valid.argmin().item())
            raise EdgekdValueError(
                f"k={k} is larger than the number of valid (unmasked) tokens in row {row} ({low})"
            )


def _check_x(x: Any, scores: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise EdgekdValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise EdgekdValueError(f"x must have shape (B, N, D) (rank 3), got rank {x.dim()}")
    if x.shape[:2] != scores.shape or x.shape[2] < 1:
        raise EdgekdValueError(
            f"x shape {tuple(x.shape)} does not match scores shape {tuple(scores.shape)} (expected (B, N, D) with D >= 1)"
        )
    if x.device != scores.device:
        raise EdgekdValueError(f"x is on {x.device} but scores are on {scores.device}")
    if x.dtype != scores.dtype:
        raise EdgekdValueError(f"x dtype {x.dtype} differs from scores dtype {scores.dtype}")


def _check_sampling(num_samples: Any, sigma: Any, estimator: str, hard: Any) -> tuple[int, float]:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise EdgekdValueError(f"num_samples must be an int >= 1, got {num_samples!r}")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
        raise EdgekdValueError(f"sigma must be a positive number, got {sigma!r}")
    if not (math.isfinite(sigma) and sigma > 0):
        raise EdgekdValueError(f"sigma must be a finite number > 0, got {sigma}")
    if estimator not in ("exact", "diagonal"):
        raise EdgekdValueError(f"estimator must be 'exact' or 'diagonal', got {estimator!r}")
    if hard is not None and not isinstance(hard, bool):
        raise EdgekdValueError(f"hard must be True, False or None, got {hard!r}")
    return int(num_samples), float(sigma)
