"""The Ray driver side: a Ray Tune searcher that is a thin adapter around the
trial loop (search/_loop.py), and the Tune callbacks that feed it."""

from __future__ import annotations

import pickle
from typing import Any

from ray import tune
from ray.tune.search import Searcher

from compresstune.search._budgets import Budgets
from compresstune.search._early_stop import ACCURACY_KEY, STEP_KEY
from compresstune.search._loop import ASK, FINISHED, INTERRUPTED_BY_STOP, TrialLoop
from compresstune.search._ray.scheduler import ParetoStopScheduler
from compresstune.search._session import Session
from compresstune.search._trial import TrialOutcome, failed, stopped_outcome

__all__ = ["StudySearcher", "WORKER_RETRIES"]

WORKER_RETRIES = 3
"""How many times Ray Tune restarts a trial whose worker process or node died."""


class _DriverOnly:
    """Tune pickles its config (tuner.pkl) and with it the searcher, stopper and callback.
    They hold the session and live only in the driver: pickle them empty."""

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


class StudySearcher(_DriverOnly, Searcher):
    """Ray Tune searcher backed by the trial loop of a :class:`Session`.

    ``suggest`` asks the loop for a trial and returns ``{"number", "plan"}``; it
    returns ``None`` (wait) while COMPLETE + running trials already reach
    ``search.trials``, and ``Searcher.FINISHED`` once they are COMPLETE or
    ``search.max_failures`` trials have failed. ``on_trial_complete`` records the
    outcome with the loop. Tune trial ids are the loop's keys.
    """

    def __init__(self, session: Session, *, bar: Any = None, refresh_s: float = 1.0,
                 scheduler: ParetoStopScheduler | None = None, progress: bool = False,
                 loop: TrialLoop | None = None) -> None:
        super().__init__(metric=None, mode=None)
        self.session, self.study = session, session.study
        self.loop = loop or TrialLoop(session, progress=progress, refresh_s=refresh_s)
        self.scheduler = scheduler
        self.plans: dict[str, str] = {}
        self.rungs: dict[str, dict[int, float]] = {}
        self.outcomes: dict[str, bytes] = {}
        self.workers: dict[str, dict] = {}
        self.tune_trials: dict[str, Any] = {}

    # -- the loop's state, by the names the Tune side reads ---------------------------------------
    @property
    def live(self) -> dict:
        return self.loop.live

    @property
    def error(self):
        return self.loop.error

    # -- Tune's interface ------------------------------------------------------------------
    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def suggest(self, trial_id: str):
        step = self.loop.next_step()
        if step == FINISHED:
            return Searcher.FINISHED
        if step != ASK:
            return None
        asked = self.loop.ask(trial_id)
        if asked is None:
            return None  # the space failed; recorded
        trial, plan = asked
        self.plans[trial_id] = plan.to_json()
        config = {"number": trial.number, "plan": self.plans[trial_id]}
        if self.loop.is_promotion(trial_id):  # a longer fine-tune, never stopped at a rung
            config["steps"] = self.loop.context_for(trial_id).settings.steps
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._add_rung(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        # The trial leaves `live` only once recorded: an interrupt in between finds it there
        # (interrupt_all then fails it unless the tell already happened).
        trial = self.loop.live.get(trial_id)
        if trial is None:
            return
        outcome = self._outcome(trial, trial_id, result or {}, error)
        if outcome is None:
            # Stopped by us (too many failures) before it reported: run it again on resume.
            self.loop.interrupt(trial_id, INTERRUPTED_BY_STOP)
            return
        self.loop.record(trial_id, outcome)

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        pass  # the study is the state; a resumed run reads it

    def restore_from_dir(self, checkpoint_dir: str) -> None:
        pass

    def interrupt_all(self, reason: str) -> list[int]:
        """Interrupt every trial still in flight; returns their numbers."""
        return self.loop.interrupt_all(reason)

    # -- what came back ---------------------------------------------------------------------------
    def _outcome(self, trial, trial_id: str, result: dict, error: bool) -> TrialOutcome | None:
        blob = self.outcomes.pop(trial_id, None)
        worker = self.workers.pop(trial_id, None)
        plan_json = self.plans.pop(trial_id, None)
        self._add_rung(trial_id, result)
        curve = sorted(self.rungs.pop(trial_id, {}).items())
        decision = self.scheduler.decisions.get(trial.number) if self.scheduler is not None else None
        if blob is None and decision is not None and not error:
            return self._stopped(decision, plan_json, curve, result)
        if blob is None and self.loop.error is not None and not error:
            return None
        outcome = pickle.loads(blob) if blob is not None and not error else failed(self._error_text(trial_id),
                                                                                    "worker")
        if worker is not None:
            tune_trial = self.tune_trials.get(trial_id)
            worker["retries"] = int(getattr(tune_trial, "num_failures", 0) or 0)
            outcome.user_attrs["worker"] = worker
        return outcome

    def _add_rung(self, trial_id: str, result: dict) -> None:
        if STEP_KEY in result and ACCURACY_KEY in result:
            self.rungs.setdefault(trial_id, {})[int(result[STEP_KEY])] = float(result[ACCURACY_KEY])

    def _stopped(self, decision, plan_json: str | None, curve: list, result: dict) -> TrialOutcome:
        """The record of a trial the scheduler stopped, from its rung reports (its worker
        thread ended at the report, so this is all there is; test accuracy is unknown,
        as for a trial stopped in-process)."""
        worker = result.get("worker") or {k[len("worker/"):]: v for k, v in result.items() if k.startswith("worker/")}
        seconds = worker.get("seconds") if isinstance(worker, dict) else None
        try:
            outcome = stopped_outcome(
                self.session.context.settings, plan_json=plan_json or "", size_bytes=int(result["size_bytes"]),
                step=decision.step, accuracy=float(result[ACCURACY_KEY]), curve=[list(p) for p in curve],
                extra_value=result.get("extra_value"), budgets=Budgets.from_config(self.session.config),
                bops=result.get("bops"), macs=result.get("macs"), latency_ms=result.get("latency_ms"),
                decision=decision,
                timings={"total_s": seconds} if seconds is not None else None)
        except (KeyError, TypeError, ValueError) as exc:
            return failed(f"ray: stopped at rung {decision.step} but its report is incomplete: "
                          f"{type(exc).__name__}: {exc}")
        if worker:
            outcome.user_attrs["worker"] = {**worker, "retries": 0}
        return outcome

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
        return f"ray: the trial's worker failed{attempts} (worker process or node died?): {detail}"


class Collector(_DriverOnly, tune.Callback):
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


class StopWhenSearchFails(_DriverOnly, tune.Stopper):
    """Stops every trial at once when the searcher gave up (too many failures)."""

    def __init__(self, searcher: StudySearcher) -> None:
        self.searcher = searcher

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.searcher.error is not None
