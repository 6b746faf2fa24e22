"""Low-rank factorisation ``W = A @ B`` from a truncated SVD."""

from __future__ import annotations

import torch

__all__ = ["svd_factors"]


def svd_factors(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-``rank`` factors ``A (rows x r)`` and ``B (r x cols)`` of ``matrix``.

    The singular values are split evenly (``A = U sqrt(S)``, ``B = sqrt(S) Vh``)
    so both factors have similar ranges, which suits per-row quantization.

    Example:
        >>> m = torch.outer(torch.arange(3.0), torch.ones(4))
        >>> a, b = svd_factors(m, 1)
        >>> torch.allclose(a @ b, m, atol=1e-5)
        True
    """
    u, s, vh = torch.linalg.svd(matrix.detach().float(), full_matrices=False)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).contiguous(), (root[:, None] * vh[:rank]).contiguous()
