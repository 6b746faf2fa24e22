"""The in-process executor: ask, suggest, run, tell, one trial at a time."""

from __future__ import annotations

import sys

import torch
from optuna.trial import TrialState

from compresstune.search._controller import Session, counts, record
from compresstune.search._early_stop import TrialHooks
from compresstune.search._progress import Progress
from compresstune.search._seeds import SeedRefiner
from compresstune.search._storage import SearchError, repair_interrupted, requeue
from compresstune.search._trial import TrialOutcome, run_trial

__all__ = ["run_local"]


def run_local(session: Session, *, progress: bool = True) -> None:
    """Run trials until ``search.trials`` are COMPLETE (resuming counts earlier ones)."""
    cfg = session.config.search
    study = session.study
    # One trial at a time on this process: use the CPUs a trial is given, no more
    # (oversubscribed BLAS threads made small models several times slower).
    torch.set_num_threads(max(1, int(session.config.resources.cpus_per_trial)))
    bar = Progress(study, cfg.trials, enabled=progress, stream=sys.stderr)
    hooks = TrialHooks.for_session(session)  # budgets before training + early stopping (search/_early_stop.py)
    refiner = SeedRefiner(session)  # the second round of seed trials (search/_seeds.py)
    try:
        while True:
            c = counts(study)
            if c["complete"] >= cfg.trials:
                break
            if c["failed"] >= cfg.max_failures:
                raise SearchError(_too_many_failures(study, c["failed"]))
            refiner.step()
            _one_trial(session, hooks)
            bar.update()
    except KeyboardInterrupt:
        # An interrupt can land between ask() and the trial's own handler (or inside
        # record()): whatever this driver left RUNNING is failed and queued again.
        repair_interrupted(study, session.driver)
        raise
    finally:
        bar.close()


def _one_trial(session: Session, hooks: TrialHooks | None = None) -> None:
    study = session.study
    trial = study.ask()
    trial.set_user_attr("driver", session.driver)
    try:
        plan = session.space.suggest(trial)
        outcome = run_trial(plan, session.context) if hooks is None else hooks.run(trial, plan, session.context)
    except KeyboardInterrupt:
        _finish_suggest(session, trial)
        outcome = TrialOutcome("fail", fail_reason="interrupted: stopped by the user (Ctrl-C or SIGTERM)")
        record(study, trial, outcome, session.out)
        requeue(study, study._storage.get_trial(trial._trial_id))
        raise
    except Exception as exc:  # noqa: BLE001 - the space itself failed: record, go on
        outcome = TrialOutcome("fail", fail_reason=f"{type(exc).__name__}: {exc}")
    record(study, trial, outcome, session.out)


def _finish_suggest(session: Session, trial) -> None:
    """An interrupt inside ``space.suggest`` leaves the trial with part of its
    parameters; complete them (already-set and enqueued ones come back as they
    are) so that the requeued trial repeats the same plan."""
    try:
        session.space.suggest(trial)
    except Exception:  # noqa: BLE001 - best effort: requeue what there is
        pass


def _too_many_failures(study, failed: int) -> str:
    last = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))]
    reason = last[-1].user_attrs.get("fail_reason", "unknown") if last else "unknown"
    return (f"stopped after {failed} failed trials (search.max_failures); the last one failed with: {reason}")

