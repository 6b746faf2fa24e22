"""What the presets share: three sources of batches and the sizes they are cut into."""

from __future__ import annotations

import copy
from typing import Any, Iterable

from compresstune._validation import check_int
import torch

from compresstune.errors import TaskError
from compresstune.task import SPLITS, Task
from compresstune.tasks._sources import Source, source

__all__ = ["Preset"]


class Preset(Task):
    """A task over three sources of batches (train, val, optional test)."""

    def __init__(self, train: Any, val: Any, test: Any = None, *, batch_size: int = 64,
                 eval_batch_size: int = 512, make=tuple) -> None:
        check_int("batch_size", batch_size, 1, TaskError)
        check_int("eval_batch_size", eval_batch_size, 1, TaskError)
        if train is None or val is None:
            raise TaskError(f"{type(self).__name__} needs `train` and `val` data; got "
                            f"train={type(train).__name__}, val={type(val).__name__}.")
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self._sources = {
            "train": source(train, "train", batch_size=batch_size, shuffle=True, make=make),
            "val": source(val, "val", batch_size=eval_batch_size, shuffle=False, make=make),
            "test": source(test, "test", batch_size=eval_batch_size, shuffle=False, make=make),
        }

    def has_split(self, split: str) -> bool:
        return self._sources.get(split) is not None

    def batches(self, split: str) -> Iterable[Any]:
        if split not in SPLITS:
            raise TaskError(f"`split` must be one of {list(SPLITS)}; got {split!r}.")
        src = self._sources[split]
        if src is None:
            raise TaskError(f"{self.name} has no {split!r} data.")
        return src()

    def val_sample(self, examples: int, seed: int = 0) -> "Preset | None":
        """This task with its validation split cut to a seeded random sample of ``examples`` rows,
        stratified by label when the labels are classes; ``None`` when the validation data is not
        in-memory tensors (the caller then reads the first batches). The sensitivity scan uses it,
        so that a split stored in class order does not scan one class."""
        src = self._sources["val"]
        rows = src.tensors if src.kind == "split" else (src.data if src.kind == "tensors" else None)
        if rows is None:
            return None
        n = len(rows[0])
        idx = _sample(rows[1] if len(rows) > 1 else None, n, min(examples, n), seed)
        sub = copy.copy(self)
        sub._sources = {**self._sources, "val": Source("tensors", tuple(t[idx] for t in rows), src.batch_size,
                                                       False, src.make)}
        return sub

    def train_tensors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(x, y)`` of the training split when it is in-memory tensors batched as tuples (no
        augmentation): the recovery fine-tune then computes the teacher's outputs once and caches them."""
        return self._sources["train"].tensors


def _sample(labels: torch.Tensor | None, n: int, k: int, seed: int) -> torch.Tensor:
    """``k`` of ``n`` row indices drawn with ``seed``: per class in proportion to its rows (largest
    remainders) when ``labels`` are int64 classes, else uniformly; sorted."""
    gen = torch.Generator().manual_seed(seed)
    if labels is None or labels.dtype != torch.int64 or labels.dim() != 1:
        return torch.sort(torch.randperm(n, generator=gen)[:k]).values
    classes, counts = torch.unique(labels, return_counts=True)
    share = counts.double() * k / n
    take = share.floor().long()
    order = torch.argsort(share - take.double(), descending=True)
    take[order[: k - int(take.sum())]] += 1
    picked = [torch.nonzero(labels == c).flatten()[torch.randperm(int(m), generator=gen)[: int(t)]]
              for c, m, t in zip(classes, counts, take)]
    return torch.sort(torch.cat(picked)).values
