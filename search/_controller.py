"""The controller: prepares a study (data, baseline, space, storage) and runs its
trials in-process or on Ray; only this driver process writes the storage."""

from __future__ import annotations

import dataclasses
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
from compresstune.objectives import multiply_accumulates, teacher_outputs
from compresstune.spaces import Space
from compresstune.task import Task, check_task, measure, move, take_rows
from compresstune.search._storage import (RunLock, default_storage, driver_id, open_storage,
                                          repair_interrupted, write_pointer)
from compresstune.search._records import SCHEMA_KEY, SCHEMA_VERSION, TARGET_TRIALS, metric_of
from compresstune.search._seeds import before_search
from compresstune.search._session import Session, load_model_and_task
from compresstune.search._trial import TrialContext, TrialSettings, constraint_names

__all__ = ["Session", "prepare", "run"]

METRICS = {"size": "size_bytes", "latency": "latency_ms", "bops": "bops", "macs": "macs", "onnx_size": "onnx_bytes",
           "onnx_latency": "onnx_latency_ms"}
DEFAULT_RELATIVE_DROP = 0.05  # a metric other than accuracy with no drop limit set


def max_drop(constraints, task: Task, baseline: float) -> float | None:
    """The largest drop of the task's metric allowed, in its units: ``max_metric_drop``, else
    ``max_relative_drop`` of the baseline, else ``max_accuracy_drop`` for accuracy, else a
    relative drop of 0.05 for any other metric.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> c = NS(max_metric_drop=None, max_relative_drop=0.1, max_accuracy_drop=0.02)
        >>> round(max_drop(c, NS(metric="perplexity"), 20.0), 6)
        2.0
    """
    if constraints.max_metric_drop is not None:
        return float(constraints.max_metric_drop)
    if constraints.max_relative_drop is not None:
        return float(constraints.max_relative_drop) * abs(baseline)
    if task.metric == "accuracy":
        return None if constraints.max_accuracy_drop is None else float(constraints.max_accuracy_drop)
    return DEFAULT_RELATIVE_DROP * abs(baseline)


def _settings(config: StudyConfig, task: Task, baseline: float, reference_bytes: int,
              drop: float | None) -> TrialSettings:
    f, c, lat = config.finetune, config.constraints, config.latency
    extra = next((o for o in config.objectives if o in METRICS and o != "size"), None)
    return TrialSettings(
        steps=f.steps, lr=f.lr, weight_decay=f.weight_decay, optimizer=f.optimizer, eval_every=f.eval_every,
        seed=config.search.seed, max_drop=drop, max_size_bytes=c.max_size_bytes, min_ratio=c.min_ratio,
        extra_objective=extra, activation_bits=config.activation_bits, latency_batch_size=lat.batch_size,
        latency_repeats=lat.repeats, latency_warmup=lat.warmup, baseline_value=baseline,
        reference_bytes=reference_bytes, metric=task.metric, direction=task.direction,
        batchnorm=f.batchnorm)


def uses_macs(config: StudyConfig) -> bool:
    """True when the study has the macs objective or a ``max_macs`` budget."""
    return "macs" in config.objectives or config.constraints.max_macs is not None


def metric_names(config: StudyConfig, task: Task) -> list[str]:
    """Optuna's names of the study's objectives: ``val_<metric>``, ``size_bytes``, then the third."""
    return [f"val_{task.metric}"] + [METRICS[o] for o in _ordered_objectives(config)[1:]]


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


def _study_attrs(config: StudyConfig, base: dict, space: Space, settings: TrialSettings, study_file,
                 task: Task) -> dict:
    drop = settings.max_drop
    sign = -1.0 if task.direction == "minimize" else 1.0
    fallback = 1.0 if task.metric == "accuracy" else abs(base["val_accuracy"])  # no limit: a wide reference
    return {
        SCHEMA_KEY: SCHEMA_VERSION,
        "compresstune_version": compresstune.__version__,
        "config": config.model_dump(mode="json"),
        "fingerprint": config.fingerprint(),
        "study_file": study_file,
        "baseline": base,
        "metric": {"name": task.metric, "direction": task.direction, "task": _task_path(task)},
        "reference_point": {"val_accuracy": base["val_accuracy"] - sign * (drop if drop is not None else fallback),
                            "log2_ratio": 0.0},
        "max_accuracy_drop": drop,
        "constraint_names": constraint_names(settings),
        "layers": list(space.layers),
        "layer_shapes": {n: [space.discovery.layers[n].rows, space.discovery.layers[n].cols] for n in space.layers},
        "channel_groups": _channel_groups(space),
        "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, {platform.system()})",
        "versions": _versions(),
    }


def _channel_groups(space) -> dict:
    """The channel groups the space can prune, for the report: name -> its layers and regions."""
    searched = set(space.layers)
    return {name: {"layers": list(g.layers), "regions": [list(r) for r in g.regions()]}
            for name, g in space.discovery.channel_groups.items() if searched & set(g.layers)}


def _versions() -> dict:
    try:
        from importlib.metadata import version

        ray_version = version("ray")
    except Exception:  # noqa: BLE001 - ray is optional
        ray_version = None
    return {"compresstune": compresstune.__version__, "torch": torch.__version__, "optuna": optuna.__version__,
            "ray": ray_version, "python": platform.python_version()}


def _task_path(task: Task) -> str | None:
    """``module:QualName`` of the task's class when it can be imported again (``export`` re-checks
    the metric with it); None for a class defined in ``__main__`` or inside a function."""
    cls = type(task)
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        return None
    return f"{cls.__module__}:{cls.__qualname__}"


def _open_study(config: StudyConfig, storage, sampler, attrs: dict, new_study: bool, log,
                task: Task) -> optuna.Study:
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
        _check_same_metric(study, task, name)
        return study
    directions = [task.direction, "minimize"] + (["minimize"] if len(config.objectives) > 2 else [])
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, directions=directions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(metric_names(config, task))
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    return study


def _ordered_objectives(config: StudyConfig) -> list[str]:
    return ["accuracy", "size"] + [o for o in config.objectives if o not in ("accuracy", "size")]


def _check_same_metric(study: optuna.Study, task: Task, name: str) -> None:
    stored = metric_of(study.user_attrs)
    if stored != (task.metric, task.direction):
        raise ConfigError(f"study {name!r} already exists for the metric {stored[0]!r} ({stored[1]}); this task's is "
                          f"{task.metric!r} ({task.direction}). Resuming it would mix results: use --new-study "
                          "(new_study=True) or another output folder.")


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


def resolve_device(name: str) -> torch.device:
    """``resources.device``: ``auto`` is CUDA when available, else CPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("`resources.device` must be 'auto' or 'cpu' here: 'cuda' was asked for and torch "
                          f"{torch.__version__} sees no CUDA device.")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _check_early_stopping(config: StudyConfig, task: Task, sums) -> int | None:
    """The validation examples behind the stop rule's binomial noise; ConfigError when the study
    asks for early stopping and the task's metric is not a binomial fraction (accuracy)."""
    if not config.early_stopping.enabled:
        return None
    binomial = getattr(task, "binomial", False) and sums is not None and sums.get("n")
    if not binomial:
        raise ConfigError(f"`early_stopping.enabled` needs a task whose metric is a fraction of examples "
                          f"(binomial, like Classification's accuracy) to estimate its noise; {task.name}'s "
                          f"{task.metric!r} is not. Set `early_stopping.enabled: false`.")
    return int(sums["n"])


def _baseline(task: Task, model: torch.nn.Module) -> tuple[dict, dict | None]:
    """The uncompressed model's record (its metric on val and test, its sizes) and its val sums."""
    base_val, sums = measure(task, model, "val")
    base_test = measure(task, model, "test")[0] if task.has_split("test") else None
    return {"val_accuracy": base_val, "test_accuracy": base_test, "reference_bytes": reference_size(model),
            "packed_bytes": len(to_bytes(model))}, sums


def prepare(config: StudyConfig, out: Path, *, new_study: bool = False, log: Callable[[str], None] = print,
            study_file: str | None = None, model: torch.nn.Module | None = None,
            task: Task | None = None) -> Session:
    """Open the storage, load data and baseline (or take ``model`` and ``task``), check the task,
    build the space, open (or create) the study and repair it.

    The storage is opened first: a missing database driver or an unreachable
    database fails before any compute (the baseline may take minutes). The task is
    checked on one batch of each split before the baseline is measured.
    """
    storage_url = config.search.storage or default_storage(out)
    storage = open_storage(storage_url)
    device = resolve_device(config.resources.device)
    t0 = time.perf_counter()
    if model is None:
        model, task = load_model_and_task(config, out)
    check_task(task, model)
    if config.model is None:
        from compresstune.search._objects import save_objects

        save_objects(out, model, task, log)
    model = model.to(device).eval()
    space = Space.from_config(config.space, model)
    example = take_rows(move(next(iter(task.batches("val"))), "cpu"), max(1, config.latency.batch_size))
    base, sums = _baseline(task, model)
    if uses_macs(config):  # the reference of the macs objective / budget: the uncompressed model's count
        base["macs"] = float(multiply_accumulates(model, example, task=task))
    base_val, ref = base["val_accuracy"], base["reference_bytes"]
    n_val = _check_early_stopping(config, task, sums)
    test_text = f", test {task.metric} {base['test_accuracy']:.4f}" if base["test_accuracy"] is not None else ""
    test_text += f", {base['macs']:,.0f} MACs per example" if "macs" in base else ""
    log(f"baseline: val {task.metric} {base_val:.4f}{test_text}, fp32 size {ref:,} bytes, "
        f"{len(space.layers)} layers searched, {len(space.param_names)} parameters, on {device} "
        f"({time.perf_counter() - t0:.1f} s)")
    drop = max_drop(config.constraints, task, base_val)
    settings = _settings(config, task, base_val, ref, drop)
    sampler = make_sampler(config.search.sampler, seed=config.search.seed, trials=config.search.trials)
    attrs = _study_attrs(config, base, space, settings, study_file, task)
    study = _open_study(config, storage, sampler, attrs, new_study, log, task)
    study.set_user_attr(TARGET_TRIALS, config.search.trials)  # what `status` counts against
    write_pointer(out, storage_url, study.study_name, study_file)
    driver = driver_id(out)
    repaired = repair_interrupted(study, driver)
    if repaired:
        log(f"resuming: trials {repaired} were interrupted by a stopped driver; marked FAIL and queued again")
    stored = study.user_attrs.get("baseline", base)["val_accuracy"]
    if stored != base_val:
        settings = _settings(config, task, stored, ref, max_drop(config.constraints, task, stored))
    settings = dataclasses.replace(settings, n_val=n_val)
    context = TrialContext(model=model, task=task, settings=settings, cached_teacher=teacher_outputs(model, task),
                           example=example)
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


def run(config: StudyConfig | str | os.PathLike | torch.nn.Module, task: Task | None = None, *,
        name: str | None = None, space: dict | None = None, objectives: list | None = None,
        finetune: dict | None = None, constraints: dict | None = None, activation_bits: int | None = None,
        latency: dict | None = None, resources: dict | None = None, search: dict | None = None,
        sensitivity: dict | None = None, early_stopping: dict | None = None, promotion: dict | None = None,
        trials: int | None = None,
        out: str | os.PathLike | None = None, sampler: str | None = None, seed: int | None = None,
        workers: int | None = None, address: str | None = None, storage: str | None = None,
        max_failures: int | None = None, new_study: bool = False, progress: bool = True,
        study_file: str | None = None, log: Callable[[str], None] | None = None):
    """Run (or resume) a study: of a model and a task in memory, or described by a study file.

    Two forms::

        study, front = run(model, task, space={...}, finetune={...}, constraints={...},
                           trials=40, out="runs/mine", sampler="tpe", seed=0, workers=0)
        study, front = run("studies/digits.yaml")      # or a StudyConfig

    In the first, each keyword section is the study-file section of that name
    (validated the same way, errors naming ``section.field``) and ``trials``,
    ``out``, ``sampler``, ``seed``, ``workers``, ``address``, ``storage`` and
    ``max_failures`` are shortcuts into ``search``. The output folder keeps the
    model (``model.pt``) and the task (``task.pt``) so that ``compresstune report``,
    ``status`` and ``export`` work on it from the command line.

    Returns:
        ``(study, front)``: the Optuna study and its feasible Pareto front as a DataFrame.

    Example:
        >>> study, front = run(model, Classification(train_loader, val_loader), trials=20)  # doctest: +SKIP
        >>> study, front = run("studies/digits.yaml")  # doctest: +SKIP
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    model = None
    if isinstance(config, torch.nn.Module) or task is not None:
        from compresstune.search._objects import config_from_sections

        model = config
        check_task(task, model)  # a wrong type fails before any storage is touched
        sections = {"space": space, "objectives": objectives, "finetune": finetune, "constraints": constraints,
                    "activation_bits": activation_bits, "latency": latency, "resources": resources, "search": search,
                    "sensitivity": sensitivity, "early_stopping": early_stopping,
                    "promotion": promotion}
        shortcuts = {"trials": trials, "out": out, "sampler": sampler, "seed": seed, "workers": workers,
                     "address": address, "storage": storage, "max_failures": max_failures}
        config = config_from_sections(name, sections, shortcuts)
    elif not isinstance(config, StudyConfig):
        from compresstune.search.config import load_config

        study_file = study_file or str(Path(config).resolve())
        config = load_config(config)
    out_dir = Path(config.search.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(out_dir), sigterm_as_interrupt():
        session = prepare(config, out_dir, new_study=new_study, log=log, study_file=study_file, model=model,
                          task=task)
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
