"""The one trial loop: ask -> suggest -> (the executor runs the trial, with the
budgets before training) -> record; seeds and their second round; the failure
limit; interrupts and requeue. The in-process executor drives it one trial at a
time; the Ray searcher drives it from Tune's callbacks, several trials in
flight, each under its own key.

Example:
    >>> loop = TrialLoop(session)                        # doctest: +SKIP
    >>> while loop.next_step() == ASK:                   # doctest: +SKIP
    ...     asked = loop.ask("local")
    ...     if asked is not None:
    ...         trial, plan = asked
    ...         loop.record("local", run_trial(plan, session.context))
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Hashable

import optuna

from compresstune.search._progress import Progress
from compresstune.search._promotion import PROMOTED_FROM, Promoter, promotion_steps
from compresstune.search._records import (FAIL_KIND, FAIL_REASON, FrontCache, Records, Tally, last_failure,
                                          tally)
from compresstune.search._refine import FrontRefiner
from compresstune.search._seeds import SeedRefiner
from compresstune.search._session import Session
from compresstune.search._storage import SearchError, repair_interrupted, requeue
from compresstune.search._trial import TrialContext, TrialOutcome, failed, failed_from, with_steps

__all__ = ["ASK", "FINISHED", "INTERRUPTED_BY_STOP", "INTERRUPTED_BY_USER", "WAIT", "TrialLoop",
           "too_many_failures"]

ASK, WAIT, FINISHED = "ask", "wait", "finished"

INTERRUPTED_BY_USER = "interrupted: stopped by the user (Ctrl-C or SIGTERM)"
INTERRUPTED_BY_STOP = "interrupted: the search stopped (search.max_failures reached) while it ran"


def too_many_failures(study: optuna.Study, failed_count: int) -> str:
    """The message of the error that ends a search at ``search.max_failures``."""
    reason = last_failure(study.get_trials(deepcopy=False))
    return f"stopped after {failed_count} failed trials (search.max_failures); the last one failed with: {reason}"


class TrialLoop:
    """One study's trial loop, shared by every executor.

    Args:
        session: the prepared study.
        progress: show the progress line on stderr.
        refresh_s: how often the counts are re-read from the storage (another
            driver may share the study); in between they are kept up to date
            by this loop's own records.
    """

    def __init__(self, session: Session, *, progress: bool = True, refresh_s: float = 1.0) -> None:
        self.session, self.study = session, session.study
        self.records = Records(session.study)
        self.target = session.config.search.trials
        self.max_failures = session.config.search.max_failures
        self.refresh_s = refresh_s
        self.live: dict[Hashable, optuna.Trial] = {}
        self.error: SearchError | None = None
        self.front = FrontCache(session.study.directions)
        self.counts = Tally()
        self._refreshed = -float("inf")
        self.refresh(force=True)
        self.progress = progress
        self.bar: Progress | None = None  # drawn while running()
        self.refiner = SeedRefiner(session)
        self.front_refiner = FrontRefiner(session)
        self.promoter = Promoter.for_session(session)  # None unless `promotion.enabled`
        self.promoting: dict[Hashable, tuple[int, int]] = {}  # live promoted trials -> (steps, short trial)

    # -- where the loop stands ----------------------------------------------------------------
    @property
    def complete(self) -> int:
        return self.counts.complete

    @property
    def failed(self) -> int:
        return self.counts.failed

    def refresh(self, *, force: bool = False) -> None:
        """Re-read the counts from the storage (at most every ``refresh_s``)."""
        if not force and time.monotonic() - self._refreshed < self.refresh_s:
            return
        trials = self.study.get_trials(deepcopy=False)
        self.counts = tally(trials)
        self.front.add_trials(trials)
        self._refreshed = time.monotonic()

    def next_step(self) -> str:
        """``ASK`` another trial, ``WAIT`` (enough in flight), or ``FINISHED``
        (``search.trials`` COMPLETE and every promotion run, or too many failures: then
        :attr:`error` is set). A promotion round that is due is planned here."""
        if self.error is not None:
            return FINISHED
        self.refresh()
        self._plan_promotions()
        queued = self.counts.queued_promotions
        if self.complete >= self.target and not queued:
            return WAIT if self.promoting else FINISHED
        if self.failed >= self.max_failures:
            self.error = SearchError(too_many_failures(self.study, self.failed))
            return FINISHED
        if queued:
            return ASK
        if self.complete + len(self.live) - len(self.promoting) >= self.target:
            return WAIT
        return ASK

    def _plan_promotions(self) -> None:
        if self.promoter is None:
            return
        checkpoint = self.promoter.due(self.study, self.complete, self.target)
        if checkpoint is None:
            return
        promoted = self.promoter.plan_round(self.study, checkpoint)
        self.counts = dataclasses.replace(self.counts, queued_promotions=self.counts.queued_promotions + len(promoted))
        which = ", ".join(f"#{n}" for n in promoted) or "none"
        self.session.log(f"promotion after {checkpoint} trials: {which} "
                         f"({self.promoter.steps} fine-tune steps each)")

    def context_for(self, key: Hashable) -> TrialContext:
        """The trial context of the trial in flight under ``key``: a promoted trial's has its
        longer fine-tune."""
        ctx = self.session.context
        return ctx if key not in self.promoting else with_steps(ctx, self.promoting[key][0])

    def is_promotion(self, key: Hashable) -> bool:
        return key in self.promoting

    # -- one trial --------------------------------------------------------------------------------
    def ask(self, key: Hashable):
        """Ask the study for a trial and draw its plan; ``(trial, plan)``, or None when the
        space failed (the trial is then recorded FAIL). The trial is in flight under
        ``key`` until :meth:`record`."""
        room = self.target - self.complete - len(self.live)
        self.refiner.step(room=room)
        self.front_refiner.step(room=room)
        trial = self.study.ask()
        self.live[key] = trial  # from here on an interruption finds it
        self._note_promotion(key, trial)
        self.records.write(trial, {"driver": self.session.driver})
        try:
            with self.records.batched_params(trial):
                plan = self.session.space.suggest(trial)
        except KeyboardInterrupt:
            self._finish_suggest(trial)
            self.interrupt(key, INTERRUPTED_BY_USER)
            raise
        except Exception as exc:  # noqa: BLE001 - the space itself failed: record, go on
            self.record(key, failed_from(exc, "space"))
            return None
        return trial, plan

    def _note_promotion(self, key: Hashable, trial) -> None:
        if self.promoter is None:
            return
        attrs = trial.user_attrs
        steps = promotion_steps(attrs)
        if steps is not None:
            self.promoting[key] = (steps, int(attrs[PROMOTED_FROM]))
            self.counts = dataclasses.replace(self.counts,
                                              queued_promotions=max(0, self.counts.queued_promotions - 1))

    def _finish_suggest(self, trial) -> None:
        """An interrupt inside ``space.suggest`` leaves the trial with part of its
        parameters; complete them (already-set and enqueued ones come back as they
        are) so that the requeued trial repeats the same plan."""
        try:
            self.session.space.suggest(trial)
        except Exception:  # noqa: BLE001 - best effort: requeue what there is
            pass

    def record(self, key: Hashable, outcome: TrialOutcome) -> None:
        """Write the artifact, then the trial's attributes and constraints (one
        transaction), then tell the study: the only place trials are finished."""
        trial = self.live[key]
        attrs = dict(outcome.user_attrs)
        if outcome.artifact is not None:
            attrs["artifact"] = self._write_artifact(trial.number, outcome.artifact)
        if outcome.state == "complete":
            self.records.write(trial, attrs, outcome.constraints)
            self.study.tell(trial, outcome.values)
            if key in self.promoting:  # it replaces its short trial: count the front again
                self.front = FrontCache(self.study.directions)
                self.front.add_trials(self.study.get_trials(deepcopy=False))
                self.counts = dataclasses.replace(self.counts, promoted=self.counts.promoted + 1)
            else:
                self.front.add_values(trial.number, outcome.values, outcome.constraints)
                self.counts = dataclasses.replace(self.counts, complete=self.counts.complete + 1)
        else:
            kind = outcome.fail_kind or "error"
            attrs.update({FAIL_REASON: outcome.fail_reason or "unknown", FAIL_KIND: kind})
            self.records.write(trial, attrs)
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            interrupted = kind == "interrupted"
            self.counts = dataclasses.replace(self.counts, failed=self.counts.failed + (not interrupted),
                                              interrupted=self.counts.interrupted + interrupted)
        self.live.pop(key, None)
        promoted = self.promoting.pop(key, None)
        self._show()
        self._line(trial.number, outcome, promoted and f"promotes #{promoted[1]}, {promoted[0]} steps")
        if self.failed >= self.max_failures and self.complete < self.target and self.error is None:
            self.error = SearchError(too_many_failures(self.study, self.failed))

    def _write_artifact(self, number: int, blob: bytes) -> str:
        rel = Path("artifacts") / f"trial_{number:05d}.ctz"
        path = self.session.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(blob)
        os.replace(tmp, path)
        return str(rel)

    # -- interruptions ------------------------------------------------------------------------
    def interrupt(self, key: Hashable, reason: str) -> None:
        """FAIL "interrupted" and queue the same parameters again, unless the trial was
        recorded already (the interruption came after the tell)."""
        trial = self.live.get(key)
        if trial is None:
            return
        frozen = self.records.frozen(trial)
        if frozen.state != optuna.trial.TrialState.RUNNING:
            self.live.pop(key, None)
            return
        self.record(key, failed(reason, "interrupted"))
        requeue(self.study, frozen)

    def interrupt_all(self, reason: str) -> list[int]:
        """Interrupt every trial still in flight; returns their numbers."""
        numbers = []
        for key in list(self.live):
            numbers.append(self.live[key].number)
            self.interrupt(key, reason)
        return numbers

    @contextmanager
    def running(self):
        """Around the executor's run: on Ctrl-C or SIGTERM every trial in flight is
        FAIL "interrupted" and queued again, and whatever this driver still left
        RUNNING is swept (an interrupt can land anywhere, even inside a record)."""
        self.bar = Progress(self.target, done=self.complete, enabled=self.progress, stream=sys.stderr)
        self._show()
        log = self.session.log
        self.session.log = self.bar.around(log)  # log lines never land inside a bar frame
        try:
            yield self
        except KeyboardInterrupt:
            self.interrupt_all(INTERRUPTED_BY_USER)
            # E.g. interrupted inside study.ask(), before the trial was in flight here.
            repair_interrupted(self.study, self.session.driver, INTERRUPTED_BY_USER)
            raise
        finally:
            self.session.log = log
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self._show()
            self.bar.close()
            self.bar = None

    def _line(self, number: int, outcome: TrialOutcome, note: str | None = None) -> None:
        if self.bar is None:
            return
        attrs = outcome.user_attrs
        seconds = (attrs.get("timings") or {}).get("total_s")
        if attrs.get("rejected") == "budget" and note is None:  # scored as is: say why it took no time
            note = f"over {', '.join(attrs.get('over_budget') or ['a budget'])}, not fine-tuned"
        if outcome.state == "complete":
            self.bar.trial(number, "COMPLETE", metric=self.session.context.settings.metric, value=outcome.values[0],
                           size_bytes=attrs.get("size_bytes", outcome.values[1]), ratio=attrs.get("ratio", 0.0),
                           seconds=seconds, complete=self.complete, front=len(self.front), note=note)
        else:
            self.bar.trial(number, "FAIL", reason=outcome.fail_reason, seconds=seconds, complete=self.complete,
                           front=len(self.front), note=note)

    def _show(self) -> None:
        if self.bar is not None:
            self.bar.show(complete=self.complete, failed=self.failed, front=len(self.front))


def worker_record(worker: dict[str, Any], seconds: float, retries: int = 0) -> dict[str, Any]:
    """The ``worker`` attribute: where the trial ran, how long, how often it was retried."""
    return {**worker, "seconds": round(seconds, 4), "retries": int(retries)}
