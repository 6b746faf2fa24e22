"""Study module: MNIST with LeNet-300-100 or LeNet-5 (Caffe variant).

The data comes from the idx files in ``path`` (by default ``../shared/data/mnist``
relative to the current directory, the project's layout). Training on 2 CPU
cores takes about a few seconds an epoch for LeNet-300-100 and several times
that for LeNet-5.

``baseline`` loads ``studies/checkpoints/mnist_<arch>.pt`` when that file was
trained with the same settings on the same validation cut (see
``studies/checkpoints/README.md``); otherwise it trains and caches the model.

Example:
    >>> from studies import mnist
    >>> d = mnist.data(path="../shared/data/mnist")  # doctest: +SKIP
    >>> model = mnist.baseline(data=d, cache_dir=".cache/baselines", arch="lenet5")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from compresstune.data import Split, Splits, load_mnist
from compresstune.models import LeNet5, LeNet300
from compresstune.train import fit_cached

__all__ = ["ARCHS", "baseline", "data"]

ARCHS: dict[str, type[nn.Module]] = {"lenet300": LeNet300, "lenet5": LeNet5}
CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
_NOT_SETTINGS = ("data", "cache_dir", "log", "checkpoint")


def data(
    *,
    path: str | Path = "../shared/data/mnist",
    val_size: int = 5000,
    seed: int = 0,
    train_size: int | None = None,
    test_size: int | None = None,
) -> Splits:
    """The MNIST splits; see :func:`compresstune.data.load_mnist`.

    ``train_size`` / ``test_size`` keep a random subset (drawn with ``seed``) of
    the training / test split, e.g. for quick smoke runs; None keeps all.

    Example:
        >>> len(data(path="../shared/data/mnist").test)  # doctest: +SKIP
        10000
    """
    return _subset(load_mnist(path, val_size=val_size, seed=seed), seed, train_size=train_size,
                   test_size=test_size)


def baseline(
    *,
    data: Splits,
    cache_dir: str | Path,
    arch: str = "lenet300",
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 128,
    weight_decay: float = 0.0,
    seed: int = 0,
    checkpoint: str | Path | None = "auto",
    log: Callable[[str], Any] | None = None,
) -> nn.Module:
    """A trained LeNet: the committed checkpoint, or trained and cached in ``cache_dir``.

    Args:
        data: the splits from :func:`data`.
        cache_dir: folder for the cached weights.
        arch: ``"lenet300"`` (LeNet-300-100) or ``"lenet5"``.
        epochs: training epochs (Adam).
        lr: Adam learning rate.
        batch_size: rows per step.
        weight_decay: L2 penalty.
        seed: seeds initialisation and shuffling.
        checkpoint: ``"auto"`` loads ``studies/checkpoints/mnist_<arch>.pt`` when it
            exists and matches these settings and ``data.val``; a path must exist
            and match; None always trains (and caches).
        log: receives progress lines, and whether the cache was used.

    Returns:
        The model in eval mode.

    Example:
        >>> m = baseline(data=data(), cache_dir=".cache/baselines", arch="lenet5")  # doctest: +SKIP
    """
    settings = {k: v for k, v in locals().items() if k not in _NOT_SETTINGS}
    if arch not in ARCHS:
        raise ValueError(f"`arch` must be one of {sorted(ARCHS)}; got {arch!r}.")
    if not isinstance(data, Splits) or data.train.x.shape[1:] != (1, 28, 28):
        raise ValueError(f"`data` must be the MNIST Splits from studies.mnist.data(); got {_describe(data)}.")
    with torch.random.fork_rng(devices=[]):
        model = ARCHS[arch](num_classes=data.num_classes)
    if _load_checkpoint(model, checkpoint, f"mnist_{arch}", settings, data, log):
        return model.eval()
    model, _ = fit_cached(
        lambda: ARCHS[arch](num_classes=data.num_classes), data, cache_dir=cache_dir,
        name=f"mnist-{arch}", model_settings={"arch": arch, "num_classes": data.num_classes},
        log=log, epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay, seed=seed,
    )
    return model


def _describe(data: Any) -> str:
    if isinstance(data, Splits):
        return f"{data.name!r} splits with x of shape {tuple(data.train.x.shape)}"
    return type(data).__name__


# -- helpers shared in spirit by the MNIST, CIFAR-10 and SST-2 study modules ------------

def _subset(d: Splits, seed: int, **sizes: int | None) -> Splits:
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


def _row_keys(x: torch.Tensor) -> torch.Tensor:
    """One int64 hash per row: identifies a validation split without storing it."""
    flat = x.reshape(len(x), -1).to(torch.int64)
    weights = torch.randint(1, 2**62, (flat.shape[1],), generator=torch.Generator().manual_seed(0))
    return flat @ weights  # wraps modulo 2**64


def _load_checkpoint(model: nn.Module, checkpoint, name: str, settings: dict, data: Splits, log) -> bool:
    """Load a committed baseline into ``model``; False when ``"auto"`` finds none that fits."""
    if checkpoint is None:
        return False
    auto = checkpoint == "auto"
    path = CHECKPOINTS / f"{name}.pt" if auto else Path(checkpoint).expanduser()
    if not path.is_file():
        if auto:
            return False
        raise FileNotFoundError(f"baseline checkpoint not found: {path}")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    info = saved.get("info", {})
    why = None
    if info.get("settings") != settings:
        why = f"it was trained with {info.get('settings')}, not {settings}"
    elif not bool(torch.isin(_row_keys(data.val.x), saved["val_keys"]).all()):
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
