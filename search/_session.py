"""A prepared study, as the executors receive it, and the study's own factories
(data or task, and the baseline model) called the way the study file names them."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
import torch

from compresstune.data import Splits
from compresstune.errors import ConfigError
from compresstune.search._trial import TrialContext
from compresstune.search.config import StudyConfig, resolve_import
from compresstune.task import Task
from compresstune.tasks import Classification

__all__ = ["Session", "load_model_and_task", "task_of"]


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


def task_of(data: Any, config: StudyConfig, field: str = "data.factory") -> Task:
    """The task of what a data or task factory returned: a Task as is; in-memory
    :class:`~compresstune.data.Splits` as a :class:`~compresstune.tasks.Classification`
    cut into the study's ``finetune.batch_size`` / ``eval_batch_size``."""
    if isinstance(data, Task):
        return data
    if isinstance(data, Splits):
        f = config.finetune
        return Classification.from_splits(data, batch_size=f.batch_size, eval_batch_size=f.eval_batch_size)
    spec = getattr(config, field.split(".")[0]).factory
    raise ConfigError(f"`{field}` {spec!r} must return a compresstune.Task or compresstune.data.Splits; "
                      f"got {type(data).__name__}.")


def load_model_and_task(config: StudyConfig, out: Path) -> tuple[torch.nn.Module, Task]:
    """The study's trained baseline and its task, from the study file's factories
    (data and model cached under ``OUT/cache`` by the example studies)."""
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    section = "task" if config.task is not None else "data"
    spec = getattr(config, section)
    data = _call_factory(spec.factory, dict(spec.kwargs), cache_dir=cache)
    task = task_of(data, config, f"{section}.factory")
    model = _call_factory(config.model.factory, dict(config.model.kwargs), data=data, task=task, cache_dir=cache)
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"`model.factory` {config.model.factory!r} must return an nn.Module; got {type(model).__name__}.")
    return model.eval(), task
