"""Plain supervised training, used to train the example studies' baselines.

:func:`fit` trains with cross-entropy (Adam, or SGD with momentum; constant or
cosine learning rate), scoring with :func:`compresstune.objectives.accuracy`
and batching with :func:`compresstune.data.iterate_batches`.
:func:`fit_cached` trains once and keeps the weights on disk, keyed by a
hash of everything that determines them.

Training never touches the global random state: it runs under
``torch.random.fork_rng`` seeded with ``seed``, so the same call gives the same
weights and the caller's random stream is left as it was.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from compresstune._validation import check_int, check_number, check_one_of
from compresstune.data import Split, Splits, iterate_batches
from compresstune.errors import TrainingError
from compresstune.objectives import accuracy

__all__ = ["cache_key", "fit", "fit_cached"]

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine")
_CACHE_VERSION = 1

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _check_split(name: str, split: Any) -> None:
    if not isinstance(split, Split):
        raise TrainingError(f"`{name}` must be a compresstune.data.Split; got {type(split).__name__}.")
    if len(split) == 0:
        raise TrainingError(f"`{name}` must hold at least one example; got an empty Split.")


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _rng_devices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def _make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float):
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainingError("`model` has no trainable parameters to fit.")
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)


def _check_fit_args(train, val, epochs, batch_size, lr, weight_decay, seed, optimizer, schedule, momentum):
    _check_split("train", train)
    if val is not None:
        _check_split("val", val)
    check_int("epochs", epochs, 0, TrainingError)
    check_int("batch_size", batch_size, 1, TrainingError)
    check_number("lr", lr, "a finite number > 0", lambda v: v > 0, TrainingError)
    check_number("weight_decay", weight_decay, "a finite number >= 0", lambda v: v >= 0, TrainingError)
    check_number("momentum", momentum, "a number in [0, 1)", lambda v: 0 <= v < 1, TrainingError)
    check_int("seed", seed, 0, TrainingError)
    check_one_of("optimizer", optimizer, OPTIMIZERS, TrainingError)
    check_one_of("schedule", schedule, SCHEDULES, TrainingError)


def _train_epoch(model, train, opt, sched, batch_size, gen, augment, device) -> float:
    """One pass over ``train``; returns the mean loss. Raises on a non-finite loss."""
    model.train()
    total, seen = torch.zeros((), device=device), 0
    # A batch of one breaks BatchNorm in train mode; drop it when it is a remainder.
    drop_last = len(train) % batch_size == 1 and len(train) > 1
    for x, y in iterate_batches(train, batch_size, shuffle=True, generator=gen, drop_last=drop_last):
        if augment is not None:
            x = augment(x, gen)
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        total += loss.detach() * len(y)
        seen += len(y)
    mean = float(total) / max(seen, 1)
    if not math.isfinite(mean):
        raise FloatingPointError(f"training loss became {mean}; lower `lr` or check the data for NaN/inf.")
    return mean


def fit(
    model: nn.Module,
    train: Split,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    val: Split | None = None,
    log: Callable[[str], Any] | None = None,
    optimizer: str = "adam",
    schedule: str = "constant",
    momentum: float = 0.9,
    augment: Augment | None = None,
    keep_best: bool = False,
) -> dict:
    """Train ``model`` in place with cross-entropy.

    Batches are moved to the device of the model's parameters. The model's
    train/eval mode is restored at the end.

    Args:
        model: maps a batch of ``train.x`` to logits.
        train: training data.
        epochs: passes over ``train`` (0 only evaluates).
        batch_size: rows per step.
        lr: (peak) learning rate.
        weight_decay: L2 penalty passed to the optimizer.
        seed: seeds shuffling, augmentation and dropout; the global random
            state is restored afterwards.
        val: scored after every epoch when given.
        log: called with one line per epoch.
        optimizer: ``"adam"`` or ``"sgd"`` (Nesterov momentum ``momentum``).
        schedule: ``"constant"`` or ``"cosine"`` (annealed per step to 0).
        momentum: SGD momentum; ignored by Adam.
        augment: ``augment(x, generator) -> x`` applied to each training batch
            on the CPU before it is moved to the device.
        keep_best: with ``val``, end with the weights of the epoch whose
            validation accuracy was highest (the first such epoch; the choice is
            made on ``val`` only, never on a test split).

    Returns:
        ``{"epochs", "seconds", "train_loss", "val_accuracy", "best_epoch", "val_curve"}``;
        ``val_accuracy`` (of the weights the model ends with) is ``None`` without
        ``val``, ``train_loss`` is ``None`` for 0 epochs, ``best_epoch`` is the
        epoch kept (``epochs`` unless ``keep_best``) and ``val_curve`` lists the
        validation accuracy after each epoch.

    Raises:
        FloatingPointError: the mean loss of an epoch is NaN or infinite.

    Example:
        >>> s = Split(torch.randn(64, 2), torch.randint(0, 2, (64,)))
        >>> fit(nn.Linear(2, 2), s, epochs=1)["epochs"]
        1
    """
    _check_fit_args(train, val, epochs, batch_size, lr, weight_decay, seed, optimizer, schedule, momentum)
    if not isinstance(keep_best, bool) or (keep_best and val is None):
        raise TrainingError(f"`keep_best` must be True (with `val`) or False; got {keep_best!r} with val={val is not None}.")
    device = _device_of(model)
    was_training = model.training
    opt = _make_optimizer(model, optimizer, lr, weight_decay, momentum)
    steps = epochs * max(1, len(train) // batch_size + (len(train) % batch_size > 1))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1)) if schedule == "cosine" else None
    start = time.perf_counter()
    loss, val_acc, curve, best = None, None, [], None
    try:
        with torch.random.fork_rng(devices=_rng_devices(device)):
            torch.manual_seed(seed)
            gen = torch.Generator().manual_seed(seed)
            for epoch in range(1, epochs + 1):
                loss = _train_epoch(model, train, opt, sched, batch_size, gen, augment, device)
                val_acc = accuracy(model, val) if val is not None else None
                curve.append(val_acc)
                if keep_best and (best is None or val_acc > best[1]):
                    best = (epoch, val_acc, {k: v.detach().clone() for k, v in model.state_dict().items()})
                if log is not None:
                    shown = "" if val_acc is None else f" val_accuracy {val_acc:.4f}"
                    log(f"epoch {epoch}/{epochs} loss {loss:.4f}{shown} ({time.perf_counter() - start:.1f}s)")
        if best is not None:
            model.load_state_dict(best[2])
            val_acc = best[1]
        if epochs == 0 and val is not None:
            val_acc = accuracy(model, val)
    finally:
        model.train(was_training)
    return {"epochs": epochs, "seconds": time.perf_counter() - start, "train_loss": loss, "val_accuracy": val_acc,
            "best_epoch": best[0] if best is not None else epochs, "val_curve": [v for v in curve if v is not None]}


# --------------------------------------------------------------------------- cached baselines


def _data_fingerprint(data: Splits) -> str:
    """Hash of the train and validation tensors: a different cut means a different model."""
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{data.name}|{data.num_classes}|{len(data.train)}|{len(data.val)}".encode())
    for t in (data.train.x, data.train.y, data.val.x, data.val.y):
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _jsonable(value: Any) -> Any:
    if callable(value):
        # The qualified name only: a study module's import name depends on how it was loaded.
        return getattr(value, "__qualname__", type(value).__qualname__)
    return value


def cache_key(name: str, settings: dict, data: Splits) -> str:
    """Short hash naming a cached baseline: the settings plus the training data.

    Callables in ``settings`` (an ``augment`` function) count by their
    qualified name; anything else must be JSON-serialisable.

    Example:
        >>> from studies.datasets import load_digits
        >>> len(cache_key("digits", {"epochs": 3}, load_digits()))
        12
    """
    try:
        plain = {k: _jsonable(v) for k, v in settings.items()}
        text = json.dumps({"v": _CACHE_VERSION, "name": name, "settings": plain}, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise TrainingError(f"`settings` must be JSON-serialisable to name the cache file; got {settings!r}.") from e
    h = hashlib.blake2b(digest_size=6)
    h.update(text.encode())
    h.update(_data_fingerprint(data).encode())
    return h.hexdigest()


def _save_atomic(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache is meant to be shared
        os.replace(tmp, path)  # readers never see a half-written file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _try_load(model: nn.Module, path: Path, log) -> dict | None:
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["state_dict"])
    except Exception as e:  # a corrupt or foreign file: train again and overwrite it
        if log is not None:
            log(f"ignoring unreadable baseline cache {path} ({type(e).__name__}: {e}); retraining")
        return None
    return dict(saved.get("info", {}))


def fit_cached(
    make_model: Callable[[], nn.Module],
    data: Splits,
    *,
    cache_dir,
    name: str,
    model_settings: dict | None = None,
    log: Callable[[str], Any] | None = None,
    **fit_kwargs: Any,
) -> tuple[nn.Module, dict]:
    """Train a baseline once and reuse it from ``cache_dir`` afterwards.

    The file is ``<cache_dir>/<name>-<hash>.pt``; the hash covers
    ``model_settings``, ``fit_kwargs`` and the training and validation
    tensors, so other settings or another data cut never collide. The model is
    built under ``torch.manual_seed(fit_kwargs.get("seed", 0))`` so its
    initialisation is reproducible. Concurrent callers are serialised with a
    file lock so only one of them trains; an unreadable cache file is retrained
    and overwritten.

    Args:
        make_model: builds a fresh, untrained model.
        data: the splits; trains on ``data.train``, validates on ``data.val``.
        cache_dir: folder for the cached weights (created if missing).
        name: file-name prefix, e.g. ``"mnist-lenet300"``.
        model_settings: JSON-serialisable settings of ``make_model`` (architecture
            name, widths) that must name the cache entry too.
        log: receives progress lines, including whether the cache was used.
        **fit_kwargs: passed to :func:`fit`.

    Returns:
        ``(model, info)``: the model in eval mode on the CPU, and ``info`` with
        ``path``, ``cached`` (True when loaded) and the training summary.

    Example:
        >>> from studies.datasets import load_digits
        >>> from studies.models import DigitsCNN
        >>> model, info = fit_cached(DigitsCNN, load_digits(), cache_dir=".cache/doc",
        ...                          name="digits", epochs=1)  # doctest: +SKIP
        >>> info["cached"]  # doctest: +SKIP
        False
    """
    from filelock import FileLock

    if not isinstance(name, str) or not name or "/" in name or os.sep in name:
        raise TrainingError(f"`name` must be a non-empty file-name prefix without path separators; got {name!r}.")
    settings = {"model": model_settings or {}, **fit_kwargs}
    path = Path(cache_dir).expanduser().absolute() / f"{name}-{cache_key(name, settings, data)}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(fit_kwargs.get("seed", 0)))
        model = make_model()
    with FileLock(str(path) + ".lock"):
        info = _try_load(model, path, log)
        if info is not None:
            if log is not None:
                log(f"loaded cached baseline {path}")
            return model.eval(), {**info, "path": str(path), "cached": True}
        result = fit(model, data.train, val=data.val, log=log, **fit_kwargs)
        model.eval()
        _save_atomic({"state_dict": model.state_dict(), "info": result}, path)
    if log is not None:
        log(f"trained baseline in {result['seconds']:.1f}s, val_accuracy {result['val_accuracy']:.4f}; saved {path}")
    return model, {**result, "path": str(path), "cached": False}
