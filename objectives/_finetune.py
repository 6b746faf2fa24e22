"""The recovery fine-tune: a few hundred steps of distillation from the uncompressed
teacher, through the user's :class:`~compresstune.Task`, bounded by a step budget.

The teacher's outputs are computed on the fly, one training batch at a time, so
no split is ever held whole. When the task's training data is in-memory tensors
without augmentation (``task.train_tensors()``, as a ``Classification`` built
from tensors or ``Splits`` gives), they are computed once and cached instead,
when the cache fits ``TEACHER_CACHE_BYTES`` (256 MiB): every trial then reuses
them, and a training step costs one student forward and backward only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

from compresstune.data import Split, iterate_batches
from compresstune.task import Task, device_of, measure, move

__all__ = ["TEACHER_CACHE_BYTES", "FinetuneResult", "NonFiniteLoss", "evaluate", "recover", "teacher_outputs"]

TEACHER_CACHE_BYTES = 256 * 2**20


class NonFiniteLoss(RuntimeError):
    """The fine-tune loss became NaN or infinite."""


@dataclass
class FinetuneResult:
    """What the recovery fine-tune did: the validation curve and the step count."""

    curve: list[tuple[int, float]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0


def evaluate(model: nn.Module, task: Task, split: str = "val") -> float:
    """The task's metric of ``model`` on ``split``, with the compressed weights computed once
    for the pass.

    Example:
        >>> import torch, torch.nn as nn
        >>> from compresstune.tasks import Classification
        >>> x, y = torch.eye(3), torch.tensor([0, 1, 2])
        >>> evaluate(nn.Identity(), Classification((x, y), (x, y)))
        1.0
    """
    with parametrize.cached():
        return measure(task, model, split)[0]


@torch.no_grad()
def teacher_outputs(teacher: nn.Module, task: Task, *, batch_size: int = 512,
                    max_bytes: int = TEACHER_CACHE_BYTES) -> torch.Tensor | None:
    """The teacher's outputs for every training example, when the training split is in-memory
    tensors (``task.train_tensors()``) and they fit ``max_bytes``; else ``None`` (computed on
    the fly during the fine-tune)."""
    rows = _train_tensors(task)
    if rows is None:
        return None
    x, y = rows
    device = device_of(teacher)
    was_training = teacher.training
    teacher.eval()
    try:
        first = _logits(task, teacher, move((x[:1], y[:1]), device))
        if not isinstance(first, torch.Tensor) or first.numel() * len(x) * first.element_size() > max_bytes:
            return None
        parts = [_logits(task, teacher, move((x[i:i + batch_size], y[i:i + batch_size]), device)).cpu()
                 for i in range(0, len(x), batch_size)]
    finally:
        teacher.train(was_training)
    return torch.cat(parts)


def _train_tensors(task: Task) -> tuple[torch.Tensor, torch.Tensor] | None:
    getter = getattr(task, "train_tensors", None)
    return getter() if callable(getter) else None


def _logits(task: Task, model: nn.Module, batch: Any) -> Any:
    out = task.outputs(model, batch)
    return out.detach() if isinstance(out, torch.Tensor) else out


def _train_mode(model: nn.Module, batchnorm: str) -> None:
    """Training mode, with BatchNorm layers left in eval mode when ``batchnorm`` is ``"frozen"``."""
    model.train()
    if batchnorm == "frozen":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def recover(
    student: nn.Module,
    teacher: nn.Module,
    task: Task,
    *,
    temperature: float,
    alpha: float,
    steps: int,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    optimizer: str = "adam",
    eval_every: int = 50,
    seed: int = 0,
    cached_teacher: torch.Tensor | None = None,
    on_eval: Callable[[int, float], None] | None = None,
    batchnorm: str = "frozen",
) -> FinetuneResult:
    """Fine-tune ``student`` in place with ``task.distill_loss`` against ``teacher``.

    Batches come from ``task.batches("train")`` (re-created for every pass) with
    torch's generator seeded by ``seed`` and restored afterwards, so a trial is
    reproducible and the caller's random state is untouched. ``cached_teacher``
    (from :func:`teacher_outputs`) replaces the teacher's forward passes.
    ``on_eval(step, val_metric)`` is called every ``eval_every`` steps and at the
    end; it may raise to stop the trial early. ``batchnorm="frozen"`` keeps BatchNorm
    layers in eval mode (the baseline's running statistics, not updated; their
    scale and shift still train); ``"train"`` lets them use and update batch statistics.

    Raises:
        NonFiniteLoss: the loss became NaN or infinite.
    """
    start = time.perf_counter()
    result = FinetuneResult()
    if steps <= 0:
        return result
    if batchnorm not in ("frozen", "train"):
        raise ValueError(f"`batchnorm` must be 'frozen' or 'train'; got {batchnorm!r}.")
    params = [p for p in student.parameters() if p.requires_grad]
    opt = (torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay) if optimizer == "sgd"
           else torch.optim.Adam(params, lr=lr, weight_decay=weight_decay))
    device = device_of(student)
    teacher.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pairs = (_cached_pairs(task, cached_teacher, seed, device) if cached_teacher is not None
                 else _live_pairs(task, teacher, device))
        _train_mode(student, batchnorm)
        for step in range(1, steps + 1):
            batch, target = next(pairs)
            loss = task.distill_loss(task.outputs(student, batch), target, batch, temperature, alpha)
            if not math.isfinite(loss.item()):
                raise NonFiniteLoss(f"fine-tune loss became {loss.item()} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % eval_every == 0 or step == steps:
                value = evaluate(student, task, "val")
                result.curve.append((step, value))
                result.steps = step
                if on_eval is not None:
                    on_eval(step, value)
                _train_mode(student, batchnorm)
    student.eval()
    result.seconds = time.perf_counter() - start
    return result


def _live_pairs(task: Task, teacher: nn.Module, device) -> Iterator[tuple[Any, Any]]:
    """``(batch, teacher outputs)`` forever, the training batches re-created for every pass."""
    while True:
        empty = True
        for batch in task.batches("train"):
            empty = False
            batch = move(batch, device)
            with torch.no_grad():  # closed before the yield: grad mode is global, the student needs it
                target = _logits(task, teacher, batch)
            yield batch, target
        if empty:
            raise RuntimeError(f"{task.name}.batches('train') yielded no batches")


def _cached_pairs(task: Task, cached: torch.Tensor, seed: int, device) -> Iterator[tuple[Any, Any]]:
    """``(batch, cached teacher outputs)`` forever: shuffled rows of the in-memory training split."""
    x, y = _train_tensors(task)
    gen = torch.Generator().manual_seed(seed)
    size = min(getattr(task, "batch_size", 64), len(x))
    indexed = Split(torch.arange(len(x)), torch.arange(len(x)))
    while True:
        for idx, _ in iterate_batches(indexed, size, shuffle=True, generator=gen, drop_last=True):
            yield move((x[idx], y[idx]), device), cached[idx].to(device)
