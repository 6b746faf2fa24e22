"""The operators: pruning, quantization, low-rank factorisation and the KD loss,
plus :class:`CompressedWeight`, the parametrization that combines them."""

from compresstune.ops.distill import kd_loss
from compresstune.ops.lowrank import svd_factors
from compresstune.ops.parametrization import CompressedWeight
from compresstune.ops.prune import channels_to_keep, magnitude_mask
from compresstune.ops.quantize import dequantize, fake_quantize, quantize_codes

__all__ = [
    "CompressedWeight",
    "channels_to_keep",
    "dequantize",
    "fake_quantize",
    "kd_loss",
    "magnitude_mask",
    "quantize_codes",
    "svd_factors",
]
