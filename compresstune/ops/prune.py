"""Magnitude pruning: unstructured masks fixed at apply time, and the channel
choice for structured (output-channel) pruning."""

from __future__ import annotations

import torch

__all__ = ["magnitude_mask", "channels_to_keep"]


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A 0/1 mask that zeroes exactly ``round(sparsity * numel)`` smallest-magnitude weights.

    Example:
        >>> magnitude_mask(torch.tensor([0.1, -3.0, 2.0, 0.0]), 0.5).tolist()
        [0.0, 1.0, 1.0, 0.0]
    """
    n_zero = int(round(sparsity * weight.numel()))
    mask = torch.ones(weight.numel(), dtype=weight.dtype, device=weight.device)
    if n_zero > 0:
        # Everything below the n_zero-th smallest magnitude, then ties at it by position, so the
        # count is exact; same result as a stable argsort, several times faster (kthvalue is O(n)).
        magnitude = weight.detach().abs().flatten()
        threshold = magnitude.kthvalue(n_zero).values
        below = magnitude < threshold
        ties = torch.nonzero(magnitude == threshold).flatten()[: n_zero - int(below.sum())]
        mask[below] = 0
        mask[ties] = 0
    return mask.reshape(weight.shape)


def channels_to_keep(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Indices (sorted) of the output channels with the largest L2 norm; at least one is kept.

    Example:
        >>> channels_to_keep(torch.tensor([[1.0, 1.0], [5.0, 0.0], [0.1, 0.1], [0.0, 3.0]]), 0.5).tolist()
        [1, 3]
    """
    rows = weight.shape[0]
    keep = max(1, rows - int(round(sparsity * rows)))
    norms = weight.detach().reshape(rows, -1).norm(dim=1)
    return torch.sort(torch.topk(norms, keep, sorted=False).indices).values
