"""Study module: scikit-learn's bundled 8x8 digits and a small CNN.

Needs no files, and the baseline trains in about a second on 2 CPU cores
(about 0.98 validation accuracy), which makes it the default demo study.

Example:
    >>> from studies import digits
    >>> d = digits.data()
    >>> model = digits.baseline(data=d, cache_dir=".cache/baselines")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from torch import nn

from compresstune.data import Splits

from .datasets import load_digits
from .models import DigitsCNN
from .training import fit_cached

__all__ = ["baseline", "data"]


def data(*, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0) -> Splits:
    """The digits splits; see :func:`studies.datasets.load_digits`.

    Example:
        >>> len(data().train)
        1077
    """
    return load_digits(val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)


def baseline(
    *,
    data: Splits,
    cache_dir: str | Path,
    epochs: int = 20,
    lr: float = 3e-3,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    seed: int = 0,
    log: Callable[[str], Any] | None = None,
) -> nn.Module:
    """A trained :class:`~studies.models.DigitsCNN`, cached in ``cache_dir``.

    The first call trains with Adam and saves the weights under a name that
    hashes these settings and the data; later calls load them.

    Args:
        data: the splits from :func:`data`.
        cache_dir: folder for the cached weights.
        epochs: training epochs.
        lr: Adam learning rate.
        batch_size: rows per step.
        weight_decay: L2 penalty.
        seed: seeds initialisation and shuffling.
        log: receives progress lines, and whether the cache was used.

    Returns:
        The model in eval mode.

    Example:
        >>> m = baseline(data=data(), cache_dir=".cache/baselines")  # doctest: +SKIP
    """
    if not isinstance(data, Splits) or data.train.x.shape[1:] != (1, 8, 8):
        raise ValueError(f"`data` must be the digits Splits from studies.digits.data(); got {_describe(data)}.")
    model, _ = fit_cached(
        lambda: DigitsCNN(num_classes=data.num_classes), data, cache_dir=cache_dir,
        name="digits-cnn", model_settings={"arch": "digits_cnn", "num_classes": data.num_classes},
        log=log, epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay, seed=seed,
    )
    return model


def _describe(data: Any) -> str:
    if isinstance(data, Splits):
        return f"{data.name!r} splits with x of shape {tuple(data.train.x.shape)}"
    return type(data).__name__
