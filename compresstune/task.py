"""The task contract: the user's batches, loss and metric, as compresstune reads them.

A :class:`Task` is what a practitioner brings besides the model: where batches
come from, what the model returns for one, the training loss, the recovery
(distillation) loss and the metric the search optimises. Subclass it, or take a
preset from :mod:`compresstune.tasks` (``Classification``, ``LanguageModeling``,
``Regression``).

What a subclass must give:

* ``metric`` (a name such as ``"f1"``) and ``direction`` (``"maximize"`` or
  ``"minimize"``);
* ``batches(split)``: an iterable of batches for ``"train"``, ``"val"`` and
  ``"test"`` (a ``DataLoader`` or any iterable; a batch may be a tensor, a tuple
  or a dict such as a tokenizer's output). It is called again for every pass,
  so the training iterable may shuffle and augment;
* ``loss(outputs, batch)``: the task's own training loss;
* the metric, either as per-batch sums (``update(outputs, batch)`` returns a
  dict of numbers that are added up over a split, ``compute(sums)`` turns them
  into the metric) or by overriding ``evaluate(model, split)`` outright. Early
  stopping's noise model is binomial: it runs only for a task with
  ``binomial = True`` whose sums count the examples as ``"n"`` (Classification);
  any other task is refused early stopping with that reason.
  ``standard_error(sums)`` reports a metric's noise for people (the rule does not
  read it yet).

What it may override: ``outputs(model, batch)`` (default: ``model(**batch)``
for a dict, without its ``"labels"``; ``model(batch[0])`` for a tuple or list;
``model(batch)`` for a tensor; ``.logits`` taken from output objects) and
``distill_loss`` (default: Hinton's KD on the last dimension of the logits,
masked by the batch's ``attention_mask`` when it has one, mixed with ``loss``
by ``alpha``).

Example:
    >>> import torch, torch.nn as nn
    >>> class Toy(Task):
    ...     metric, direction = "mse", "minimize"
    ...     def __init__(self):
    ...         x = torch.linspace(-1, 1, 32).view(-1, 1)
    ...         self.data = [(x, 2 * x)]
    ...     def batches(self, split):
    ...         return self.data
    ...     def loss(self, outputs, batch):
    ...         return nn.functional.mse_loss(outputs, batch[1])
    ...     def update(self, outputs, batch):
    ...         return {"se": float(((outputs - batch[1]) ** 2).sum()), "n": len(batch[1])}
    ...     def compute(self, sums):
    ...         return sums["se"] / sums["n"]
    >>> model = nn.Linear(1, 1)
    >>> with torch.no_grad():
    ...     _ = model.weight.fill_(2.0), model.bias.zero_()
    >>> Toy().evaluate(model, "val")
    0.0
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from compresstune._validation import check_number, check_one_of
from compresstune.errors import TaskError

__all__ = ["SPLITS", "Task", "check_task", "device_of", "has_sums", "logits_of", "map_tensors", "measure", "move",
           "rows_of", "take_rows", "targets_of"]

SPLITS = ("train", "val", "test")
DIRECTIONS = ("maximize", "minimize")


class Task:
    """The user's problem: batches, outputs, losses and the metric (see the module docstring)."""

    metric: str = "metric"
    direction: str = "maximize"
    #: True when the metric is a fraction of examples (accuracy), with a sum ``"n"`` of the
    #: examples behind it: early stopping's binomial noise model needs it.
    binomial: bool = False

    # -- data ----------------------------------------------------------------------------------
    def batches(self, split: str) -> Iterable[Any]:
        """An iterable of batches of ``split`` (``"train"``, ``"val"`` or ``"test"``)."""
        raise NotImplementedError(f"{type(self).__name__}.batches(split) must be implemented: it returns an "
                                  "iterable of batches (a DataLoader or any iterable) for 'train', 'val' and 'test'.")

    def has_split(self, split: str) -> bool:
        """Whether the task has data for ``split`` (a task without a test split reports none)."""
        return True

    # -- model calls ---------------------------------------------------------------------------
    def outputs(self, model: nn.Module, batch: Any) -> Any:
        """What ``model`` returns for ``batch`` (``.logits`` of a transformers output object)."""
        if isinstance(batch, Mapping):
            out = model(**{k: v for k, v in batch.items() if k != "labels"})
        elif isinstance(batch, (tuple, list)):
            out = model(batch[0])
        else:
            out = model(batch)
        return logits_of(out)

    def loss(self, outputs: Any, batch: Any) -> torch.Tensor:
        """The task's own training loss of ``outputs`` on ``batch`` (a scalar tensor)."""
        raise NotImplementedError(f"{type(self).__name__}.loss(outputs, batch) must be implemented: it returns "
                                  "the training loss as a scalar tensor.")

    def distill_loss(self, student_outputs: Any, teacher_outputs: Any, batch: Any, temperature: float,
                     alpha: float) -> torch.Tensor:
        """``alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * loss``, over the logits' last
        dimension; positions where ``batch["attention_mask"]`` is 0 do not count."""
        hard = self.loss(student_outputs, batch)
        if alpha == 0:
            return hard
        s, t = logits_of(student_outputs), logits_of(teacher_outputs).detach()
        if not isinstance(s, torch.Tensor) or not isinstance(t, torch.Tensor) or s.shape != t.shape:
            raise TaskError(f"{type(self).__name__}.distill_loss: the student's and the teacher's outputs must be "
                            f"logit tensors of one shape; got {_describe(s)} and {_describe(t)}. Override "
                            "`outputs` to return the logits, or `distill_loss` for other outputs.")
        kl = F.kl_div(F.log_softmax(s / temperature, dim=-1), F.softmax(t / temperature, dim=-1),
                      reduction="none").sum(-1)
        mask = _attention_mask(batch, kl.shape)
        soft = (kl * mask).sum() / mask.sum().clamp_min(1) if mask is not None else kl.mean()
        return alpha * temperature * temperature * soft + (1 - alpha) * hard

    # -- the metric ----------------------------------------------------------------------------
    def update(self, outputs: Any, batch: Any) -> Mapping[str, float] | None:
        """Per-batch sums of the metric (added up over a split); ``None``: the task overrides
        :meth:`evaluate` instead."""
        return None

    def compute(self, sums: Mapping[str, float]) -> float:
        """The metric from the sums of a whole split."""
        raise NotImplementedError(f"{type(self).__name__}.compute(sums) must be implemented with `update`.")

    def standard_error(self, sums: Mapping[str, float]) -> float | None:
        """The metric's standard error on a split (``None``: unknown); not yet read by the stop rule,
        which uses the binomial noise of a ``binomial`` task."""
        return None

    def evaluate(self, model: nn.Module, split: str) -> float:
        """The metric of ``model`` on ``split``: a float (from ``update``/``compute`` by default)."""
        if not has_sums(self):
            raise NotImplementedError(f"{self.name} must implement `update(outputs, batch)` and `compute(sums)`, "
                                      "or override `evaluate(model, split)`.")
        return measure(self, model, split)[0]

    @property
    def name(self) -> str:
        return type(self).__name__


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def _attention_mask(batch: Any, shape: torch.Size) -> torch.Tensor | None:
    if not isinstance(batch, Mapping) or "attention_mask" not in batch:
        return None
    mask = batch["attention_mask"]
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(shape):
        return None  # per-sequence logits (a classifier): the mask is not per position here
    return mask.to(dtype=torch.float32)


def logits_of(outputs: Any) -> Any:
    """The logits in a model's output: a tensor as is, ``.logits`` of an output object, the
    ``"logits"`` entry of a dict, or the first element of a tuple."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    logits = getattr(outputs, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(outputs, Mapping) and isinstance(outputs.get("logits"), torch.Tensor):
        return outputs["logits"]
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
        return outputs[0]
    return outputs


def targets_of(batch: Any, task: Task | None = None) -> torch.Tensor:
    """The targets of a batch: ``batch["labels"]`` for a dict, ``batch[1]`` for a tuple or list."""
    if isinstance(batch, Mapping) and "labels" in batch:
        return batch["labels"]
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[1]
    who = f"{task.name}: " if task is not None else ""
    raise TaskError(f"{who}a batch must carry its targets as `batch['labels']` (a dict) or `batch[1]` (a tuple); "
                    f"got {_describe(batch)}"
                    + (f" with keys {sorted(batch)}" if isinstance(batch, Mapping) else "") + ".")


def map_tensors(batch: Any, fn) -> Any:
    """``batch`` with ``fn`` applied to every tensor in it (tensors, tuples, named tuples, lists, dicts)."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, Mapping):
        return {k: map_tensors(v, fn) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        parts = [map_tensors(v, fn) for v in batch]
        if isinstance(batch, list):
            return parts
        return type(batch)(*parts) if hasattr(batch, "_fields") else tuple(parts)
    return batch


def move(batch: Any, device: torch.device | str) -> Any:
    """``batch`` with every tensor in it on ``device`` (transformers' ``BatchEncoding`` through its ``.to``)."""
    if isinstance(batch, Mapping) and type(batch) is not dict and hasattr(batch, "to"):
        return batch.to(device)
    return map_tensors(batch, lambda t: t.to(device, non_blocking=True))


def take_rows(batch: Any, n: int) -> Any:
    """The first ``n`` rows of every tensor in ``batch`` (the example of the latency and
    bit-operation measurements)."""
    return map_tensors(batch, lambda t: t[:n] if t.dim() else t)


def device_of(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters live (CPU for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _add(total: dict[str, float], part: Any, task: Task) -> None:
    if not isinstance(part, Mapping):
        raise TaskError(f"{task.name}.update must return a dict of numbers; got {_describe(part)}.")
    for key, value in part.items():
        if isinstance(value, torch.Tensor):
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TaskError(f"{task.name}.update must return a dict of numbers; got {key!r}: {value!r}.")
        total[key] = total.get(key, 0.0) + value


def rows_of(batch: Any) -> int:
    """Examples in a batch: the length of its first tensor (0 when it holds none)."""
    if isinstance(batch, torch.Tensor):
        return len(batch) if batch.dim() else 1
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (tuple, list)) else ()
    for value in values:
        n = rows_of(value)
        if n:
            return n
    return 0


def measure(task: Task, model: nn.Module, split: str, *, examples: int | None = None
            ) -> tuple[float, dict[str, float] | None]:
    """``(metric, sums)`` of ``model`` on ``split`` in eval mode without gradients (restoring the
    model's mode); ``sums`` is ``None`` for a task that overrides ``evaluate``. ``examples``: only
    the first that many examples (the sensitivity scan's subset; the last batch is cut)."""
    if not has_sums(task):
        return _checked(task, task.evaluate(model, split), split), None
    device = device_of(model)
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    try:
        with torch.no_grad(), _cached():
            seen = 0
            for batch in task.batches(split):
                if examples is not None:
                    if seen >= examples:
                        break
                    n = rows_of(batch)
                    batch = take_rows(batch, examples - seen) if seen + n > examples else batch
                    seen += n
                batch = move(batch, device)
                _add(sums, task.update(task.outputs(model, batch), batch), task)
    finally:
        model.train(was_training)
    if not sums:
        raise TaskError(f"{task.name}.batches({split!r}) yielded no batches; it must yield at least one.")
    return _checked(task, task.compute(sums), split), sums


def has_sums(task: Task) -> bool:
    """Whether ``task`` computes its metric from per-batch sums (``update``/``compute``)."""
    return type(task).update is not Task.update


def _cached():
    from torch.nn.utils import parametrize

    return parametrize.cached()


def _checked(task: Task, value: Any, split: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TaskError(f"{task.name}.evaluate(model, {split!r}) must return a finite number (its "
                        f"{task.metric!r}); got {value!r}.")
    return float(value)


def check_task(task: Any, model: Any, *, splits: Iterable[str] = SPLITS) -> None:
    """Check ``task`` against ``model`` before any search: its ``metric`` and ``direction``, and one
    batch of each split through ``outputs``, ``loss`` and ``distill_loss``.

    Raises:
        TaskError: naming the method and what was expected.
    """
    if not isinstance(model, nn.Module):
        raise TaskError(f"the model must be a torch.nn.Module; got {type(model).__name__}.")
    if not isinstance(task, Task):
        raise TaskError(f"the task must be a compresstune.Task (or a preset from compresstune.tasks); "
                        f"got {type(task).__name__}.")
    if not isinstance(task.metric, str) or not task.metric.strip():
        raise TaskError(f"`{task.name}.metric` must be a non-empty string; got {task.metric!r}.")
    check_one_of(f"{task.name}.direction", task.direction, list(DIRECTIONS), TaskError)
    device = device_of(model)
    was_training = model.training
    try:
        for split in splits:
            if task.has_split(split):
                _check_one_batch(task, model, split, device)
    finally:
        model.train(was_training)


def _first_batch(task: Task, split: str) -> Any:
    try:
        batches = task.batches(split)
        iterator = iter(batches)
    except TaskError:
        raise
    except Exception as exc:
        raise TaskError(f"{task.name}.batches({split!r}) must return an iterable of batches; calling it raised "
                        f"{type(exc).__name__}: {exc}") from exc
    for batch in iterator:
        return batch
    raise TaskError(f"{task.name}.batches({split!r}) yielded no batches; it must yield at least one.")


def _check_one_batch(task: Task, model: nn.Module, split: str, device) -> None:
    batch = move(_first_batch(task, split), device)
    model.eval()  # train mode would update batch-norm statistics: the baseline must stay as it is
    with torch.set_grad_enabled(split == "train"):
        out = _call(task, "outputs", lambda: task.outputs(model, batch), split)
        loss = _call(task, "loss", lambda: task.loss(out, batch), split)
        _scalar(task, "loss", loss, split)
        if split == "train":
            kd = _call(task, "distill_loss", lambda: task.distill_loss(out, _detached(out), batch, 2.0, 0.5), split)
            _scalar(task, "distill_loss", kd, split)


def _detached(outputs: Any) -> Any:
    return outputs.detach() if isinstance(outputs, torch.Tensor) else outputs


def _call(task: Task, method: str, fn, split: str):
    try:
        return fn()
    except TaskError:
        raise
    except NotImplementedError as exc:
        raise TaskError(str(exc)) from exc
    except Exception as exc:
        raise TaskError(f"{task.name}.{method} failed on the first {split!r} batch: {type(exc).__name__}: {exc}"
                        ) from exc


def _scalar(task: Task, method: str, value: Any, split: str) -> None:
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise TaskError(f"{task.name}.{method} must return a scalar tensor; got {_describe(value)} on the first "
                        f"{split!r} batch.")
    check_number(f"{task.name}.{method} on the first {split!r} batch", value.item(), "a finite number",
                 error=TaskError)
