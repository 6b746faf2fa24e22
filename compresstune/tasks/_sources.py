"""Where a preset's batches come from: a DataLoader (or any re-iterable), a torch
``Dataset``, in-memory tensors (a :class:`~compresstune.data.Split` or an ``(x, y)``
pair), or a function returning one of those."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from compresstune.data import Split
from compresstune.errors import TaskError

__all__ = ["Source", "TensorBatches", "source"]


class TensorBatches:
    """Re-iterable batches of in-memory tensors: every pass yields ``make(rows)`` for
    consecutive (or, with ``shuffle``, randomly ordered) runs of ``batch_size`` rows;
    a shuffled pass drops the last, smaller batch. The order comes from torch's
    global generator, which the recovery fine-tune seeds."""

    def __init__(self, tensors: tuple[torch.Tensor, ...], batch_size: int, *, shuffle: bool,
                 make: Callable[[tuple[torch.Tensor, ...]], Any] = tuple) -> None:
        self.tensors, self.batch_size, self.shuffle, self.make = tensors, batch_size, shuffle, make

    def __len__(self) -> int:
        n = len(self.tensors[0])
        size = min(self.batch_size, n)
        return n // size if self.shuffle else -(-n // size)

    def __iter__(self) -> Iterator[Any]:
        n = len(self.tensors[0])
        size = min(self.batch_size, n)
        if self.shuffle:
            order = torch.randperm(n)
            for start in range(0, n - n % size, size):
                idx = order[start:start + size]
                yield self.make(tuple(t[idx] for t in self.tensors))
        else:
            for start in range(0, n, size):
                yield self.make(tuple(t[start:start + size] for t in self.tensors))


class Source:
    """One split's batches, re-created for every pass; plain data, so a task pickles (Ray)."""

    def __init__(self, kind: str, data: Any, batch_size: int, shuffle: bool,
                 make: Callable[[tuple[torch.Tensor, ...]], Any] = tuple) -> None:
        self.kind, self.data, self.batch_size, self.shuffle, self.make = kind, data, batch_size, shuffle, make

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(x, y)`` when the split is two in-memory tensors batched as ``(x, y)`` tuples (no
        augmentation): the recovery fine-tune may then cache the teacher's outputs."""
        if self.kind == "split":
            return self.data.x, self.data.y
        if self.kind == "tensors" and len(self.data) == 2 and self.make is tuple:
            return self.data
        return None

    def __call__(self) -> Iterable[Any]:
        if self.kind == "split":
            return TensorBatches((self.data.x, self.data.y), self.batch_size, shuffle=self.shuffle, make=self.make)
        if self.kind == "tensors":
            return TensorBatches(self.data, self.batch_size, shuffle=self.shuffle, make=self.make)
        if self.kind == "dataset":
            return DataLoader(self.data, batch_size=self.batch_size, shuffle=self.shuffle, drop_last=self.shuffle)
        if self.kind == "function":
            return self.data()
        return self.data  # a DataLoader or another re-iterable


def source(data: Any, field: str, *, batch_size: int, shuffle: bool,
           make: Callable[[tuple[torch.Tensor, ...]], Any] = tuple) -> Source | None:
    """The :class:`Source` of ``data`` for the preset argument ``field`` (``None`` stays ``None``)."""
    def of(kind: str, value: Any) -> Source:
        return Source(kind, value, batch_size, shuffle, make)

    if data is None:
        return None
    if isinstance(data, Split):
        return of("split", data)
    if isinstance(data, tuple) and data and all(isinstance(t, torch.Tensor) for t in data):
        _same_rows(data, field)
        return of("tensors", tuple(data))
    if isinstance(data, torch.Tensor):
        return of("tensors", (data,))
    if isinstance(data, DataLoader):
        return of("iterable", data)
    if isinstance(data, Dataset):
        return of("dataset", data)
    if callable(data):
        return of("function", data)
    if isinstance(data, Iterable):
        if iter(data) is data:
            raise TaskError(f"`{field}` must be re-iterable (a DataLoader, a Dataset, a list or a function "
                            f"returning an iterable): it is read once per pass; got a one-shot {type(data).__name__}.")
        return of("iterable", data)
    raise TaskError(f"`{field}` must be a DataLoader, a torch Dataset, a Split, a tuple of tensors with one row per "
                    f"example, or a function returning an iterable of batches; got {type(data).__name__}.")


def _same_rows(tensors, field: str) -> None:
    rows = {len(t) for t in tensors}
    if len(rows) != 1:
        raise TaskError(f"`{field}` must hold tensors with one row per example; got row counts "
                        f"{[len(t) for t in tensors]}.")
