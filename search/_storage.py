"""Where a study lives: the storage URL, the output folder's pointer file and lock,
and the repair of trials left RUNNING by a driver that died."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import filelock
import optuna

from compresstune.errors import CompressTuneError
from compresstune.search._records import DRIVER, REQUEUED_FROM, Records

__all__ = ["RunLock", "SearchError", "StudyPointer", "default_storage", "driver_id", "open_storage",
           "read_pointer", "repair_interrupted", "requeue", "write_pointer"]

POINTER = "study.json"


class SearchError(CompressTuneError):
    """The search cannot start or go on (locked folder, no study, too many failures)."""


def default_storage(out: Path) -> str:
    """``sqlite:///OUT/study.db``: one file beside the artifacts; right for a single driver."""
    return f"sqlite:///{Path(out).resolve() / 'study.db'}"


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``: any RDB URL, or ``journal:PATH`` for a journal file.

    Opening it connects: a missing database driver, an unreachable database or a
    journal folder that does not exist raise :class:`SearchError` here.
    """
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            path = Path(url.removeprefix("journal:"))
            if not path.parent.is_dir():
                raise FileNotFoundError(f"no folder {str(path.parent)!r}")
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as exc:  # noqa: BLE001 - driver/URL errors come in many types
        raise SearchError(f"cannot open storage {url!r}: {type(exc).__name__}: {exc}") from None


class StudyPointer(dict):
    """``OUT/study.json``: which storage and study an output folder belongs to."""

    @property
    def storage(self) -> str:
        return self["storage"]

    @property
    def study_name(self) -> str:
        return self["study_name"]


def write_pointer(out: Path, storage: str, study_name: str, study_file: str | None) -> None:
    data = {"storage": storage, "study_name": study_name, "study_file": study_file}
    tmp = Path(out) / (POINTER + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, Path(out) / POINTER)


def read_pointer(out: str | os.PathLike) -> StudyPointer:
    path = Path(out) / POINTER
    if not path.exists():
        raise SearchError(f"{str(out)!r} is not a compresstune output folder (no {POINTER}); run `compresstune run` first.")
    return StudyPointer(json.loads(path.read_text()))


def load_study(out: str | os.PathLike) -> optuna.Study:
    """The study an output folder points to."""
    pointer = read_pointer(out)
    return optuna.load_study(study_name=pointer.study_name, storage=open_storage(pointer.storage))


def driver_id(out: Path) -> str:
    """Identifies the driver that owns an output folder (RUNNING trials of other drivers
    sharing a storage are left alone)."""
    return f"{socket.gethostname()}:{Path(out).resolve()}"


class RunLock:
    """Exclusive lock on an output folder for the lifetime of one driver.

    The OS releases it when the process dies (even by SIGKILL), so a free lock
    at start means any RUNNING trial of this folder was orphaned.
    """

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / ".lock"
        self._lock = filelock.FileLock(str(self.path), timeout=0)

    def __enter__(self) -> "RunLock":
        try:
            self._lock.acquire()
        except filelock.Timeout:
            raise SearchError(
                f"another compresstune run is using {str(self.path.parent)!r} (its lock {str(self.path)!r} is held); "
                "wait for it to finish or use another --out folder."
            ) from None
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()


def repair_interrupted(study: optuna.Study, driver: str,
                       reason: str = "interrupted: the driver stopped while it ran") -> list[int]:
    """Mark this driver's RUNNING trials FAIL ("interrupted") and enqueue their parameters again.

    Only call while holding the folder's :class:`RunLock`. Returns the trial numbers repaired.
    """
    records = Records(study)
    repaired = []
    for t in records.running():
        if t.user_attrs.get(DRIVER, driver) != driver:
            continue
        records.fail(t, reason, "interrupted")
        requeue(study, t)
        repaired.append(t.number)
    return repaired


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue an interrupted trial's parameters again. A queued trial (a seed, an earlier
    requeue) stopped before its space drew every parameter keeps the ones it was queued
    with, and a seed (or promoted) trial stays marked as one."""
    params = Records(study).queued_params(trial)
    keep = {k: v for k, v in trial.user_attrs.items() if k.startswith(("seed_", "promot"))}
    study.enqueue_trial(params, user_attrs={REQUEUED_FROM: trial.number, **keep}, skip_if_exists=False)
