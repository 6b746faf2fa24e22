"""Symmetric per-output-channel uniform weight quantization with a straight-through
estimator. 2..8 bits are integer codes; 16 is float16; 32 is float32 (no-op)."""

from __future__ import annotations

import torch

__all__ = ["fake_quantize", "quantize_codes", "dequantize", "qmax"]

_TINY = 1e-12


def qmax(bits: int) -> int:
    """Largest code magnitude: codes lie in [-qmax, qmax] (2**bits - 1 levels)."""
    return 2 ** (bits - 1) - 1


def _scales(rows: torch.Tensor, bits: int) -> torch.Tensor:
    return rows.abs().amax(dim=1, keepdim=True).clamp_min(_TINY) / qmax(bits)


def quantize_codes(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes (int32, same shape) and per-row float32 scales (rows x 1).

    Example:
        >>> codes, scales = quantize_codes(torch.tensor([[1.0, -0.5], [0.0, 2.0]]), 2)
        >>> codes.tolist()
        [[1, 0], [0, 1]]
    """
    rows = weight.detach().reshape(weight.shape[0], -1).float()
    scales = _scales(rows, bits)
    q = qmax(bits)
    codes = torch.clamp(torch.round(rows / scales), -q, q)
    return codes.to(torch.int32).reshape(weight.shape), scales


def dequantize(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    rows = codes.reshape(codes.shape[0], -1).float()
    return (rows * scales).reshape(codes.shape)


def fake_quantize(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Round ``weight`` to what is stored, passing gradients straight through.

    The forward value equals ``dequantize(*quantize_codes(weight, bits))``
    bit for bit, so a saved artifact reproduces the model exactly.
    """
    if bits >= 32:
        return weight
    if bits == 16:
        stored = weight.half().float()
    else:
        rows = weight.reshape(weight.shape[0], -1)
        scales = _scales(rows.detach(), bits)
        q = qmax(bits)
        stored = (torch.clamp(torch.round(rows / scales), -q, q) * scales).reshape(weight.shape)
    return weight + (stored - weight).detach()
