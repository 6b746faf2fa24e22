"""Hinton's knowledge-distillation loss for the recovery fine-tune."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from compresstune.errors import PlanError

__all__ = ["kd_loss"]


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
            *, temperature: float, alpha: float) -> torch.Tensor:
    """``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``.

    The ``T^2`` factor keeps the soft term's gradient scale independent of T.

    Example:
        >>> s, t, y = torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 1])
        >>> round(kd_loss(s, t, y, temperature=4.0, alpha=1.0).item(), 6)
        0.0
    """
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise PlanError(f"`temperature` must be a number > 0; got {temperature!r}.")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise PlanError(f"`alpha` must be a number in [0, 1]; got {alpha!r}.")
    ce = F.cross_entropy(student_logits, targets)
    if alpha == 0:
        return ce
    T = temperature
    soft = F.kl_div(F.log_softmax(student_logits / T, dim=-1), F.softmax(teacher_logits.detach() / T, dim=-1),
                    reduction="batchmean")
    return alpha * T * T * soft + (1 - alpha) * ce
