"""A prepared study, as the executors receive it, and the study's own factories
(data and baseline model) called the way the study file names them."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
import torch

from compresstune.search.config import StudyConfig, resolve_import
from compresstune.errors import ConfigError
from compresstune.search._trial import TrialContext

__all__ = ["Session", "load_data_and_model"]


@dataclass
class Session:
    """A prepared study: everything the executors need."""

    config: StudyConfig
    out: Path
    study: optuna.Study
    space: Any  # compresstune.spaces.Space
    context: TrialContext
    driver: str
    log: Callable[[str], None]



def _call_factory(spec: str, kwargs: dict, **injected) -> Any:
    fn = resolve_import(spec)
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    extra = {k: v for k, v in injected.items() if takes_any or k in params}
    return fn(**kwargs, **extra)


def load_data_and_model(config: StudyConfig, out: Path):
    """The study's splits and trained baseline (cached under ``OUT/cache``)."""
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    splits = _call_factory(config.data.factory, dict(config.data.kwargs), cache_dir=cache)
    model = _call_factory(config.model.factory, dict(config.model.kwargs), data=splits, cache_dir=cache)
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"`model.factory` {config.model.factory!r} must return an nn.Module; got {type(model).__name__}.")
    return splits, model.eval()


