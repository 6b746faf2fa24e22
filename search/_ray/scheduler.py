"""The early-stopping rule of :mod:`compresstune.search._early_stop` as a Ray Tune
scheduler (part of the Ray executor, the only package that imports ``ray``).

Driver::

    rule = StopRule.from_config(config, n_val=settings.n_val)
    sched = ParetoStopScheduler(rule=rule, table=RungTable.from_trials(study.get_trials(deepcopy=False)),
                                key_of=lambda trial: <the Optuna trial number of this Tune trial>)
    tune.Tuner(trainable, tune_config=tune.TuneConfig(scheduler=sched, ...))

Worker (the trainable), at every rung (``finetune.eval_every`` steps)::

    outcome = run_checked(plan, ctx, budgets=Budgets.from_config(config),
                          on_rung=lambda step, acc, size: tune.report(rung_result(step, acc, size)))

i.e. results ``{"rung_step": step, "val_accuracy": acc, "size_bytes": size}``
(plus ``"extra_value"``, the third objective measured before training, when
the study has one: a stopped trial's record needs it; and ``"bops"``,
``"macs"`` and ``"latency_ms"`` when known). Results without these three keys (e.g. a final
summary) are ignored. When the rule says a trial is dominated at its rung the
scheduler answers ``STOP``; Tune then ends the trial (its function never
returns an outcome), and :attr:`ParetoStopScheduler.decisions` (table key ->
:class:`StopDecision`) says at which rung and why, so that the driver records it
COMPLETE with its rung accuracy via
:func:`~compresstune.search._trial.stopped_outcome`, the builder the in-process
loop uses too.

Example:
    >>> from compresstune.search._early_stop import StopRule
    >>> sched = ParetoStopScheduler(rule=StopRule(n_val=360, final_step=150))
    >>> sched.debug_string()
    'Pareto-aware early stopping (margin 2.0 SE + 0.0): 0 trials stopped.'
"""

from __future__ import annotations

from typing import Any, Hashable

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from compresstune.search._early_stop import (ACCURACY_KEY, SIZE_KEY, STEP_KEY, RungTable, StopDecision, StopRule,
                                             session_stopping)

__all__ = ["ParetoStopScheduler", "optuna_number", "stop_scheduler"]


class ParetoStopScheduler(FIFOScheduler):
    """FIFO scheduling plus Pareto-aware early stopping at rungs.

    Args:
        rule: the :class:`StopRule` (``StopRule.from_config(config, n_val=len(val))``).
        table: rung accuracies already known (e.g. ``RungTable.from_trials(study.trials)``
            on resume); keys of earlier trials must not collide with Tune trial ids
            (Optuna trial numbers are ints, Tune ids are strings).
        step_key, accuracy_key, size_key: the result keys the trainable reports.
        key_of: maps a Tune ``Trial`` to the key used in the table (default: ``trial.trial_id``).
    """

    def __init__(self, *, rule: StopRule, table: RungTable | None = None, step_key: str = STEP_KEY,
                 accuracy_key: str = ACCURACY_KEY, size_key: str = SIZE_KEY, key_of=None) -> None:
        super().__init__()
        if not isinstance(rule, StopRule):
            raise ValueError(f"`rule` must be a StopRule; got {type(rule).__name__}.")
        self.rule = rule
        self.table = table if table is not None else RungTable()
        self.keys = (step_key, accuracy_key, size_key)
        self.key_of = key_of or (lambda trial: trial.trial_id)
        self.decisions: dict[Hashable, StopDecision] = {}
        # Every rung must be judged as it arrives, never a batch of buffered results.
        self._supports_buffered_results = False

    def on_trial_result(self, tune_controller, trial, result: dict[str, Any]) -> str:
        step_key, acc_key, size_key = self.keys
        if not all(k in result for k in self.keys):
            return TrialScheduler.CONTINUE
        key = self.key_of(trial)
        try:
            step, acc, size = int(result[step_key]), float(result[acc_key]), float(result[size_key])
        except (TypeError, ValueError):
            return TrialScheduler.CONTINUE
        best = self.table.add(key, step=step, size_bytes=size, accuracy=acc)
        decision = self.rule.decide(self.table, key=key, step=step, size_bytes=size, accuracy=best)
        if decision is None:
            return TrialScheduler.CONTINUE
        self.decisions[key] = decision
        return TrialScheduler.STOP

    def debug_string(self) -> str:
        return (f"Pareto-aware early stopping (margin {self.rule.margin_se} SE + {self.rule.min_margin}): "
                f"{len(self.decisions)} trials stopped.")


def optuna_number(trial) -> Any:
    """The Optuna trial number of a Tune trial (the searcher puts it in the config)."""
    return trial.config.get("number")


def stop_scheduler(session) -> ParetoStopScheduler | None:
    """The early-stopping scheduler of the study (None when ``early_stopping`` is off); its
    rung table starts from the study's recorded trials, keyed like them by trial number."""
    stopping = session_stopping(session)
    if stopping is None:
        return None
    rule, table = stopping
    return ParetoStopScheduler(rule=rule, table=table, key_of=optuna_number)
