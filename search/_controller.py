"""The controller: prepares a study (data, baseline, space, storage) and runs its
trials in-process or on Ray; only this driver process writes the storage."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import signal
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import optuna
import torch

import compresstune
from compresstune.artifact import reference_size, to_bytes
from compresstune.search.config import StudyConfig, config_diff
from compresstune.errors import ConfigError
from compresstune.objectives import evaluate, teacher_logits
from compresstune.spaces import Space
from compresstune.search._storage import (RunLock, default_storage, driver_id, open_storage,
                                          repair_interrupted, write_pointer)
from compresstune.search._records import SCHEMA_KEY, SCHEMA_VERSION
from compresstune.search._seeds import before_search
from compresstune.search._session import Session, load_data_and_model
from compresstune.search._trial import TrialContext, TrialSettings, constraint_names

__all__ = ["Session", "prepare", "run"]

METRICS = {"accuracy": "val_accuracy", "size": "size_bytes", "latency": "latency_ms", "bops": "bops"}


def _settings(config: StudyConfig, baseline_acc: float, reference_bytes: int) -> TrialSettings:
    f, c, lat = config.finetune, config.constraints, config.latency
    extra = next((o for o in config.objectives if o in ("latency", "bops")), None)
    return TrialSettings(
        steps=f.steps, batch_size=f.batch_size, lr=f.lr, weight_decay=f.weight_decay, optimizer=f.optimizer,
        eval_every=f.eval_every, eval_batch_size=f.eval_batch_size, seed=config.search.seed,
        max_accuracy_drop=c.max_accuracy_drop, max_size_bytes=c.max_size_bytes, min_ratio=c.min_ratio,
        extra_objective=extra, activation_bits=config.activation_bits, latency_batch_size=lat.batch_size,
        latency_repeats=lat.repeats, latency_warmup=lat.warmup, baseline_val_accuracy=baseline_acc,
        reference_bytes=reference_bytes)


def make_sampler(name: str, *, seed: int, trials: int) -> optuna.samplers.BaseSampler:
    """The study's sampler. Samplers read constraints from ``trial.set_constraint`` (Optuna >= 5)."""
    if name == "tpe":
        return optuna.samplers.TPESampler(multivariate=True, constant_liar=True, seed=seed,
                                          n_startup_trials=min(10, max(4, trials // 4)))
    if name == "nsga2":
        # The default population of 50 would make a 40-trial study pure random search.
        return optuna.samplers.NSGAIISampler(population_size=max(4, min(50, trials // 5)), seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"`search.sampler` must be one of tpe, nsga2, gp, random; got {name!r}.")


def _study_attrs(config: StudyConfig, base: dict, space: Space, settings: TrialSettings, study_file) -> dict:
    drop = config.constraints.max_accuracy_drop
    return {
        SCHEMA_KEY: SCHEMA_VERSION,
        "compresstune_version": compresstune.__version__,
        "config": config.model_dump(mode="json"),
        "fingerprint": config.fingerprint(),
        "study_file": study_file,
        "baseline": base,
        "reference_point": {"val_accuracy": base["val_accuracy"] - (drop if drop is not None else 1.0),
                            "log2_ratio": 0.0},
        "max_accuracy_drop": drop,
        "constraint_names": constraint_names(settings),
        "layers": list(space.layers),
        "layer_shapes": {n: [space.discovery.layers[n].rows, space.discovery.layers[n].cols] for n in space.layers},
        "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, {platform.system()})",
        "versions": _versions(),
    }


def _versions() -> dict:
    try:
        from importlib.metadata import version

        ray_version = version("ray")
    except Exception:  # noqa: BLE001 - ray is optional
        ray_version = None
    return {"compresstune": compresstune.__version__, "torch": torch.__version__, "optuna": optuna.__version__,
            "ray": ray_version, "python": platform.python_version()}


def _open_study(config: StudyConfig, storage, sampler, attrs: dict, new_study: bool, log) -> optuna.Study:
    names = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    name = config.name
    if name in names and new_study:
        n = 2
        while f"{name}-{n}" in names:
            n += 1
        name = f"{name}-{n}"
        log(f"starting a new study {name!r} (--new-study)")
    elif name in names:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        _check_same_config(study, attrs, name)
        return study
    directions = ["maximize", "minimize"] + (["minimize"] if len(config.objectives) > 2 else [])
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, directions=directions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([METRICS[o] for o in _ordered_objectives(config)])
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    return study


def _ordered_objectives(config: StudyConfig) -> list[str]:
    return ["accuracy", "size"] + [o for o in config.objectives if o not in ("accuracy", "size")]


def _check_same_config(study: optuna.Study, attrs: dict, name: str) -> None:
    old = study.user_attrs.get("fingerprint")
    if old == attrs["fingerprint"]:
        return
    lines = config_diff(study.user_attrs.get("config", {}), attrs["config"])
    shown = "\n  ".join(lines[:20]) or "(fingerprint differs)"
    raise ConfigError(
        f"study {name!r} already exists with a different config; resuming it would mix results.\n  {shown}\n"
        "Run with --new-study to start a new study in the same storage, or use another --out folder."
    )


def prepare(config: StudyConfig, out: Path, *, new_study: bool = False, log: Callable[[str], None] = print,
            study_file: str | None = None) -> Session:
    """Open the storage, load data and baseline, build the space, open (or create) the study and repair it.

    The storage is opened first: a missing database driver or an unreachable
    database fails before any compute (the baseline may take minutes).
    """
    storage_url = config.search.storage or default_storage(out)
    storage = open_storage(storage_url)
    t0 = time.perf_counter()
    splits, model = load_data_and_model(config, out)
    space = Space.from_config(config.space, model)
    base_val = evaluate(model, splits.val, batch_size=config.finetune.eval_batch_size)
    base_test = evaluate(model, splits.test, batch_size=config.finetune.eval_batch_size)
    ref = reference_size(model)
    base = {"val_accuracy": base_val, "test_accuracy": base_test, "reference_bytes": ref,
            "packed_bytes": len(to_bytes(model))}
    log(f"baseline: val accuracy {base_val:.4f}, test accuracy {base_test:.4f}, fp32 size {ref:,} bytes, "
        f"{len(space.layers)} layers searched, {len(space.param_names)} parameters ({time.perf_counter() - t0:.1f} s)")
    settings = _settings(config, base_val, ref)
    sampler = make_sampler(config.search.sampler, seed=config.search.seed, trials=config.search.trials)
    attrs = _study_attrs(config, base, space, settings, study_file)
    study = _open_study(config, storage, sampler, attrs, new_study, log)
    write_pointer(out, storage_url, study.study_name, study_file)
    driver = driver_id(out)
    repaired = repair_interrupted(study, driver)
    if repaired:
        log(f"resuming: trials {repaired} were interrupted by a stopped driver; marked FAIL and queued again")
    if study.user_attrs.get("baseline", base)["val_accuracy"] != base_val:
        settings = _settings(config, study.user_attrs["baseline"]["val_accuracy"], ref)
    soft = teacher_logits(model, splits.train, batch_size=config.finetune.eval_batch_size)
    context = TrialContext(model=model, splits=splits, soft_targets=soft, settings=settings)
    session = Session(config=config, out=out, study=study, space=space, context=context, driver=driver, log=log)
    # Search-efficiency hook (search/_sensitivity.py): sensitivity scan, stored narrowing
    # (may replace session.space), seed trials for a new study.
    before_search(session)
    return session


# -- the run -------------------------------------------------------------------------------------

@contextmanager
def sigterm_as_interrupt():
    """Handle SIGTERM exactly like Ctrl-C (only possible in the main thread)."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(config: StudyConfig | str | os.PathLike, *, new_study: bool = False, progress: bool = True,
        study_file: str | None = None, log: Callable[[str], None] | None = None):
    """Run (or resume) the study described by ``config`` (a StudyConfig or a study YAML path).

    Returns:
        ``(study, front)``: the Optuna study and its feasible Pareto front as a DataFrame.

    Example:
        >>> from compresstune.search.config import load_config          # doctest: +SKIP
        >>> study, front = run(load_config("studies/digits.yaml"))  # doctest: +SKIP
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if not isinstance(config, StudyConfig):
        from compresstune.search.config import load_config

        study_file = study_file or str(Path(config).resolve())
        config = load_config(config)
    out = Path(config.search.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out), sigterm_as_interrupt():
        session = prepare(config, out, new_study=new_study, log=log, study_file=study_file)
        try:
            _execute(session, progress)
        finally:
            _write_report(session)
    from compresstune.search.pareto import front

    return session.study, front(session.study)


def _execute(session: Session, progress: bool) -> None:
    if session.config.search.workers or session.config.search.address:
        if not session.config.search.address:
            # A local cluster of one node: keep Ray on loopback (by default Ray binds the
            # host's interface address). Must be set before ray is first imported.
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        from compresstune.search._ray import run_ray

        run_ray(session, progress=progress)
    else:
        from compresstune.search._local import run_local

        run_local(session, progress=progress)


def _write_report(session: Session) -> None:
    try:
        from compresstune.search.report import write_report

        path = write_report(session.study, session.out)
        session.log(f"report: {path}")
    except Exception as exc:  # noqa: BLE001 - a report problem must not hide the run's own outcome
        session.log(f"could not write the report: {type(exc).__name__}: {exc}")
