"""What the presets share: three sources of batches and the sizes they are cut into."""

from __future__ import annotations

import copy
from typing import Any, Iterable

from compresstune._validation import check_int
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

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
        stratified by label when the labels are classes (in-memory tensors, or a dataset with a
        ``targets`` or ``labels`` attribute); ``None`` when the validation data cannot be indexed
        (an iterable, or a DataLoader over an IterableDataset: the caller then reads the first
        batches). The sensitivity scan uses it, so that a split stored in class order does not scan
        one class. ``sample_kind`` on the result says how it was drawn."""
        src = self._sources["val"]
        rows = src.tensors if src.kind == "split" else (src.data if src.kind == "tensors" else None)
        if rows is not None:
            n = len(rows[0])
            labels = rows[1] if len(rows) > 1 else None
            idx = _sample(labels, n, min(examples, n), seed)
            val = Source("tensors", tuple(t[idx] for t in rows), src.batch_size, False, src.make)
        else:
            found = _indexable(src)
            if found is None:
                return None
            dataset, batch_size, collate = found
            labels = _dataset_labels(dataset)
            idx = _sample(labels, len(dataset), min(examples, len(dataset)), seed)
            loader = DataLoader(Subset(dataset, idx.tolist()), batch_size=batch_size, shuffle=False,
                                collate_fn=collate)
            val = Source("iterable", loader, src.batch_size, False, src.make)
        sub = copy.copy(self)
        sub._sources = {**self._sources, "val": val}
        sub.sample_kind = "stratified random" if _is_classes(labels) else "random"
        return sub

    def train_tensors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(x, y)`` of the training split when it is in-memory tensors batched as tuples (no
        augmentation): the recovery fine-tune then computes the teacher's outputs once and caches them."""
        return self._sources["train"].tensors


def _indexable(src: Source) -> tuple[Dataset, int, Any] | None:
    """``(dataset, batch size, collate_fn)`` behind a validation source that can be indexed: a
    map-style Dataset, or a DataLoader over one; else None."""
    if src.kind == "dataset":
        return src.data, src.batch_size, None
    loader = src.data
    if (src.kind == "iterable" and isinstance(loader, DataLoader) and not isinstance(loader.dataset, IterableDataset)
            and hasattr(loader.dataset, "__len__")):
        return loader.dataset, loader.batch_size or src.batch_size, loader.collate_fn
    return None


def _dataset_labels(dataset: Any) -> torch.Tensor | None:
    """A dataset's class labels when it says them without being read (``targets`` or ``labels``)."""
    for name in ("targets", "labels"):
        values = getattr(dataset, name, None)
        if values is not None:
            try:
                labels = torch.as_tensor(values)
            except (TypeError, ValueError, RuntimeError):
                return None
            return labels if labels.dim() == 1 and len(labels) == len(dataset) else None
    return None


def _is_classes(labels: torch.Tensor | None) -> bool:
    return labels is not None and labels.dtype == torch.int64 and labels.dim() == 1


def _sample(labels: torch.Tensor | None, n: int, k: int, seed: int) -> torch.Tensor:
    """``k`` of ``n`` row indices drawn with ``seed``: per class in proportion to its rows (largest
    remainders) when ``labels`` are int64 classes, else uniformly; sorted."""
    gen = torch.Generator().manual_seed(seed)
    if not _is_classes(labels):
        return torch.sort(torch.randperm(n, generator=gen)[:k]).values
    classes, counts = torch.unique(labels, return_counts=True)
    share = counts.double() * k / n
    take = share.floor().long()
    order = torch.argsort(share - take.double(), descending=True)
    take[order[: k - int(take.sum())]] += 1
    picked = [torch.nonzero(labels == c).flatten()[torch.randperm(int(m), generator=gen)[: int(t)]]
              for c, m, t in zip(classes, counts, take)]
    return torch.sort(torch.cat(picked)).values
