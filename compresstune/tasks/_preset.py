"""What the presets share: three sources of batches and the sizes they are cut into."""

from __future__ import annotations

from typing import Any, Iterable

from compresstune._validation import check_int
import torch

from compresstune.errors import TaskError
from compresstune.task import SPLITS, Task
from compresstune.tasks._sources import source

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

    def train_tensors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(x, y)`` of the training split when it is in-memory tensors batched as tuples (no
        augmentation): the recovery fine-tune then computes the teacher's outputs once and caches them."""
        return self._sources["train"].tensors
