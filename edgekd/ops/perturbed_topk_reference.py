"""The plain-PyTorch reference of the perturbed top-k ops (see :mod:`edgekd.ops.perturbed_topk`).

The oracle of the tests, the CPU fallback when ``edgekd._C`` is missing, and the baseline of
``benchmarks/bench_topk.py``: each low-level op's forward and backward, on explicit noise.
"""
from __future__ import annotations

import torch

__all__ = [
    "perturbed_topk_reference_select",
    "perturbed_topk_gather_reference_forward",
    "perturbed_topk_gather_reference_backward",
    "perturbed_topk_indicators_reference_forward",
    "perturbed_topk_indicators_reference_backward",
]


def perturbed_topk_reference_select(
    scores: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor | None, k: int, sigma: float
) -> torch.Tensor:
    """(B, S, k) int64: sorted top-k positions of ``scores + sigma * noise`` for every sample.

    A stable descending sort puts equal values in position order, so ties go to the lower position.
    """
    perturbed = scores.unsqueeze(1) + sigma * noise  # (B, S, N)
    if mask is not None:
        perturbed = perturbed.masked_fill(~mask.unsqueeze(1), float("-inf"))
    order = torch.sort(perturbed, dim=-1, descending=True, stable=True).indices[..., :k]
    return torch.sort(order, dim=-1).values


def _flat_rows(indices: torch.Tensor, N: int) -> torch.Tensor:
    """indices (B, S, k) of positions in x[b] -> (B*S*k,) row numbers of x viewed as (B*N, D)."""
    B = indices.shape[0]
    return (indices + torch.arange(B, device=indices.device).view(B, 1, 1) * N).reshape(-1)


def _gather_rows(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """x (B, N, D), indices (B, S, k) -> rows (B, S, k, D)."""
    B, N, D = x.shape
    return x.reshape(B * N, D).index_select(0, _flat_rows(indices, N)).view(*indices.shape, D)


def perturbed_topk_gather_reference_forward(
    scores: torch.Tensor,
    x: torch.Tensor,
    noise: torch.Tensor,
    mask: torch.Tensor | None,
    k: int,
    sigma: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused forward in plain PyTorch: ``(mean_s x[b, idx_s], indices)``."""
    indices = perturbed_topk_reference_select(scores, noise, mask, k, sigma)
    return _gather_rows(x, indices).mean(dim=1), indices


def perturbed_topk_gather_reference_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    noise: torch.Tensor,
    indices: torch.Tensor,
    sigma: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact estimator of the fused form: ``(grad_scores (B, N), grad_x (B, N, D))``."""
    B, S, k = indices.shape
    N, D = x.shape[1], x.shape[2]
    rows = _gather_rows(x, indices)  # (B, S, k, D)
    w = (rows.view(B, S, k * D) @ grad_out.reshape(B, k * D, 1)).squeeze(-1)  # <G, Y_s>: (B, S)
    grad_scores = torch.einsum("bs,bsn->bn", w, noise) / (S * sigma)
    # dL/dx: add dL/dout[b, i] / S to row idx_s(i) of x[b], one sample at a time (index_add_ over
    # the (B*N, D) rows, vectorised over D)
    grad_x = torch.zeros_like(x).view(B * N, D)
    src = (grad_out / S).reshape(B * k, D)
    for s in range(S):
        grad_x.index_add_(0, _flat_rows(indices[:, s : s + 1], N), src)
    grad_x = grad_x.view(B, N, D)
    return grad_scores, grad_x


def perturbed_topk_indicators_reference_forward(
    scores: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor | None, k: int, sigma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft indicators (B, k, N) = mean_s Y_s, and the indices (B, S, k)."""
    indices = perturbed_topk_reference_select(scores, noise, mask, k, sigma)
    B, S, _ = indices.shape
    N = scores.shape[1]
    counts = scores.new_zeros(B, k, N)
    counts.scatter_add_(2, indices.transpose(1, 2), scores.new_ones(B, k, S))
    return counts / S, indices


def perturbed_topk_indicators_reference_backward(
    grad: torch.Tensor, noise: torch.Tensor, indices: torch.Tensor, sigma: float
) -> torch.Tensor:
    """Exact estimator: grad_scores (B, N) = 1/(S sigma) sum_s <G, Y_s> Z_s."""
    S = indices.shape[1]
    w = grad.gather(2, indices.transpose(1, 2)).sum(dim=1)  # (B, S): <G, Y_s>
    return torch.einsum("bs,bsn->bn", w, noise) / (S * sigma)
