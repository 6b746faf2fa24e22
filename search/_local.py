"""The in-process executor: the trial loop (search/_loop.py), one trial at a time
in this process."""

from __future__ import annotations

import time

import torch

from compresstune.search._early_stop import TrialHooks
from compresstune.search._loop import ASK, INTERRUPTED_BY_USER, TrialLoop, worker_record
from compresstune.search._session import Session
from compresstune.search._trial import worker_info

__all__ = ["run_local"]

KEY = "local"  # the one trial in flight


def run_local(session: Session, *, progress: bool = True) -> None:
    """Run trials until ``search.trials`` are COMPLETE (resuming counts earlier ones).

    Raises:
        SearchError: ``search.max_failures`` trials failed.
        KeyboardInterrupt: Ctrl-C or SIGTERM; the trial in flight is then FAIL
            "interrupted" and queued again, so the same command resumes.
    """
    # One trial at a time on this process: use the CPUs a trial is given, no more
    # (oversubscribed BLAS threads made small models several times slower).
    torch.set_num_threads(max(1, int(session.config.resources.cpus_per_trial)))
    hooks = TrialHooks.for_session(session)  # budgets before training + early stopping
    loop = TrialLoop(session, progress=progress)
    with loop.running():
        while loop.next_step() == ASK:
            asked = loop.ask(KEY)
            if asked is not None:
                run_one(loop, hooks, *asked)
    if loop.error is not None:
        raise loop.error


def run_one(loop: TrialLoop, hooks: TrialHooks, trial, plan) -> None:
    """Run the asked trial here and record it."""
    where = worker_info()
    t0 = time.perf_counter()
    try:
        outcome = hooks.run(trial, plan, loop.context_for(KEY), stop=not loop.is_promotion(KEY))
    except KeyboardInterrupt:
        loop.interrupt(KEY, INTERRUPTED_BY_USER)
        raise
    outcome.user_attrs["worker"] = worker_record(where, time.perf_counter() - t0)
    loop.record(KEY, outcome)
