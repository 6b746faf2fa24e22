"""The Ray worker side: one trial in a Ray Tune trial's process.

What crosses process boundaries:

* the :class:`TrialContext` (plain baseline model, data, teacher soft targets,
  settings) goes into the object store once (``tune.with_parameters``); a
  reused worker process unpickles it once and keeps it for every trial it runs;
* a trial sends back a pickled :class:`TrialOutcome` (plain values and the
  artifact's bytes) — never the compressed module, whose parametrizations do
  not pickle; with early stopping on, every rung is reported too
  (:func:`~compresstune.search._early_stop.rung_result`).

Anything raised inside a trial, NaN losses and ``MemoryError`` come back as a
FAIL outcome (the same builders as the in-process loop, search/_trial.py); only
the death of the process itself reaches Ray Tune, which retries it.
"""

from __future__ import annotations

import copy
import pickle
import time
import uuid
from dataclasses import replace
from typing import Any

import ray
import torch
from ray import cloudpickle, tune

from compresstune.plan import CompressionPlan
from compresstune.search._budgets import Budgets, preflight
from compresstune.search._early_stop import rung_result
from compresstune.task import device_of
from compresstune.search._trial import (TrialContext, TrialOutcome, failed_from, run_checked, run_trial, with_steps,
                                        worker_info)

__all__ = ["GATE_TIMEOUT_S", "execute", "trainable"]

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
        # cloudpickle: a model or task class defined in the user's script (``__main__``) travels by value.
        blob = cloudpickle.dumps(self._value, protocol=5) if self._payload is None else bytes(self._payload)
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
    """The context with the baseline model on ``device`` (the fine-tune moves each batch, and
    each cached teacher output, to the model's device)."""
    if device_of(ctx.model) == device:
        return ctx
    return replace(ctx, model=copy.deepcopy(ctx.model).to(device))


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
    info = worker_info()
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
        if config.get("steps") is not None:  # a promoted trial: its longer fine-tune, no rungs
            ctx, rungs = with_steps(ctx, config["steps"]), False
        outcome = _run_plan(plan, ctx, budgets or Budgets(), worker if rungs else None, t0)
    except Exception as exc:  # noqa: BLE001 - e.g. a study module that does not import on this node
        outcome = failed_from(exc)
    worker["seconds"] = round(time.perf_counter() - t0, 4)
    _pass_gate(gate, worker)  # hold the actor while a replacement worker is still starting
    # done=True: Tune stops the trial on this result, without another round trip to learn
    # that the function returned.
    metrics: dict[str, Any] = {"done": True, "complete": outcome.state == "complete", "worker": worker,
                               "outcome": pickle.dumps(outcome, protocol=5)}
    if outcome.values:
        metrics["val_accuracy"], metrics["size_bytes"] = outcome.values[0], outcome.values[1]
    return metrics


def _run_plan(plan: CompressionPlan, ctx: TrialContext, budgets: Budgets, rung_worker: dict | None,
              t0: float) -> TrialOutcome:
    """The trial, with the budgets the in-process loop checks before training
    (search/_early_stop.py) and, given ``rung_worker``, rung reports to Tune."""
    if rung_worker is None:
        return run_checked(plan, ctx, budgets=budgets) if budgets.any else run_trial(plan, ctx)
    try:
        pre = preflight(plan, ctx, budgets, latency=True)
    except Exception:  # noqa: BLE001 - run_checked fails the trial with run_trial's own message
        return run_checked(plan, ctx, budgets=budgets)
    # What the driver needs to record the trial should the scheduler stop it here.
    known = {"bops": pre.bops, "macs": pre.macs, "latency_ms": pre.latency_ms,
             "extra_value": pre.extra_value(ctx.settings.extra_objective)}
    known = {k: v for k, v in known.items() if v is not None}

    def on_rung(step: int, accuracy: float, size_bytes: int) -> None:
        seconds = round(time.perf_counter() - t0, 4)
        tune.report(rung_result(step, accuracy, size_bytes, worker={**rung_worker, "seconds": seconds}, **known))

    return run_checked(plan, ctx, budgets=budgets, on_rung=on_rung, pre=pre)


def _pass_gate(gate: tuple | None, worker: dict) -> None:
    try:
        _wait_for_peers(gate, worker)
    except Exception:  # noqa: BLE001 - the gate only keeps the workers busy; never fail a trial for it
        pass


def trainable(config: dict, shared: tuple = ()) -> None:
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


