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

from compresstune.data import Splits

from .datasets import load_mnist
from .models import LeNet5, LeNet300
from .training import fit_cached

from ._common import describe, load_checkpoint, row_keys, subset  # noqa: F401 (row_keys: benchmarks/common.py)

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
    """The MNIST splits; see :func:`studies.datasets.load_mnist`.

    ``train_size`` / ``test_size`` keep a random subset (drawn with ``seed``) of
    the training / test split, e.g. for quick smoke runs; None keeps all.

    Example:
        >>> len(data(path="../shared/data/mnist").test)  # doctest: +SKIP
        10000
    """
    return subset(load_mnist(path, val_size=val_size, seed=seed), seed, train_size=train_size,
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
    optimizer: str = "adam",
    schedule: str = "constant",
    momentum: float = 0.9,
    keep_best: bool = False,
    seed: int = 0,
    checkpoint: str | Path | None = "auto",
    log: Callable[[str], Any] | None = None,
) -> nn.Module:
    """A trained LeNet: the committed checkpoint, or trained and cached in ``cache_dir``.

    Args:
        data: the splits from :func:`data`.
        cache_dir: folder for the cached weights.
        arch: ``"lenet300"`` (LeNet-300-100) or ``"lenet5"``.
        epochs: training epochs.
        lr: (peak) learning rate.
        batch_size: rows per step.
        weight_decay: L2 penalty.
        optimizer: ``"adam"`` or ``"sgd"`` (Nesterov momentum ``momentum``).
        schedule: ``"constant"`` or ``"cosine"`` (annealed per step to 0).
        momentum: SGD momentum; ignored by Adam.
        keep_best: end with the epoch of highest validation accuracy (chosen on
            ``data.val`` only).
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
        raise ValueError(f"`data` must be the MNIST Splits from studies.mnist.data(); got {describe(data)}.")
    with torch.random.fork_rng(devices=[]):
        model = ARCHS[arch](num_classes=data.num_classes)
    if load_checkpoint(model, checkpoint, f"mnist_{arch}", settings, data, log, folder=CHECKPOINTS):
        return model.eval()
    model, _ = fit_cached(
        lambda: ARCHS[arch](num_classes=data.num_classes), data, cache_dir=cache_dir,
        name=f"mnist-{arch}", model_settings={"arch": arch, "num_classes": data.num_classes},
        log=log, epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay, seed=seed,
        optimizer=optimizer, schedule=schedule, momentum=momentum, keep_best=keep_best,
    )
    return model
