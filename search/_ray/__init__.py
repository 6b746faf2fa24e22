"""The Ray executor: trials run as Ray Tune trials on a local or remote Ray cluster.

The driver owns the study. A Tune searcher (:mod:`.searcher`) is a thin adapter
around the one trial loop (search/_loop.py): it asks the loop for a trial and
sends only the plan's JSON to a Tune trial; the trial (:mod:`.worker`) returns
its metrics and artifact bytes, and the loop records them exactly as it does
for the in-process executor. Workers never touch the storage.

* :mod:`.worker`: one trial in a worker process; the shared context; the gate
  that keeps Tune from collapsing reused actors onto one.
* :mod:`.searcher`: the searcher, the result collector and the stopper.
* :mod:`.cluster`: starting or joining Ray, shipping the study's modules.
* :mod:`.scheduler`: Pareto-aware early stopping as a Tune scheduler.

Scheduling: ``search.workers`` trials at once (else as many as the cluster fits);
the searcher waits while COMPLETE + running trials reach ``search.trials``.
Faults: anything raised inside a trial, NaN losses and ``MemoryError`` come back
as a FAIL outcome and are not retried. Only a worker process or node that dies is
retried, by Ray Tune (``FailureConfig(max_failures=WORKER_RETRIES)``); a trial
that still errors is recorded FAIL (``fail_kind: worker``) with Tune's error
text. Ctrl-C and SIGTERM mark in-flight trials FAIL "interrupted" and queue their
parameters again, as the in-process loop does; a killed driver is repaired by
the next run.

This package is the only part of compresstune that imports ``ray``.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import uuid
from dataclasses import replace

import ray
from ray import tune
from ray.tune.search import Searcher  # noqa: F401 - Searcher.FINISHED, for callers

from compresstune.search._budgets import Budgets
from compresstune.search._loop import FINISHED, INTERRUPTED_BY_STOP, INTERRUPTED_BY_USER, TrialLoop
from compresstune.search._ray.cluster import (_TUNE_ENV, _environ, _is_local_address, _quiet_tune, _trial_name,  # noqa: F401
                                              ray_cluster, runtime_env_for, study_modules)
from compresstune.search._ray.scheduler import ParetoStopScheduler, optuna_number, stop_scheduler
from compresstune.search._ray.searcher import (WORKER_RETRIES, Collector, StopWhenSearchFails,
                                               StudySearcher)
from compresstune.search._ray.worker import _Gate, _SharedContext, _wait_for_peers, execute, trainable  # noqa: F401 (_wait_for_peers: tests)
from compresstune.search._session import Session
from compresstune.search._storage import SearchError

__all__ = ["INTERRUPTED_BY_STOP", "INTERRUPTED_BY_USER", "WORKER_RETRIES", "Collector", "ParetoStopScheduler",
           "StopWhenSearchFails", "StudySearcher", "execute", "optuna_number", "ray_cluster", "run_ray",
           "runtime_env_for", "stop_scheduler", "study_modules"]


def run_ray(session: Session, *, progress: bool = True) -> None:
    """Run trials on Ray until ``search.trials`` are COMPLETE (resuming counts earlier ones).

    Raises:
        SearchError: ``search.max_failures`` trials failed, or Ray could not be started or reached.
        KeyboardInterrupt: Ctrl-C or SIGTERM; in-flight trials are then FAIL "interrupted"
            and queued again, so the same command resumes.
    """
    res = session.config.resources
    loop = TrialLoop(session, progress=progress)
    if loop.next_step() == FINISHED:  # nothing to run: no Ray started
        if loop.error is not None:
            raise loop.error
        return
    with ray_cluster(session) as concurrency:
        scheduler = stop_scheduler(session)
        searcher = StudySearcher(session, scheduler=scheduler, loop=loop)
        # The gate waits for as many worker processes as trials can run at once: no more than remain.
        gate = _Gate.remote(max(1, min(concurrency, loop.target - loop.complete)))
        shared = (_SharedContext(_on_cpu(session.context)), res.cpus_per_trial, (gate, uuid.uuid4().hex),
                  Budgets.from_config(session.config), scheduler is not None)
        fn = tune.with_resources(tune.with_parameters(trainable, shared=shared),
                                 {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial})
        # Tune's own experiment folder (driver side only): in the output folder, so that one left
        # by a killed driver is cleared by the next run rather than left in /tmp.
        storage = session.out / ".tune"
        shutil.rmtree(storage, ignore_errors=True)
        tuner = tune.Tuner(
            fn,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=-1,
                                        max_concurrent_trials=concurrency,
                                        reuse_actors=True, trial_name_creator=_trial_name,
                                        trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(name="compresstune", storage_path=str(storage), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=WORKER_RETRIES),
                                      stop=StopWhenSearchFails(searcher),
                                      callbacks=[Collector(searcher, session.log, gate)]),
        )
        try:
            with loop.running(), _environ(**_TUNE_ENV), _quiet_tune():
                tuner.fit()
        finally:
            shutil.rmtree(storage, ignore_errors=True)
            with contextlib.suppress(Exception):
                ray.kill(gate)
        leftovers = searcher.interrupt_all(INTERRUPTED_BY_STOP if searcher.error else INTERRUPTED_BY_USER)
        if searcher.error is not None:
            raise searcher.error
        if leftovers:  # Tune ended with trials unrecorded (it should not): say so rather than stop short silently
            raise SearchError(f"Ray Tune stopped with trials {leftovers} unfinished; they are queued again — "
                              "run the same command to resume.")


def _on_cpu(ctx):
    """The context as it is shipped: workers move the model to the device Ray gives them."""
    if all(p.device.type == "cpu" for p in ctx.model.parameters()):
        return ctx
    return replace(ctx, model=copy.deepcopy(ctx.model).cpu())
