"""The Ray cluster a run uses: a local Ray (``search.workers``) or the cluster at
``search.address``; the study's own modules shipped to the workers; Tune's
environment and logging kept quiet."""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import json
import logging
import math
import os
import signal
import socket
import sys
import sysconfig
import threading
import time
from pathlib import Path
from typing import Any

import ray

from compresstune.search._session import Session
from compresstune.search._storage import SearchError

__all__ = ["ray_cluster", "runtime_env_for", "study_modules"]

_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def _installed(top: str) -> bool:
    """True when ``top`` is part of an installed distribution or the standard library."""
    if top in sys.builtin_module_names or top in getattr(sys, "stdlib_module_names", ()):
        return True
    try:
        if top in importlib.metadata.packages_distributions():
            return True
    except Exception:  # noqa: BLE001 - broken metadata: fall back to the path test
        pass
    module = sys.modules.get(top)
    path = getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", []) or []), None)
    if path is None:
        return True  # namespace or built-in: nothing we could ship
    roots = {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib", "platstdlib")}
    return any(Path(path).resolve().is_relative_to(Path(r).resolve()) for r in roots)


def study_modules(session: Session) -> list:
    """The top-level modules a worker needs that are not installed: those of the
    model, data and task factories, of the task's class and of every module class
    in the baseline model."""
    c = session.config
    names = {spec.factory.partition(":")[0] for spec in (c.model, c.data, c.task) if spec is not None}
    names |= {type(m).__module__ for m in session.context.model.modules()}
    names |= {cls.__module__ for cls in type(session.context.task).__mro__}
    shipped = []
    for top in sorted({n.split(".")[0] for n in names if n and n != "__main__"}):
        if top == "compresstune" or _installed(top):
            continue
        module = sys.modules.get(top) or importlib.import_module(top)
        paths = list(getattr(module, "__path__", []) or [])
        if len(paths) > 1:
            continue  # a namespace package spread over folders: py_modules cannot ship it
        shipped.append(module)
    return shipped


def _job_runtime_env() -> dict:
    """The runtime environment of the Ray job this driver runs in (``ray job submit``), if any."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return {}
    try:
        return dict(json.loads(raw).get("runtime_env") or {})
    except (ValueError, AttributeError):
        return {}


def runtime_env_for(session: Session, log=None) -> dict:
    """``py_modules`` for the study's own modules, unless the job already ships code."""
    job = _job_runtime_env()
    if job.get("working_dir") or job.get("py_modules"):
        return {}  # `ray job submit --working-dir .`: the job's runtime env carries the code
    modules = study_modules(session)
    if not modules:
        return {}
    if log is not None:
        log("ray: shipping study modules to the workers: " + ", ".join(m.__name__ for m in modules))
    return {"py_modules": modules, "excludes": ["__pycache__/", "*.pyc", ".git/"]}


def _is_local_address(address: str) -> bool:
    host = address.rsplit(":", 1)[0] if ":" in address else address
    return host in _LOOPBACK or host == socket.gethostname()


def _match_token_auth(address: str) -> None:
    """For a head on this machine, follow ``ray start``'s rule: with RAY_AUTH_MODE unset and
    a token available (~/.ray/auth_token, RAY_AUTH_TOKEN(_PATH)), use token authentication."""
    if "RAY_AUTH_MODE" in os.environ or address == "auto" or not _is_local_address(address):
        return
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # another Ray version: leave it to Ray
        return
    with contextlib.suppress(Exception):
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


@contextlib.contextmanager
def _environ(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _keep_sigterm_handler():
    """``ray.init`` replaces the SIGTERM handler with ``sys.exit``; keep the controller's
    (SIGTERM as Ctrl-C), so in-flight trials are recorded as interrupted."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def ray_cluster(session: Session):
    """Start a local Ray (``search.workers``) or connect to ``search.address``; yields the
    number of trials to run at once. Shuts down only what it started or connected."""
    cfg, res = session.config.search, session.config.resources
    log = session.log
    if ray.is_initialized():
        yield _concurrency(cfg.workers, res)
        return
    if cfg.address and cfg.address.startswith("ray://"):
        raise SearchError(
            f"`search.address` {cfg.address!r}: Ray Client (ray://) is not supported: Ray Tune would run the "
            "search loop on the head node, away from this driver's storage. Run the driver on a cluster node "
            "instead: `ray job submit --working-dir . -- compresstune run ... --address auto`, or "
            "`--address HOST:PORT` (the GCS address that `ray start --head` prints) from a node of the cluster.")
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False,
                              "runtime_env": runtime_env_for(session, log) or None}
    t0 = time.perf_counter()
    with _keep_sigterm_handler(), _quiet_tune():
        if cfg.address:
            _match_token_auth(cfg.address)
            try:
                ray.init(address=cfg.address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise SearchError(
                    f"cannot connect to the Ray cluster at {cfg.address!r}: {type(exc).__name__}: {exc}. "
                    "Is it running (`ray status`)? Every node and this driver need the same RAY_AUTH_MODE "
                    "(`ray start` turns token authentication on when ~/.ray/auth_token exists: then set "
                    "RAY_AUTH_MODE=token here too).") from None
            where = f"the Ray cluster at {cfg.address}"
        else:
            cpus = max(1, math.ceil(cfg.workers * res.cpus_per_trial - 1e-9))
            gpus = math.ceil(cfg.workers * res.gpus_per_trial - 1e-9) if res.gpus_per_trial else 0
            env = {k: v for k, v in os.environ.items() if k == "RAY_ADDRESS"}
            os.environ.pop("RAY_ADDRESS", None)  # --workers means a new local Ray, even inside a job
            try:
                ray.init(address="local", num_cpus=cpus, num_gpus=gpus or None, include_dashboard=False, **kwargs)
            finally:
                os.environ.update(env)
            where = f"a local Ray with {cpus} CPUs" + (f" and {gpus} GPUs" if gpus else "")
    try:
        total = ray.cluster_resources()
        log(f"ray: {where} ({total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs in "
            f"{len(ray.nodes())} node(s); ready in {time.perf_counter() - t0:.1f} s)")
        _check_resources(total, res, local=not cfg.address, log=log)
        yield _concurrency(cfg.workers, res, total)
    finally:
        ray.shutdown()


def _check_resources(total: dict, res, *, local: bool, log=None) -> None:
    missing = [f"{need:g} {kind}" for kind, need in (("CPU", res.cpus_per_trial), ("GPU", res.gpus_per_trial))
               if need > total.get(kind, 0)]
    if not missing:
        return
    what = (f"a trial asks for {' and '.join(missing)} (resources.cpus_per_trial / gpus_per_trial) but "
            f"{'this machine' if local else 'the cluster'} has {total.get('CPU', 0):g} CPUs and "
            f"{total.get('GPU', 0):g} GPUs")
    if local:
        raise SearchError(what + ".")
    if log is not None:  # an autoscaling cluster may still grow: wait, but say why nothing runs
        log(f"ray: warning: {what} now; trials wait until the cluster has them")


def _concurrency(workers: int, res, total: dict | None = None) -> int:
    """``search.workers`` trials at once; with none given, as many as the cluster fits now."""
    if workers:
        return workers
    total = total if total is not None else ray.cluster_resources()
    fits = [total.get("CPU", 0) / res.cpus_per_trial]
    if res.gpus_per_trial:
        fits.append(total.get("GPU", 0) / res.gpus_per_trial)
    return max(1, int(math.floor(min(fits) + 1e-9)))


_TUNE_ENV = {"TUNE_DISABLE_SIGINT_HANDLER": "1", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "RAY_AIR_NEW_OUTPUT": "0",
             "TUNE_GLOBAL_CHECKPOINT_S": "3600"}


def _trial_name(trial) -> str:
    return f"trial_{trial.config.get('number', 'x')}_{trial.trial_id}"


class _DropTuneNoise(logging.Filter):
    """Tune logs each worker death with a traceback (we log one line per retry), warns about
    slow callbacks (recording a trial writes the storage and the artifact) and about the
    per-trial result files we do not write (the study is the record)."""

    NOISE = ("Trial task failed", "operation took", "Processing trial results took", "Failed to fetch metrics")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in str(record.msg) for text in self.NOISE)


_TUNE_LOGGERS = ("ray.tune.execution.tune_controller", "ray.tune.utils.util", "ray.tune.analysis.experiment_analysis")
_QUIET = ("ray.train", "ray.air", "ray._private.authentication")


@contextlib.contextmanager
def _quiet_tune():
    noise = _DropTuneNoise()
    tune_loggers = [logging.getLogger(name) for name in _TUNE_LOGGERS]
    quiet = [logging.getLogger(name) for name in _QUIET]
    levels = [lg.level for lg in quiet]
    for lg in tune_loggers:
        lg.addFilter(noise)
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg in tune_loggers:
            lg.removeFilter(noise)
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)

