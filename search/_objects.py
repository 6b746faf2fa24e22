"""The Python route: a study of a model and a task held in memory.

``compresstune.search.run(model, task, space={...}, trials=40, out=...)`` builds its
config from keyword sections, validated exactly as a study file is, and keeps in
the output folder what the command line needs later: the uncompressed model
(``model.pt``, saved with ``torch.save``) and the task (``task.pt``), both with
cloudpickle, so that classes defined in the user's own script (``__main__``) are
kept by value and load in another process; a task that still does not pickle
(an open file, a generator) is not kept, and ``export`` says it cannot re-check
the metric.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Callable

import torch

from compresstune.errors import ConfigError
from compresstune.search.config import StudyConfig

__all__ = ["MODEL_FILE", "TASK_FILE", "config_from_sections", "load_saved", "save_objects"]

MODEL_FILE = "model.pt"
TASK_FILE = "task.pt"
SECTIONS = ("space", "objectives", "finetune", "constraints", "activation_bits", "latency", "resources", "search",
            "sensitivity", "early_stopping", "promotion")
SHORTCUTS = ("trials", "out", "sampler", "seed", "workers", "address", "storage", "max_failures")


def config_from_sections(name: str | None, sections: dict[str, Any], shortcuts: dict[str, Any]) -> StudyConfig:
    """The study config of the Python route: one dict per study-file section plus the ``search``
    shortcuts (``trials=``, ``out=``, ...), validated as a study file is.

    Example:
        >>> config_from_sections("mine", {"finetune": {"steps": 50}}, {"trials": 8}).search.trials
        8
    """
    data: dict[str, Any] = {"name": name or _name_of(shortcuts.get("out"))}
    for key, value in sections.items():
        if value is not None:
            data[key] = value
    search = dict(data.get("search") or {})
    search.update({k: v for k, v in shortcuts.items() if v is not None})
    if search:
        data["search"] = search
    return StudyConfig.from_dict(data, source="compresstune.search.run(...)")


def _name_of(out: Any) -> str:
    """The study's default name: its output folder's name when that is a valid study name."""
    import re

    name = Path(str(out)).name if out else ""
    return name if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) else "study"


def save_objects(out: Path, model: torch.nn.Module, task: Any, log: Callable[[str], None]) -> None:
    """Write ``model.pt`` and, when the task pickles, ``task.pt`` into the output folder."""
    from ray import cloudpickle

    torch.save(model, out / MODEL_FILE, pickle_module=cloudpickle)
    try:
        blob = cloudpickle.dumps(task)
    except Exception as exc:  # noqa: BLE001 - a task that does not pickle only loses export's check
        (out / TASK_FILE).unlink(missing_ok=True)
        log(f"the task could not be saved ({type(exc).__name__}: {exc}); `compresstune export` will not "
            "re-check the metric. Define the task's class in an importable module to keep it.")
        return
    (out / TASK_FILE).write_bytes(blob)


def load_saved(out: Path) -> tuple[torch.nn.Module, Any | None, str | None]:
    """``(model, task or None, why the task is missing)`` from a Python-route output folder."""
    path = out / MODEL_FILE
    if not path.exists():
        raise ConfigError(f"{str(out)!r} holds no {MODEL_FILE}: the study was run from Python and its model was "
                          "not saved; run it again with this compresstune version.")
    try:
        model = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - say which file and why, not a bare unpickling error
        raise ConfigError(f"cannot load the study's model from {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    task_path = out / TASK_FILE
    if not task_path.exists():
        return model, None, "the task was not saved (it could not be pickled)"
    try:
        return model, pickle.loads(task_path.read_bytes()), None
    except Exception as exc:  # noqa: BLE001 - the class may no longer be importable
        return model, None, f"the task could not be loaded ({type(exc).__name__}: {exc})"
