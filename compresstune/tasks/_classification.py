"""Classification: cross-entropy, Hinton KD, top-1 accuracy (maximised)."""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from compresstune.data import Splits
from compresstune.task import logits_of, targets_of
from compresstune.tasks._preset import Preset

__all__ = ["Classification"]


class Classification(Preset):
    """A classifier's task: the model maps a batch to logits ``(N, classes)``.

    Args:
        train, val, test: each a DataLoader (used as is, so it may augment), a torch
            ``Dataset`` (batched here; train shuffled), a
            :class:`~compresstune.data.Split` or an ``(x, y)`` pair of tensors, or a
            function returning an iterable of batches. A batch is ``(x, y)`` or a dict
            with ``"labels"`` (the rest of the dict is passed to the model as keywords).
            ``test`` is optional (then no test accuracy is reported).
        batch_size: rows per training batch (Datasets and tensors only).
        eval_batch_size: rows per evaluation batch (Datasets and tensors only).

    Example:
        >>> import torch, torch.nn as nn
        >>> x, y = torch.eye(4), torch.tensor([0, 1, 2, 3])
        >>> task = Classification((x, y), (x, y), batch_size=2)
        >>> task.evaluate(nn.Identity(), "val")
        1.0
    """

    metric = "accuracy"
    direction = "maximize"
    binomial = True  # a fraction of examples: early stopping's noise model applies

    @classmethod
    def from_splits(cls, splits: Splits, *, batch_size: int = 64, eval_batch_size: int = 512) -> "Classification":
        """The task of in-memory :class:`~compresstune.data.Splits` (what the study-file loaders return)."""
        task = cls(splits.train, splits.val, splits.test, batch_size=batch_size, eval_batch_size=eval_batch_size)
        task.num_classes = splits.num_classes
        return task

    def loss(self, outputs: Any, batch: Any) -> torch.Tensor:
        return F.cross_entropy(logits_of(outputs), targets_of(batch, self))

    def update(self, outputs: Any, batch: Any) -> Mapping[str, float]:
        y = targets_of(batch, self)
        pred = logits_of(outputs).argmax(dim=-1)
        return {"correct": int((pred == y).sum()), "n": int(y.numel())}

    def compute(self, sums: Mapping[str, float]) -> float:
        return sums["correct"] / sums["n"]

    def standard_error(self, sums: Mapping[str, float]) -> float | None:
        p = self.compute(sums)
        return math.sqrt(max(p * (1 - p), 0.0) / sums["n"])
