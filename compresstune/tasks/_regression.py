"""Regression: mean squared error to the targets, MSE to the teacher as the distillation term."""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

from compresstune.errors import TaskError
from compresstune.task import logits_of, targets_of
from compresstune.tasks._preset import Preset

__all__ = ["Regression"]


class Regression(Preset):
    """A regressor's task: the model maps ``x`` to predictions shaped like the targets ``y``.

    The recovery loss is ``alpha * MSE(student, teacher) + (1 - alpha) * MSE(student, y)``;
    the temperature does not apply. The metric is the mean squared error per target
    element (minimised).

    Args:
        train, val, test: as for :class:`~compresstune.tasks.Classification`; batches are
            ``(x, y)`` with float ``y``, or dicts with ``"labels"``. ``test`` is optional.
        batch_size, eval_batch_size: rows per batch (Datasets and tensors only).

    Example:
        >>> import torch, torch.nn as nn
        >>> x = torch.randn(8, 3)
        >>> Regression((x, x), (x, x)).evaluate(nn.Identity(), "val")
        0.0
    """

    metric = "mse"
    direction = "minimize"

    def _pair(self, outputs: Any, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        pred, y = logits_of(outputs), targets_of(batch, self)
        if not isinstance(pred, torch.Tensor) or pred.numel() != y.numel():
            raise TaskError(f"{self.name}: the model's predictions must have one value per target; got "
                            f"{getattr(pred, 'shape', type(pred).__name__)} for targets {tuple(y.shape)}.")
        return pred.reshape(y.shape).float(), y.float()

    def loss(self, outputs: Any, batch: Any) -> torch.Tensor:
        return F.mse_loss(*self._pair(outputs, batch))

    def distill_loss(self, student_outputs: Any, teacher_outputs: Any, batch: Any, temperature: float,
                     alpha: float) -> torch.Tensor:
        pred, y = self._pair(student_outputs, batch)
        teacher = logits_of(teacher_outputs).detach().reshape(y.shape).float()
        return alpha * F.mse_loss(pred, teacher) + (1 - alpha) * F.mse_loss(pred, y)

    def update(self, outputs: Any, batch: Any) -> Mapping[str, float]:
        pred, y = self._pair(outputs, batch)
        return {"se": float(((pred - y) ** 2).sum()), "n": int(y.numel())}

    def compute(self, sums: Mapping[str, float]) -> float:
        return sums["se"] / sums["n"]
