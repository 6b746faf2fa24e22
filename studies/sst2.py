"""Study module: SST-2 sentiment with a small transformer encoder.

``path`` is a folder with ``train.tsv``, ``dev.tsv`` and ``test.tsv`` (by
default ``../shared/data/sst2`` relative to the current directory). Following
that folder's README, ``train.tsv`` is the training split, ``dev.tsv`` (a
held-out part of the original training set) the validation split, and
``test.tsv`` (the GLUE dev set) the test split. The vocabulary comes from
``train.tsv`` only.

``baseline`` loads ``studies/checkpoints/sst2_transformer.pt`` when that file was
trained with the same settings and vocabulary beside the same validation split
(see ``studies/checkpoints/README.md``); otherwise it trains and caches the model.

Example:
    >>> from studies import sst2
    >>> d = sst2.data()  # doctest: +SKIP
    >>> model = sst2.baseline(data=d, cache_dir=".cache/baselines")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from compresstune.data import Splits

from .datasets import load_tsv
from .models import TextTransformer
from .training import fit_cached

from ._common import describe, load_checkpoint, row_keys, subset  # noqa: F401 (row_keys: benchmarks/common.py)

__all__ = ["baseline", "data", "trim_padding"]

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
_NOT_SETTINGS = ("data", "cache_dir", "log", "checkpoint")


def data(
    *,
    path: str | Path = "../shared/data/sst2",
    max_len: int = 64,
    vocab_size: int = 20000,
    min_freq: int = 2,
    train_size: int | None = None,
    val_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
) -> Splits:
    """The SST-2 splits: train.tsv / dev.tsv / test.tsv as train / val / test.

    See :func:`studies.datasets.load_tsv` for the tokenizer and vocabulary (always
    built from all of train.tsv). ``train_size`` / ``val_size`` / ``test_size`` keep
    a random subset (drawn with ``seed``) of the train / validation / test rows,
    e.g. for smoke runs; None keeps all.

    Example:
        >>> d = data(path="../shared/data/sst2")  # doctest: +SKIP
        >>> len(d.train), len(d.val), len(d.test)  # doctest: +SKIP
        (60614, 6735, 872)
    """
    folder = Path(path).expanduser()
    splits = load_tsv(
        folder / "train.tsv", folder / "dev.tsv", folder / "test.tsv",
        max_len=max_len, vocab_size=vocab_size, min_freq=min_freq, name="sst2",
    )
    return subset(splits, seed, train_size=train_size, val_size=val_size, test_size=test_size)


def trim_padding(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Drop the padding columns every row of a batch shares.

    Most SST-2 training rows are short phrases, so this makes training several
    times faster; :class:`~studies.models.TextTransformer` gives the same
    output with or without trailing padding. Used as ``fit``'s batch transform.

    Example:
        >>> trim_padding(torch.tensor([[5, 6, 0, 0], [7, 0, 0, 0]])).tolist()
        [[5, 6], [7, 0]]
    """
    used = int((x != 0).sum(dim=1).max()) if x.numel() else 0
    return x[:, : max(used, 1)]


def baseline(
    *,
    data: Splits,
    cache_dir: str | Path,
    d_model: int = 128,
    nhead: int = 4,
    num_layers: int = 2,
    dim_feedforward: int = 256,
    dropout: float = 0.1,
    epochs: int = 3,
    lr: float = 5e-4,
    batch_size: int = 128,
    weight_decay: float = 0.0,
    seed: int = 0,
    checkpoint: str | Path | None = "auto",
    log: Callable[[str], Any] | None = None,
) -> nn.Module:
    """A trained :class:`~studies.models.TextTransformer`: the committed
    checkpoint, or trained and cached in ``cache_dir``.

    The vocabulary size, sequence length and class count come from ``data``.
    Training batches are cut to their longest row (:func:`trim_padding`).

    Args:
        data: the splits from :func:`data`.
        cache_dir: folder for the cached weights.
        d_model: embedding width.
        nhead: attention heads.
        num_layers: encoder layers.
        dim_feedforward: feed-forward width.
        dropout: dropout inside the encoder.
        epochs: training epochs (Adam).
        lr: Adam learning rate.
        batch_size: rows per step.
        weight_decay: L2 penalty.
        seed: seeds initialisation, shuffling and dropout.
        checkpoint: ``"auto"`` loads ``studies/checkpoints/sst2_transformer.pt`` when
            it exists and matches these settings, the vocabulary and ``data.val``;
            a path must exist and match; None always trains (and caches).
        log: receives progress lines, and whether the cache was used.

    Returns:
        The model in eval mode.

    Example:
        >>> m = baseline(data=data(), cache_dir=".cache/baselines", epochs=1)  # doctest: +SKIP
    """
    settings = {k: v for k, v in locals().items() if k not in _NOT_SETTINGS}
    if not isinstance(data, Splits) or not data.vocab or data.train.x.dim() != 2:
        raise ValueError(
            f"`data` must be token-id Splits with a vocabulary, from studies.sst2.data(); got {describe(data)}."
        )
    arch = {
        "vocab_size": len(data.vocab), "d_model": d_model, "nhead": nhead, "num_layers": num_layers,
        "dim_feedforward": dim_feedforward, "max_len": int(data.train.x.shape[1]),
        "num_classes": data.num_classes, "dropout": dropout,
    }
    with torch.random.fork_rng(devices=[]):
        model = TextTransformer(**arch)
    if load_checkpoint(model, checkpoint, "sst2_transformer", settings, data, log, folder=CHECKPOINTS):
        return model.eval()
    model, _ = fit_cached(
        lambda: TextTransformer(**arch), data, cache_dir=cache_dir, name="sst2-transformer",
        model_settings=arch, log=log, epochs=epochs, lr=lr, batch_size=batch_size,
        weight_decay=weight_decay, seed=seed, augment=trim_padding,
    )
    return model
