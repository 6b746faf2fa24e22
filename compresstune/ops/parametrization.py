"""One parametrization per compressed weight: low-rank -> prune -> quantize.

``W = Q(M_A * A) @ Q(M_B * B)`` when factored, else ``W = Q(M * W)``. The masks
are buffers fixed at apply time, so fine-tuning moves values but never the
size. Registered with ``torch.nn.utils.parametrize``; the factors are the
parametrization's ``original0`` / ``original1``.
"""

from __future__ import annotations

import torch
from torch import nn

from compresstune.ops.lowrank import svd_factors
from compresstune.ops.prune import magnitude_mask
from compresstune.ops.quantize import fake_quantize

__all__ = ["CompressedWeight"]


class CompressedWeight(nn.Module):
    """Parametrization computing a compressed weight from its stored parts.

    Args:
        shape: the weight's shape (rows = dim 0).
        sparsity, bits, rank: the layer's plan (rank None: not factored).
    """

    def __init__(self, shape: tuple[int, ...], *, sparsity: float, bits: int, rank: int | None) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.sparsity = float(sparsity)
        self.bits = int(bits)
        self.rank = rank
        rows = shape[0]
        cols = int(torch.tensor(shape[1:]).prod().item()) if len(shape) > 1 else 1
        self.part_shapes = [(rows, rank), (rank, cols)] if rank else [tuple(shape)]
        for i in range(len(self.part_shapes)):
            # Empty until right_inverse fixes it (an empty mask means "dense").
            self.register_buffer(f"mask{i}", torch.ones(0), persistent=True)

    @property
    def factored(self) -> bool:
        return self.rank is not None

    def masks(self) -> list[torch.Tensor]:
        return [getattr(self, f"mask{i}") for i in range(len(self.part_shapes))]

    def stored_part(self, part: torch.Tensor, index: int) -> torch.Tensor:
        """The part as stored: masked, then quantized (straight-through)."""
        mask = getattr(self, f"mask{index}")
        if mask.numel():
            part = part * mask
        return fake_quantize(part, self.bits)

    def forward(self, *parts: torch.Tensor) -> torch.Tensor:
        stored = [self.stored_part(p, i) for i, p in enumerate(parts)]
        if self.factored:
            return (stored[0] @ stored[1]).reshape(self.shape)
        return stored[0]

    @torch.no_grad()
    def right_inverse(self, weight: torch.Tensor):
        """Split ``weight`` into the stored parts and fix the masks (called once, at registration)."""
        if self.factored:
            parts = list(svd_factors(weight.reshape(weight.shape[0], -1), self.rank))
        else:
            parts = [weight.detach().clone()]
        if self.sparsity > 0:
            for i, part in enumerate(parts):
                setattr(self, f"mask{i}", magnitude_mask(part, self.sparsity))
        parts = [p.to(weight.dtype) for p in parts]
        return tuple(parts) if self.factored else parts[0]

    def extra_repr(self) -> str:
        return f"shape={self.shape}, sparsity={self.sparsity:.3f}, bits={self.bits}, rank={self.rank}"
