"""Study module: CIFAR-10 with the CIFAR ResNets (20 and 56 in the studies).

The data comes from the JPEG archive (by default
``../shared/data/cifar10-jpg.tar.gz`` relative to the current directory); the
decoded arrays are cached in ``cache_dir`` (default ``.cache/data``) so only the
first call pays the ~11 s of JPEG decoding. The baseline trains with SGD,
Nesterov momentum, a cosine schedule, weight decay 5e-4 and random crop + flip
augmentation; an epoch takes minutes on 2 CPU cores, so train it on a GPU or
lower ``epochs`` for a quick run.

``baseline`` loads ``studies/checkpoints/cifar10_resnet20.pt`` when that file was
trained with the same settings on the same validation cut (see
``studies/checkpoints/README.md``); otherwise it trains and caches the model.

Example:
    >>> from studies import cifar10
    >>> d = cifar10.data()  # doctest: +SKIP
    >>> model = cifar10.baseline(data=d, cache_dir=".cache/baselines")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from compresstune.data import Splits

from .datasets import load_cifar10
from .training import fit_cached

from .resnet_cifar import CifarResNet, load_published

from ._common import describe, load_checkpoint, row_keys, subset  # noqa: F401 (row_keys: benchmarks/common.py)

__all__ = ["baseline", "crop_flip", "data"]

PAD = 4
CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
_NOT_SETTINGS = ("data", "cache_dir", "log", "checkpoint")


def data(
    *,
    path: str | Path = "../shared/data/cifar10-jpg.tar.gz",
    cache_dir: str | Path | None = ".cache/data",
    val_size: int = 5000,
    seed: int = 0,
    train_size: int | None = None,
    test_size: int | None = None,
) -> Splits:
    """The CIFAR-10 splits; see :func:`studies.datasets.load_cifar10`.

    ``train_size`` / ``test_size`` keep a random subset (drawn with ``seed``) of
    the training / test split (recovery fine-tunes and smoke runs); None keeps all.

    Example:
        >>> len(data().train)  # doctest: +SKIP
        45000
    """
    splits = load_cifar10(path, cache_dir=cache_dir, val_size=val_size, seed=seed)
    return subset(splits, seed, train_size=train_size, test_size=test_size)


def crop_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard CIFAR augmentation: zero-pad by 4, random 32x32 crop, random horizontal flip.

    Args:
        x: a batch of images ``(N, C, H, W)`` (any dtype).
        generator: source of the crop offsets and flips.

    Returns:
        A batch of the same shape and dtype.

    Example:
        >>> crop_flip(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.Generator()).shape
        torch.Size([2, 3, 32, 32])
    """
    n, c, h, w = x.shape
    padded = F.pad(x, (PAD, PAD, PAD, PAD))
    dy = torch.randint(0, 2 * PAD + 1, (n, 1), generator=generator)
    dx = torch.randint(0, 2 * PAD + 1, (n, 1), generator=generator)
    rows = (dy + torch.arange(h)).view(n, 1, h, 1)
    cols = (dx + torch.arange(w)).view(n, 1, 1, w)
    out = padded[torch.arange(n).view(n, 1, 1, 1), torch.arange(c).view(1, c, 1, 1), rows, cols]
    flip = (torch.rand(n, generator=generator) < 0.5).view(n, 1, 1, 1)
    return torch.where(flip, out.flip(3), out)


def baseline(
    *,
    data: Splits,
    cache_dir: str | Path,
    depth: int = 20,
    pretrained: str | Path | None = None,
    epochs: int = 30,
    lr: float = 0.1,
    batch_size: int = 128,
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    augment: bool = True,
    seed: int = 0,
    keep_best: bool = True,
    checkpoint: str | Path | None = "auto",
    log: Callable[[str], Any] | None = None,
) -> nn.Module:
    """A trained CIFAR ResNet (:class:`studies.resnet_cifar.CifarResNet`): the
    committed checkpoint, or trained (from scratch or from published weights)
    and cached in ``cache_dir``.

    Args:
        data: the splits from :func:`data`.
        cache_dir: folder for the cached weights.
        depth: 20, 32, 44 or 56.
        pretrained: published weights to start from (e.g.
            ``../shared/data/pretrained/resnet20-12fca82f.th``, relative to the
            current directory); None trains from scratch.
        epochs: training epochs; the cosine schedule spans all of them.
        lr: peak SGD learning rate.
        batch_size: rows per step.
        weight_decay: L2 penalty.
        momentum: Nesterov momentum.
        augment: apply :func:`crop_flip` to training batches.
        seed: seeds initialisation, shuffling and augmentation.
        keep_best: end with the epoch of highest validation accuracy (chosen on
            ``data.val`` only).
        checkpoint: ``"auto"`` loads ``studies/checkpoints/cifar10_resnet<depth>.pt``
            when it exists and matches these settings and ``data.val``; a path must
            exist and match; None always trains (and caches).
        log: receives progress lines, and whether the cache was used.

    Returns:
        The model in eval mode.

    Example:
        >>> m = baseline(data=data(), cache_dir=".cache/baselines", epochs=1)  # doctest: +SKIP
    """
    settings = {k: v for k, v in locals().items() if k not in _NOT_SETTINGS}
    if not isinstance(data, Splits) or data.train.x.shape[1:] != (3, 32, 32):
        raise ValueError(f"`data` must be the CIFAR-10 Splits from studies.cifar10.data(); got {describe(data)}.")
    if pretrained is not None and not Path(pretrained).expanduser().is_file():
        raise FileNotFoundError(f"`pretrained` weights not found: {pretrained} (relative paths resolve against "
                                f"the current directory {Path.cwd()}).")
    if not isinstance(augment, bool):
        raise ValueError(f"`augment` must be True or False; got {augment!r}.")
    with torch.random.fork_rng(devices=[]):
        model = CifarResNet(depth, num_classes=data.num_classes)
    if load_checkpoint(model, checkpoint, f"cifar10_resnet{depth}", settings, data, log, folder=CHECKPOINTS):
        return model.eval()

    def make() -> nn.Module:
        if pretrained is None:
            return CifarResNet(depth, num_classes=data.num_classes)
        return load_published(pretrained, depth=depth)

    model, _ = fit_cached(
        make, data, cache_dir=cache_dir, name=f"cifar10-resnet{depth}",
        model_settings={"arch": f"resnet{depth}", "num_classes": data.num_classes,
                        "pretrained": None if pretrained is None else Path(pretrained).name},
        log=log, epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay, seed=seed,
        optimizer="sgd", schedule="cosine", momentum=momentum, augment=crop_flip if augment else None,
        keep_best=keep_best,
    )
    return model
