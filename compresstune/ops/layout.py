"""Weight layouts: every operator works on the weight with its output channels
first ("rows first"); a few layers store them elsewhere.

- ``nn.Linear``, ``nn.ConvNd``, ``nn.Embedding``, RNN matrices: output channels
  along dim 0 already (``out_axis=0``).
- transformers' ``Conv1D``: weight ``(in, out)``, output channels along dim 1.
- ``nn.ConvTransposeNd``: weight ``(in, out / groups, *kernel)``; output
  channel ``g * out/groups + j`` is column ``j`` of group ``g``'s rows.

:func:`to_rows` turns such a weight into ``(out, in / groups, *kernel)`` (the
layout of an ordinary grouped convolution) and :func:`from_rows` undoes it.
"""

from __future__ import annotations

import torch

__all__ = ["from_rows", "rows_first_shape", "to_rows"]


def rows_first_shape(shape: tuple[int, ...], *, out_axis: int = 0, groups: int = 1) -> tuple[int, ...]:
    """The shape :func:`to_rows` gives a weight of ``shape``.

    Example:
        >>> rows_first_shape((16, 8, 3, 3), out_axis=1, groups=2)
        (16, 8, 3, 3)
        >>> rows_first_shape((128, 384), out_axis=1)
        (384, 128)
    """
    shape = tuple(shape)
    if out_axis == 0:
        return shape
    return (shape[1] * groups, shape[0] // groups, *shape[2:])


def to_rows(weight: torch.Tensor, *, out_axis: int = 0, groups: int = 1) -> torch.Tensor:
    """``weight`` with its output channels along dim 0.

    Example:
        >>> w = torch.arange(6.0).reshape(2, 3)       # a Conv1D weight (in=2, out=3)
        >>> to_rows(w, out_axis=1).tolist()
        [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]
    """
    if out_axis == 0:
        return weight
    inp, out_per_group, *rest = weight.shape
    grouped = weight.reshape(groups, inp // groups, out_per_group, *rest).transpose(1, 2)
    return grouped.reshape(groups * out_per_group, inp // groups, *rest)


def from_rows(rows: torch.Tensor, *, out_axis: int = 0, groups: int = 1) -> torch.Tensor:
    """Inverse of :func:`to_rows`: back to the layer's own layout.

    Example:
        >>> w = torch.randn(4, 3, 5)
        >>> torch.equal(from_rows(to_rows(w, out_axis=1, groups=2), out_axis=1, groups=2), w)
        True
    """
    if out_axis == 0:
        return rows
    out, in_per_group, *rest = rows.shape
    grouped = rows.reshape(groups, out // groups, in_per_group, *rest).transpose(1, 2)
    return grouped.reshape(groups * in_per_group, out // groups, *rest)
