"""Metrics of a model on a :class:`~compresstune.data.Split`."""

from __future__ import annotations

import torch
from torch import nn

from compresstune._validation import check_int
from compresstune.data import Split, iterate_batches
from compresstune.errors import DataError

__all__ = ["accuracy"]


def _check_split(split) -> None:
    if not isinstance(split, Split):
        raise DataError(f"`split` must be a compresstune.data.Split; got {type(split).__name__}.")
    if len(split) == 0:
        raise DataError("`split` must hold at least one example; got an empty Split.")


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def accuracy(model: nn.Module, split: Split, *, batch_size: int = 1024) -> float:
    """Fraction of examples whose arg-max logit is the label.

    Runs in eval mode without gradients, then restores the model's previous
    train/eval mode.

    Args:
        model: maps a batch of ``split.x`` to logits ``(N, num_classes)``.
        split: the data to score.
        batch_size: rows per forward pass.

    Returns:
        Accuracy in ``[0, 1]``.

    Example:
        >>> s = Split(torch.eye(3), torch.tensor([0, 1, 2]))
        >>> accuracy(nn.Identity(), s)
        1.0
    """
    _check_split(split)
    check_int("batch_size", batch_size, 1, DataError)
    device = _device_of(model)
    was_training = model.training
    model.eval()
    correct = 0
    try:
        with torch.no_grad():
            for x, y in iterate_batches(split, batch_size, shuffle=False):
                pred = model(x.to(device)).argmax(dim=1)
                correct += int((pred.cpu() == y).sum())
    finally:
        model.train(was_training)
    return correct / len(split)
