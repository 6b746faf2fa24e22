"""The Ray executor: trials run as Ray Tune trials on a local or remote Ray cluster.

The driver owns the study. A Tune :class:`~ray.tune.search.Searcher` asks the
study for a trial, draws the plan with the study's space and sends only the
plan's JSON to a trial; the trial returns its metrics and artifact bytes, and
the searcher records them with the controller's ``record`` — the same code the
in-process loop uses, so constraints, budget rejections and user attributes
reach the storage identically. Workers never touch the storage.

What crosses process boundaries:

* the :class:`TrialContext` (plain baseline model, data, teacher soft targets,
  settings) goes into the object store once (``tune.with_parameters``); a
  reused worker process unpickles it once and keeps it for every trial it runs;
* a trial sends back a pickled :class:`TrialOutcome` (plain values and the
  artifact's bytes) — never the compressed module, whose parametrizations do
  not pickle;
* the study's own modules (model and data factories, model classes) reach
  other nodes through the runtime environment (``py_modules``) when they are
  not an installed distribution. ``compresstune`` itself must be installed on
  every node.

Scheduling: ``search.workers`` trials at once (else as many as the cluster fits);
Tune's searcher waits while COMPLETE + running trials reach ``search.trials``.
Workers are reused across trials; a small gate actor keeps Tune from collapsing
them onto one actor while new worker processes start (see :class:`_Gate`).

Faults: anything raised inside a trial, NaN losses and ``MemoryError`` come back
as a FAIL outcome and are not retried. Only a worker process or node that dies is
retried, by Ray Tune (``FailureConfig(max_failures=WORKER_RETRIES)``); a trial
that still errors is recorded FAIL with Tune's error text. Ctrl-C and SIGTERM
mark in-flight trials FAIL "interrupted" and queue their parameters again, as
the in-process loop does; a killed driver is repaired by the next run.

This is the only module of compresstune that imports ``ray``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.metadata
import json
import logging
import math
import os
import pickle
import shutil
import signal
import socket
import sys
import sysconfig
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import ray
import torch
from optuna.trial import TrialState
from ray import tune
from ray.tune.search import Searcher

from compresstune.data import Split
from compresstune.plan import CompressionPlan
from compresstune.search._controller import Session, record
from compresstune.search._early_stop import (ACCURACY_KEY, STEP_KEY, Budgets, preflight, run_checked, rung_result,
                                             session_stopping, stopped_outcome)
from compresstune.search._local import _too_many_failures
from compresstune.search._progress import Progress
from compresstune.search._ray_stop import ParetoStopScheduler
from compresstune.search._seeds import SeedRefiner
from compresstune.search._storage import SearchError, repair_interrupted, requeue
from compresstune.search._trial import TrialContext, TrialOutcome, run_trial

__all__ = ["WORKER_RETRIES", "run_ray"]

WORKER_RETRIES = 3
"""How many times Ray Tune restarts a trial whose worker process or node died."""

INTERRUPTED_BY_USER = "interrupted: stopped by the user (Ctrl-C or SIGTERM)"
INTERRUPTED_BY_STOP = "interrupted: the search stopped (search.max_failures reached) while it ran"

_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


# -- the worker side ---------------------------------------------------------------------

_WORKER_CACHE: dict[tuple[str, str], TrialContext] = {}


def _context_from(key: str, payload) -> "_SharedContext":
    return _SharedContext(key=key, payload=payload)


class _SharedContext:
    """The trial context as it travels through the object store.

    Pickled once on the driver (``tune.with_parameters`` puts it once) as an
    out-of-band buffer; a worker unpickles the buffer only the first time it
    sees the key, so a reused actor pays for the model and data once.
    """

    def __init__(self, value: TrialContext | None = None, *, key: str | None = None, payload=None) -> None:
        self.key = key or uuid.uuid4().hex
        self._value = value
        self._payload = payload

    def __reduce_ex__(self, protocol):
        blob = pickle.dumps(self._value, protocol=5) if self._payload is None else bytes(self._payload)
        # Ray pickles with protocol 5: the buffer travels out of band (zero-copy from the object store).
        return (_context_from, (self.key, pickle.PickleBuffer(blob) if protocol >= 5 else blob))

    def get(self, device: torch.device) -> TrialContext:
        cache_key = (self.key, str(device))
        ctx = _WORKER_CACHE.get(cache_key)
        if ctx is None:
            base = self._value if self._value is not None else pickle.loads(self._payload)
            ctx = _to_device(base, device)
            _WORKER_CACHE.clear()  # one study per worker process at a time
            _WORKER_CACHE[cache_key] = ctx
        return ctx


def _to_device(ctx: TrialContext, device: torch.device) -> TrialContext:
    """The context with the baseline model, the data and the soft targets on ``device``."""
    if device.type == "cpu":
        return ctx

    def move(split: Split) -> Split:
        return Split(split.x.to(device), split.y.to(device))

    splits = replace(ctx.splits, train=move(ctx.splits.train), val=move(ctx.splits.val), test=move(ctx.splits.test))
    return replace(ctx, model=copy.deepcopy(ctx.model).to(device), splits=splits,
                   soft_targets=ctx.soft_targets.to(device))


def _gpu_ids() -> list:
    # Only inside Ray: most ray.* calls would start a local Ray in a plain process.
    return list(ray.get_gpu_ids()) if ray.is_initialized() else []


def _trial_device() -> torch.device:
    """The GPU Ray gave this trial (it sets CUDA_VISIBLE_DEVICES), else the CPU."""
    if not _gpu_ids():
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"this trial was given GPU {_gpu_ids()} but torch {torch.__version__} "
                           "on this node cannot use CUDA")
    return torch.device("cuda", 0)


def _worker_info() -> dict[str, Any]:
    info: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname(), "node_id": None}
    if ray.is_initialized():  # else: called directly, outside Ray (tests)
        context = ray.get_runtime_context()
        info.update(node_id=context.get_node_id(), ip=ray.util.get_node_ip_address())
        if _gpu_ids():
            info["gpus"] = [str(g) for g in _gpu_ids()]
    return info


def execute(config: dict, context: _SharedContext | TrialContext, cpus: float = 1.0,
            gate: tuple | None = None, budgets: Budgets | None = None, rungs: bool = False) -> dict[str, Any]:
    """Run one trial in this process and return what goes back to the driver.

    With ``rungs=True`` (early stopping; only inside a Tune trial) every fine-tune
    rung is reported with ``tune.report`` for :class:`ParetoStopScheduler`; when it
    stops the trial, Tune ends this thread at that report and the driver records
    the trial from its last rung.

    Never raises for a failing trial: the outcome says FAIL and why. Only the death
    of the process itself reaches Ray Tune (and is retried).
    """
    worker = _worker_info()
    _pass_gate(gate, worker)
    t0 = time.perf_counter()
    try:
        torch.set_num_threads(max(1, int(cpus)))
        device = _trial_device()
        if device.type != "cpu":
            worker["device"] = str(device)
        ctx = context.get(device) if isinstance(context, _SharedContext) else _to_device(context, device)
        plan = CompressionPlan.from_json(config["plan"])
        outcome = _run_plan(plan, ctx, budgets or Budgets(), worker if rungs else None)
    except MemoryError:
        outcome = TrialOutcome("fail", fail_reason="MemoryError: the trial ran out of memory")
    except Exception as exc:  # noqa: BLE001 - e.g. a study module that does not import on this node
        outcome = TrialOutcome("fail", fail_reason=f"{type(exc).__name__}: {exc}"[:2000])
    worker["seconds"] = round(time.perf_counter() - t0, 4)
    _pass_gate(gate, worker)  # hold the actor while a replacement worker is still starting
    # done=True: Tune stops the trial on this result, without another round trip to learn
    # that the function returned.
    metrics: dict[str, Any] = {"done": True, "complete": outcome.state == "complete", "worker": worker,
                               "outcome": pickle.dumps(outcome, protocol=5)}
    if outcome.values:
        metrics["val_accuracy"], metrics["size_bytes"] = outcome.values[0], outcome.values[1]
    return metrics


def _run_plan(plan: CompressionPlan, ctx: TrialContext, budgets: Budgets, rung_worker: dict | None) -> TrialOutcome:
    """The trial, with the budgets the in-process loop checks before training
    (search/_early_stop.py) and, given ``rung_worker``, rung reports to Tune."""
    if rung_worker is None:
        return run_checked(plan, ctx, budgets=budgets) if budgets.any else run_trial(plan, ctx)
    try:
        pre = preflight(plan, ctx, budgets, latency=True)
    except Exception:  # noqa: BLE001 - run_checked fails the trial with run_trial's own message
        return run_checked(plan, ctx, budgets=budgets)
    # What the driver needs to record the trial should the scheduler stop it here.
    known = {"bops": pre.bops, "latency_ms": pre.latency_ms,
             "extra_value": pre.extra_value(ctx.settings.extra_objective)}
    known = {k: v for k, v in known.items() if v is not None}

    def on_rung(step: int, accuracy: float, size_bytes: int) -> None:
        tune.report(rung_result(step, accuracy, size_bytes, worker=rung_worker, **known))

    return run_checked(plan, ctx, budgets=budgets, on_rung=on_rung, pre=pre)


def _pass_gate(gate: tuple | None, worker: dict) -> None:
    try:
        _wait_for_peers(gate, worker)
    except Exception:  # noqa: BLE001 - the gate only keeps the workers busy; never fail a trial for it
        pass


def _trainable(config: dict, shared: tuple = ()) -> None:
    # One object from the store per trial (with_parameters fetches each keyword separately).
    context, cpus, gate, budgets, rungs = shared
    tune.report(execute(config, context, cpus, gate, budgets, rungs))


GATE_TIMEOUT_S = 60.0
_GATES_PASSED: set[str] = set()


@ray.remote(num_cpus=0)
class _Gate:
    """Counts the worker processes of a run against the number it should have.

    Ray Tune gives a finished trial's actor to a pending trial and cancels that
    trial's own actor if it is not up yet. With trials shorter than an actor's
    start-up (a new process imports torch: seconds), every trial would then run
    on one actor — at the start, and again after a worker died. So the first trial
    on each new worker process waits until ``expected`` processes have arrived,
    and a trial that is about to finish waits while a replacement is still coming
    (each for at most GATE_TIMEOUT_S; after a timeout the gate settles for the
    processes it has).
    """

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.pids: set[tuple[str, int]] = set()

    def arrive(self, node_id: str, pid: int) -> tuple[int, int]:
        self.pids.add((node_id, pid))
        return len(self.pids), self.expected

    def state(self) -> tuple[int, int]:
        return len(self.pids), self.expected

    def expect_replacement(self) -> None:
        self.expected += 1

    def settle(self) -> None:
        self.expected = min(self.expected, len(self.pids))


def _wait_for_peers(gate: tuple | None, worker: dict, timeout: float = GATE_TIMEOUT_S) -> None:
    """Before a process's first trial, register it; then wait until the run has its processes."""
    if gate is None:
        return
    handle, key = gate
    if key in _GATES_PASSED:
        arrived, expected = ray.get(handle.state.remote())
    else:
        arrived, expected = ray.get(handle.arrive.remote(str(worker.get("node_id")), worker["pid"]))
        _GATES_PASSED.add(key)
    deadline = time.monotonic() + timeout
    while arrived < expected and time.monotonic() < deadline:
        time.sleep(0.05)
        arrived, expected = ray.get(handle.state.remote())
    if arrived < expected:
        handle.settle.remote()


# -- the driver side ---------------------------------------------------------------------

def _tally(study: optuna.Study) -> tuple[int, int]:
    """(COMPLETE trials, FAIL trials not caused by an interruption), as the controller counts them."""
    complete = failed = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
        if t.state == TrialState.COMPLETE:
            complete += 1
        elif not str(t.user_attrs.get("fail_reason", "")).startswith("interrupted"):
            failed += 1
    return complete, failed


class _DriverOnly:
    """Tune pickles its config (tuner.pkl) and with it the searcher, stopper and callback.
    They hold the session and live only in the driver: pickle them empty."""

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


class StudySearcher(_DriverOnly, Searcher):
    """Ray Tune searcher backed by the Optuna study of a :class:`Session`.

    ``suggest`` asks the study, draws the plan with the session's space and returns
    ``{"number", "plan"}``; it returns ``None`` (wait) while COMPLETE + running trials
    already reach ``search.trials``, and ``Searcher.FINISHED`` once they are COMPLETE
    or ``search.max_failures`` trials have failed. ``on_trial_complete`` records the
    outcome with the controller's ``record``.
    """

    def __init__(self, session: Session, *, bar: Progress | None = None, refresh_s: float = 1.0,
                 scheduler: ParetoStopScheduler | None = None) -> None:
        super().__init__(metric=None, mode=None)
        self.scheduler = scheduler
        self.plans: dict[str, str] = {}
        self.rungs: dict[str, dict[int, float]] = {}
        self.session, self.study = session, session.study
        self.target = session.config.search.trials
        self.max_failures = session.config.search.max_failures
        self.bar = bar
        self.refresh_s = refresh_s
        self.live: dict[str, optuna.Trial] = {}
        self.outcomes: dict[str, bytes] = {}
        self.workers: dict[str, dict] = {}
        self.tune_trials: dict[str, Any] = {}
        self.error: SearchError | None = None
        self.complete, self.failed = _tally(self.study)
        self._refreshed = time.monotonic()
        self.refiner = SeedRefiner(session)

    # -- Tune's interface ------------------------------------------------------------------
    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def suggest(self, trial_id: str):
        if self.error is not None:
            return Searcher.FINISHED
        self._refresh()
        if self.complete >= self.target:
            return Searcher.FINISHED
        if self.failed >= self.max_failures:
            self.error = SearchError(_too_many_failures(self.study, self.failed))
            return Searcher.FINISHED
        if self.complete + len(self.live) >= self.target:
            return None
        self.refiner.step()
        trial = self.study.ask()
        self.live[trial_id] = trial  # from here on an interruption finds it
        trial.set_user_attr("driver", self.session.driver)
        try:
            plan = self.session.space.suggest(trial)
        except Exception as exc:  # noqa: BLE001 - the space itself failed: record, go on
            self.live.pop(trial_id)
            self._record(trial, TrialOutcome("fail", fail_reason=f"{type(exc).__name__}: {exc}"))
            return None
        self.plans[trial_id] = plan.to_json()
        return {"number": trial.number, "plan": self.plans[trial_id]}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._add_rung(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        # The trial leaves `live` only once recorded: an interrupt in between finds it there
        # (interrupt_all then fails it unless the tell already happened).
        trial = self.live.get(trial_id)
        if trial is None:
            return
        self._complete(trial, trial_id, result, error)
        self.live.pop(trial_id, None)

    def _complete(self, trial: optuna.Trial, trial_id: str, result: dict | None, error: bool) -> None:
        blob = self.outcomes.pop(trial_id, None)
        worker = self.workers.pop(trial_id, None)
        plan_json = self.plans.pop(trial_id, None)
        self._add_rung(trial_id, result or {})
        curve = sorted(self.rungs.pop(trial_id, {}).items())
        decision = self.scheduler.decisions.get(trial.number) if self.scheduler is not None else None
        if blob is None and decision is not None and not error:
            self._record(trial, self._stopped(trial, decision, plan_json, curve, result or {}))
            return
        if blob is None and self.error is not None and not error:
            # Stopped by us (too many failures) before it reported: run it again on resume.
            self._interrupt(trial, INTERRUPTED_BY_STOP)
            return
        if blob is not None and not error:
            outcome = pickle.loads(blob)
        else:
            outcome = TrialOutcome("fail", fail_reason=self._error_text(trial_id))
        if worker is not None:
            tune_trial = self.tune_trials.get(trial_id)
            worker["retries"] = int(getattr(tune_trial, "num_failures", 0) or 0)
            outcome.user_attrs["worker"] = worker
        self._record(trial, outcome)

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        pass  # the study is the state; a resumed run reads it

    def restore_from_dir(self, checkpoint_dir: str) -> None:
        pass

    # -- helpers ---------------------------------------------------------------------------------
    def _add_rung(self, trial_id: str, result: dict) -> None:
        if STEP_KEY in result and ACCURACY_KEY in result:
            self.rungs.setdefault(trial_id, {})[int(result[STEP_KEY])] = float(result[ACCURACY_KEY])

    def _stopped(self, trial: optuna.Trial, decision, plan_json: str | None, curve: list, result: dict) -> TrialOutcome:
        """The record of a trial the scheduler stopped, from its rung reports (its worker
        thread ended at the report, so this is all there is; test accuracy is unknown)."""
        try:
            outcome = stopped_outcome(
                self.session.context.settings, plan_json=plan_json or "", size_bytes=int(result["size_bytes"]),
                step=decision.step, accuracy=float(result[ACCURACY_KEY]), curve=[list(p) for p in curve],
                extra_value=result.get("extra_value"), budgets=Budgets.from_config(self.session.config),
                bops=result.get("bops"), latency_ms=result.get("latency_ms"))
        except (KeyError, TypeError, ValueError) as exc:
            return TrialOutcome("fail", fail_reason=f"ray: stopped at rung {decision.step} but its report is "
                                                    f"incomplete: {type(exc).__name__}: {exc}")
        outcome.user_attrs["stopped_by"] = decision.as_attr()
        worker = result.get("worker") or {k[len("worker/"):]: v for k, v in result.items() if k.startswith("worker/")}
        if worker:
            outcome.user_attrs["worker"] = worker
        return outcome

    def _refresh(self) -> None:
        # Re-read the storage now and then: another driver may share the study.
        if time.monotonic() - self._refreshed >= self.refresh_s:
            self.complete, self.failed = _tally(self.study)
            self._refreshed = time.monotonic()

    def _record(self, trial: optuna.Trial, outcome: TrialOutcome) -> None:
        record(self.study, trial, outcome, self.session.out)
        if outcome.state == "complete":
            self.complete += 1
        else:
            self.failed += 1
        if self.bar is not None:
            self.bar.update()
        if self.failed >= self.max_failures and self.complete < self.target and self.error is None:
            self.error = SearchError(_too_many_failures(self.study, self.failed))

    def _interrupt(self, trial: optuna.Trial, reason: str) -> None:
        """FAIL "interrupted" and queue the same parameters again (as the in-process loop does)."""
        frozen = self.study._storage.get_trial(trial._trial_id)
        if frozen.state != TrialState.RUNNING:
            return  # recorded already (the interruption came after the tell)
        record(self.study, trial, TrialOutcome("fail", fail_reason=reason), self.session.out)
        requeue(self.study, frozen)

    def interrupt_all(self, reason: str) -> list[int]:
        """Interrupt every trial still in flight; returns their numbers."""
        numbers = []
        for trial_id in list(self.live):
            trial = self.live.pop(trial_id)
            self._interrupt(trial, reason)
            numbers.append(trial.number)
        return numbers

    def _error_text(self, trial_id: str) -> str:
        tune_trial = self.tune_trials.get(trial_id)
        tries = 1 + int(getattr(tune_trial, "num_failures", 0) or 0) if tune_trial is not None else None
        text = ""
        try:
            text = (tune_trial.get_error() or "") if tune_trial is not None else ""
        except Exception:  # noqa: BLE001 - the error file may be gone
            text = ""
        lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
        useful = [ln for ln in lines if not ln.startswith(("Failure #", "Traceback", "File ", "^"))]
        detail = " | ".join(useful[-3:]) if useful else "no error text from Ray Tune"
        attempts = f" after {tries} attempts" if tries else ""
        return f"ray: the trial's worker failed{attempts} (worker process or node died?): {detail}"[:2000]


class _Collector(_DriverOnly, tune.Callback):
    """Takes the outcome bytes out of each result before Tune stores it, and keeps
    Tune's trial objects (retry counts, error text) for the searcher."""

    def __init__(self, searcher: StudySearcher, log, gate=None) -> None:
        self.searcher, self.log, self.gate = searcher, log, gate

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.searcher.tune_trials[trial.trial_id] = trial

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        blob = result.pop("outcome", None)
        if blob is not None:
            self.searcher.outcomes[trial.trial_id] = blob
            self.searcher.workers[trial.trial_id] = dict(result.get("worker") or {})

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        number = trial.config.get("number", "?")
        self.log(f"trial {number}: its Ray worker died; retrying ({trial.num_failures}/{WORKER_RETRIES})")
        if self.gate is not None:
            self.gate.expect_replacement.remote()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.searcher.tune_trials.pop(trial.trial_id, None)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.searcher.tune_trials.pop(trial.trial_id, None)


class _StopWhenSearchFails(_DriverOnly, tune.Stopper):
    """Stops every trial at once when the searcher gave up (too many failures)."""

    def __init__(self, searcher: StudySearcher) -> None:
        self.searcher = searcher

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.searcher.error is not None


# -- connecting ---------------------------------------------------------------------------------

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
    model and data factories and of every module class in the baseline model."""
    names = {spec.partition(":")[0] for spec in (session.config.model.factory, session.config.data.factory)}
    names |= {type(m).__module__ for m in session.context.model.modules()}
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


# -- the run -------------------------------------------------------------------------------------

def run_ray(session: Session, *, progress: bool = True) -> None:
    """Run trials on Ray until ``search.trials`` are COMPLETE (resuming counts earlier ones).

    Raises:
        SearchError: ``search.max_failures`` trials failed, or Ray could not be started or reached.
        KeyboardInterrupt: Ctrl-C or SIGTERM; in-flight trials are then FAIL "interrupted"
            and queued again, so the same command resumes.
    """
    cfg, res = session.config.search, session.config.resources
    study = session.study
    complete, failed = _tally(study)
    if complete >= cfg.trials:
        return
    if failed >= cfg.max_failures:
        raise SearchError(_too_many_failures(study, failed))
    with ray_cluster(session) as concurrency:
        bar = Progress(study, cfg.trials, enabled=progress, stream=sys.stderr)
        scheduler = stop_scheduler(session)
        searcher = StudySearcher(session, bar=bar, scheduler=scheduler)
        gate = _Gate.remote(concurrency)
        shared = (_SharedContext(session.context), res.cpus_per_trial, (gate, uuid.uuid4().hex),
                  Budgets.from_config(session.config), scheduler is not None)
        trainable = tune.with_resources(tune.with_parameters(_trainable, shared=shared),
                                        {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial})
        # Tune's own experiment folder (driver side only): in the output folder, so that one left
        # by a killed driver is cleared by the next run rather than left in /tmp.
        storage = session.out / ".tune"
        shutil.rmtree(storage, ignore_errors=True)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=-1,
                                        max_concurrent_trials=concurrency,
                                        reuse_actors=True, trial_name_creator=_trial_name,
                                        trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(name="compresstune", storage_path=str(storage), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=WORKER_RETRIES),
                                      stop=_StopWhenSearchFails(searcher), callbacks=[_Collector(searcher, session.log, gate)]),
        )
        try:
            with _environ(**_TUNE_ENV), _quiet_tune():
                tuner.fit()
        except KeyboardInterrupt:
            searcher.interrupt_all(INTERRUPTED_BY_USER)
            repair_interrupted(study, session.driver)  # the in-process loop's sweep: nothing stays RUNNING
            raise
        finally:
            bar.close()
            shutil.rmtree(storage, ignore_errors=True)
            with contextlib.suppress(Exception):
                ray.kill(gate)
        leftovers = searcher.interrupt_all(INTERRUPTED_BY_STOP if searcher.error else INTERRUPTED_BY_USER)
        if searcher.error is not None:
            raise searcher.error
        if leftovers:  # Tune ended with trials unrecorded (it should not): say so rather than stop short silently
            raise SearchError(f"Ray Tune stopped with trials {leftovers} unfinished; they are queued again — "
                              "run the same command to resume.")


def _optuna_number(trial) -> Any:
    return trial.config.get("number")


def stop_scheduler(session: Session) -> ParetoStopScheduler | None:
    """The early-stopping scheduler of the study (None when ``early_stopping`` is off); its
    rung table starts from the study's recorded trials, keyed like them by trial number."""
    stopping = session_stopping(session)
    if stopping is None:
        return None
    rule, table = stopping
    return ParetoStopScheduler(rule=rule, table=table, key_of=_optuna_number)


# Ctrl-C must raise KeyboardInterrupt (as in the in-process loop), not end Tune "gracefully";
# the study is the record, so no per-trial result files; no Tune tables over our progress bar.
# Tune's experiment checkpoints are of no use either (a resume reads the study): one at the end.
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
