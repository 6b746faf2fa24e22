"""The generic data containers: :class:`Split`, :class:`Splits` and batch iteration.

A :class:`Split` holds one split as two tensors (fast loops, cheap to pickle for
Ray); :class:`Splits` holds train, validation and test plus the class count and a
name. The validation split is used for selection; the test split is reported and
never used for selection.

The example studies' loaders (digits, MNIST, CIFAR-10, SST-2 TSV) live in
``studies/datasets.py``; their old names here (``load_digits``, ``load_mnist``,
``load_cifar10``, ``load_tsv``, ``tokenize``, ``CIFAR10_CLASSES``) still work for one
release with a ``DeprecationWarning``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from compresstune._moved import moved_attribute
from compresstune._validation import check_int
from compresstune.errors import DataError

__all__ = ["Split", "Splits", "iterate_batches"]

_MOVED = {
    name: "studies.datasets"
    for name in ("CIFAR10_CLASSES", "PAD_ID", "UNK_ID", "load_cifar10", "load_digits", "load_mnist", "load_tsv", "tokenize")
}


@dataclass(frozen=True, eq=False)
class Split:
    """One split held as tensors.

    Args:
        x: features: float32 ``(N, ...)``, uint8 images ``(N, C, H, W)`` or int64
            token ids ``(N, L)``.
        y: int64 labels ``(N,)``.

    Example:
        >>> s = Split(torch.zeros(3, 4), torch.tensor([0, 1, 0]))
        >>> len(s)
        3
    """

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.x, torch.Tensor) or not isinstance(self.y, torch.Tensor):
            raise DataError(
                f"Split `x` and `y` must be torch.Tensors; got {type(self.x).__name__} "
                f"and {type(self.y).__name__}."
            )
        if self.y.dtype != torch.int64 or self.y.dim() != 1:
            raise DataError(
                f"Split `y` must be a 1-D int64 tensor; got dtype {self.y.dtype} "
                f"with shape {tuple(self.y.shape)}."
            )
        if self.x.dim() == 0 or self.x.shape[0] != self.y.shape[0]:
            raise DataError(
                f"Split `x` must have one row per label; got x shape {tuple(self.x.shape)} "
                f"for {self.y.shape[0]} labels."
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True, eq=False)
class Splits:
    """Train, validation and test splits of one dataset.

    Args:
        train: the data models are trained on.
        val: carved from the training data; used for selection.
        test: the official test set; reported, never used for selection.
        num_classes: number of classes; labels lie in ``[0, num_classes)``.
        name: short dataset name, e.g. ``"mnist"``.
        classes: class names in label order, when known.
        vocab: for token data, the vocabulary in id order (``vocab[0]`` is the
            padding token, ``vocab[1]`` the unknown token); empty otherwise.

    Example:
        >>> part = Split(torch.zeros(4, 2), torch.tensor([0, 1, 1, 0]))
        >>> d = Splits(part, part, part, num_classes=2, name="toy")
        >>> d.name, d.num_classes, len(d.train)
        ('toy', 2, 4)
    """

    train: Split
    val: Split
    test: Split
    num_classes: int
    name: str
    classes: tuple[str, ...] = ()
    vocab: tuple[str, ...] = ()


def iterate_batches(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` mini-batches of a split, in order or shuffled.

    Args:
        split: the data.
        batch_size: rows per batch; the last batch may be smaller.
        shuffle: visit the rows in a random order drawn from ``generator``.
        generator: source of the order; ``None`` uses the global generator.
        drop_last: skip a final batch smaller than ``batch_size``.

    Yields:
        ``(x, y)`` tensors on the split's device (CPU for the loaders' output).

    Example:
        >>> s = Split(torch.arange(10.0).view(10, 1), torch.arange(10))
        >>> [len(y) for _, y in iterate_batches(s, 4, shuffle=False)]
        [4, 4, 2]
    """
    check_int("batch_size", batch_size, 1, DataError)
    n = len(split)
    if shuffle:
        order = torch.randperm(n, generator=generator)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if shuffle:
            idx = order[start : start + batch_size]
            yield split.x[idx], split.y[idx]
        else:
            yield split.x[start : start + batch_size], split.y[start : start + batch_size]


def __getattr__(name: str):
    return moved_attribute(__name__, name, _MOVED)
