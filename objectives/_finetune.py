"""The recovery fine-tune: a few hundred steps of knowledge distillation from the
uncompressed teacher, bounded by a step budget."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from compresstune.data import Split, iterate_batches
from compresstune.ops import kd_loss
from compresstune.objectives._metrics import accuracy

__all__ = ["FinetuneResult", "NonFiniteLoss", "recover", "teacher_logits"]


class NonFiniteLoss(RuntimeError):
    """The fine-tune loss became NaN or infinite."""


@dataclass
class FinetuneResult:
    """What the recovery fine-tune did: the validation curve and the step count."""

    curve: list[tuple[int, float]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0


@torch.no_grad()
def teacher_logits(teacher: nn.Module, split: Split, *, batch_size: int = 1024) -> torch.Tensor:
    """The teacher's logits for every example of ``split`` (no augmentation is used in
    recovery, so they can be computed once and shared by all trials)."""
    teacher.eval()
    return torch.cat([teacher(x) for x, _ in iterate_batches(split, batch_size, shuffle=False)])


def evaluate(model: nn.Module, split: Split, *, batch_size: int = 512) -> float:
    """Validation accuracy, with the compressed weights computed once for the pass."""
    with parametrize.cached():
        return accuracy(model, split, batch_size=batch_size)


def recover(
    student: nn.Module,
    train: Split,
    val: Split,
    *,
    soft_targets: torch.Tensor,
    temperature: float,
    alpha: float,
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    optimizer: str = "adam",
    eval_every: int = 50,
    eval_batch_size: int = 512,
    seed: int = 0,
    on_eval: Callable[[int, float], None] | None = None,
) -> FinetuneResult:
    """Fine-tune ``student`` in place with the KD loss against precomputed ``soft_targets``.

    ``on_eval(step, val_accuracy)`` is called after every ``eval_every`` steps
    and at the end; it may raise to stop the trial early (successive halving).

    Raises:
        NonFiniteLoss: the loss became NaN or infinite.
    """
    start = time.perf_counter()
    result = FinetuneResult()
    if steps <= 0:
        result.seconds = time.perf_counter() - start
        return result
    params = [p for p in student.parameters() if p.requires_grad]
    opt = (torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay) if optimizer == "sgd"
           else torch.optim.Adam(params, lr=lr, weight_decay=weight_decay))
    gen = torch.Generator().manual_seed(seed)
    indexed = Split(torch.arange(len(train)), train.y)
    batches = _endless(indexed, batch_size, gen)
    student.train()
    for step in range(1, steps + 1):
        idx, y = next(batches)
        loss = kd_loss(student(train.x[idx]), soft_targets[idx], y, temperature=temperature, alpha=alpha)
        if not math.isfinite(loss.item()):
            raise NonFiniteLoss(f"fine-tune loss became {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % eval_every == 0 or step == steps:
            acc = evaluate(student, val, batch_size=eval_batch_size)
            result.curve.append((step, acc))
            result.steps = step
            if on_eval is not None:
                on_eval(step, acc)
            student.train()
    student.eval()
    result.seconds = time.perf_counter() - start
    return result


def _endless(split: Split, batch_size: int, gen: torch.Generator):
    while True:
        yield from iterate_batches(split, min(batch_size, len(split)), shuffle=True, generator=gen, drop_last=True)
