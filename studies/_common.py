"""Helpers shared by the MNIST, CIFAR-10 and SST-2 study modules: split subsets,
the committed-baseline loader and the row hash that ties a checkpoint to the
validation split it was trained beside."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from compresstune.data import Split, Splits

__all__ = ["describe", "load_checkpoint", "row_keys", "subset"]


def describe(data: Any) -> str:
    if isinstance(data, Splits):
        return f"{data.name!r} splits with x of shape {tuple(data.train.x.shape)}"
    return type(data).__name__


def subset(d: Splits, seed: int, **sizes: int | None) -> Splits:
    """Random subsets (file order kept) of the splits named in ``sizes``
    (``train_size=``, ``val_size=``, ``test_size=``; None keeps a split whole)."""
    parts = {"train": d.train, "val": d.val, "test": d.test}
    for key, n in sizes.items():
        if n is None:
            continue
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"`{key}` must be None or an integer >= 1; got {n!r}.")
        split = parts[key.removesuffix("_size")]
        if n < len(split):
            idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n].sort().values
            parts[key.removesuffix("_size")] = Split(split.x[idx], split.y[idx])
    return Splits(parts["train"], parts["val"], parts["test"], d.num_classes, d.name, d.classes, d.vocab)


def row_keys(x: torch.Tensor) -> torch.Tensor:
    """One int64 hash per row: identifies a validation split without storing it."""
    flat = x.reshape(len(x), -1).to(torch.int64)
    weights = torch.randint(1, 2**62, (flat.shape[1],), generator=torch.Generator().manual_seed(0))
    return flat @ weights  # wraps modulo 2**64


def load_checkpoint(model: nn.Module, checkpoint, name: str, settings: dict, data: Splits, log, *,
                     folder: Path) -> bool:
    """Load a committed baseline into ``model``; False when ``"auto"`` finds none that fits.

    ``checkpoint``: None (train), ``"auto"`` (``folder/NAME.pt`` when it exists and
    matches ``settings`` and the validation split) or a path (an error when it does
    not match)."""
    if checkpoint is None:
        return False
    auto = checkpoint == "auto"
    path = Path(folder) / f"{name}.pt" if auto else Path(checkpoint).expanduser()
    if not path.is_file():
        if auto:
            return False
        raise FileNotFoundError(f"baseline checkpoint not found: {path}")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    info = saved.get("info", {})
    why = None
    if info.get("settings") != settings:
        why = f"it was trained with {info.get('settings')}, not {settings}"
    elif not bool(torch.isin(row_keys(data.val.x), saved["val_keys"]).all()):
        why = "the validation split differs from the one it was trained beside (it may have trained on it)"
    else:
        try:
            model.load_state_dict(saved["state_dict"])
        except RuntimeError as exc:
            why = f"its weights do not fit the model ({exc})"
    if why is not None:
        if not auto:
            raise ValueError(f"baseline checkpoint {path} does not match: {why}.")
        if log is not None:
            log(f"not using baseline checkpoint {path}: {why}; training instead")
        return False
    if log is not None:
        log(f"loaded baseline checkpoint {path} (test accuracy {info.get('test_accuracy', float('nan')):.4f})")
    return True
