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
        # argsort is stable, so ties are broken by position and the count is exact.
        order = torch.argsort(weight.detach().abs().flatten(), stable=True)
        mask[order[:n_zero]] = 0
    return mask.reshape(weight.shape)


def channels_to_keep(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Indices (sorted) of the output channels with the largest L2 norm; at least one is kept.

    Example:
        >>> channels_to_keep(torch.tensor([[1.0, 1.0], [5.0, 0.0], [0.1, 0.1]]), 0.5).tolist()
        [0, 1]
    """
    rows = weight.shape[0]
    keep = max(1, rows - int(round(sparsity * rows)))
    norms = weight.detach().reshape(rows, -1).norm(dim=1)
    return torch.sort(torch.topk(norms, keep, sorted=False).indices).values
