"""One parametrization per compressed weight: low-rank -> prune -> quantize.

``W = Q(M_A * A) @ Q(M_B * B)`` when factored, else ``W = Q(M * W)``. The masks
are buffers fixed at apply time, so fine-tuning moves values but never the
size. Registered with ``torch.nn.utils.parametrize``; the factors are the
parametrization's ``original0`` / ``original1``.

The stored parts are always rows first (output channels along dim 0, see
:mod:`compresstune.ops.layout`), whatever the layer's own layout, so pruning,
per-channel quantization, the factorisation and the artifact treat every layer
kind alike; ``forward`` returns the weight in the layer's layout.
"""

from __future__ import annotations

import torch
from torch import nn

from compresstune.ops.layout import from_rows, rows_first_shape, to_rows
from compresstune.ops.lowrank import svd_factors
from compresstune.ops.prune import magnitude_mask
from compresstune.ops.quantize import fake_quantize

__all__ = ["CompressedWeight"]


class CompressedWeight(nn.Module):
    """Parametrization computing a compressed weight from its stored parts.

    Args:
        shape: the weight's shape in the layer's own layout.
        sparsity, bits, rank: the layer's plan (rank None: not factored).
        out_axis: the dim of the output channels in ``shape`` (0, or 1 for
            transformers' Conv1D and transposed convolutions).
        groups: the layer's groups (only matters when ``out_axis`` is 1).
    """

    def __init__(self, shape: tuple[int, ...], *, sparsity: float, bits: int, rank: int | None,
                 out_axis: int = 0, groups: int = 1) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.sparsity = float(sparsity)
        self.bits = int(bits)
        self.rank = rank
        self.out_axis = int(out_axis)
        self.groups = int(groups)
        self.rows_shape = rows_first_shape(self.shape, out_axis=self.out_axis, groups=self.groups)
        rows = self.rows_shape[0]
        cols = 1
        for d in self.rows_shape[1:]:
            cols *= d
        self.part_shapes = [(rows, rank), (rank, cols)] if rank else [self.rows_shape]
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
        rows = (stored[0] @ stored[1]).reshape(self.rows_shape) if self.factored else stored[0]
        return from_rows(rows, out_axis=self.out_axis, groups=self.groups)

    @torch.no_grad()
    def right_inverse(self, weight: torch.Tensor):
        """Split ``weight`` into the stored parts and fix the masks (called once, at registration)."""
        rows = to_rows(weight.detach(), out_axis=self.out_axis, groups=self.groups)
        if self.factored:
            parts = list(svd_factors(rows.reshape(rows.shape[0], -1), self.rank))
        else:
            parts = [rows.clone().contiguous()]
        if self.sparsity > 0:
            for i, part in enumerate(parts):
                setattr(self, f"mask{i}", magnitude_mask(part, self.sparsity))
        parts = [p.to(weight.dtype) for p in parts]
        return tuple(parts) if self.factored else parts[0]

    def extra_repr(self) -> str:
        layout = f", out_axis={self.out_axis}, groups={self.groups}" if self.out_axis else ""
        return f"shape={self.shape}, sparsity={self.sparsity:.3f}, bits={self.bits}, rank={self.rank}{layout}"
