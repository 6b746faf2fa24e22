"""Pareto-aware early stopping: the stop rule and the rung table it reads.

Shared by the in-process loop and the Ray executor: the stopping rule is pure
(plain numbers in, a decision out) so that the local driver and the Ray Tune
scheduler (:mod:`compresstune.search._ray.scheduler`) decide in exactly the same way.

The rule. During the recovery fine-tune a trial reports its validation accuracy
at rungs (every ``finetune.eval_every`` steps). A trial's entry at a rung is its
best accuracy up to that rung (a fine-tune's accuracy dips and recovers: on
digits one trial read 0.978 after 25 steps, 0.947 after 50 and 0.978 at the
end). At rung ``step`` of a fine-tune of ``final`` steps, a trial of packed size
``S`` and entry ``a`` is stopped when another trial of size ``<= S`` has, at
the same rung, an entry ``b`` with::

    b - a > margin_se * sqrt(p (1 - p) / n_val) + rung_slack * (1 - step / final) * (1 - p) + min_margin

with ``p = (a + b) / 2``: it is dominated at that rung by more than the
evaluation noise of a binomial accuracy on ``n_val`` examples, plus an allowance
for what the rest of the fine-tune may still change, taken as a share of the
error still to recover (so it is wide for a trial at 50 % and narrow for one at
98 %). Equal accuracies never dominate; NaN or infinite entries are ignored; a
trial is never stopped before ``min_step`` (the ``grace`` fraction of the steps)
or at its last step (which would save nothing). Size is known before training
(the packed size depends only on the plan), so it never needs a rung.

The defaults (2 standard errors, ``rung_slack`` 0.5, ``grace`` 0.25) were
chosen on the curves of plain searches (digits: 6 searches, LeNet-300-100: 3;
``benchmarks/early_stop_replay.py`` replays the rule over such curves) and then checked on searches with seed trials, whose stopped trials were re-run
to the end (BENCHMARKS.md, "Search efficiency"): without a grace period, a
digits trial at 0.75 after 25 of 150 steps, stopped by a smaller one at 0.93,
would have ended at 0.975 on the final front. The first sixth of a fine-tune
does not rank trials reliably; from a quarter on, none was lost.

The budgets known before training live in :mod:`compresstune.search._budgets`;
the trial body and the record of a stopped trial in :mod:`compresstune.search._trial`.

Example:
    >>> rule = StopRule(n_val=400, final_step=150)
    >>> table = RungTable()
    >>> table.add(0, step=50, size_bytes=1000, accuracy=0.95)
    0.95
    >>> rule.decide(table, key=1, step=50, size_bytes=2000, accuracy=0.80).by
    0
    >>> rule.decide(table, key=1, step=50, size_bytes=900, accuracy=0.80) is None  # smaller: not dominated
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable, Mapping

from compresstune.search._budgets import Budgets
from compresstune.search._trial import StopTrial, TrialContext, TrialOutcome, run_checked

__all__ = [
    "RungTable",
    "StopDecision",
    "StopRule",
    "TrialHooks",
    "margin",
    "rung_result",
    "session_stopping",
]
# The keys a Ray trainable reports at every rung (see search/_ray/scheduler.py).
STEP_KEY, ACCURACY_KEY, SIZE_KEY = "rung_step", "val_accuracy", "size_bytes"


def rung_result(step: int, accuracy: float, size_bytes: int, **extra: Any) -> dict[str, Any]:
    """The result a Ray trainable reports at a rung (the keys the scheduler reads).

    Example:
        >>> rung_result(50, 0.9, 1234)
        {'rung_step': 50, 'val_accuracy': 0.9, 'size_bytes': 1234}
    """
    return {STEP_KEY: int(step), ACCURACY_KEY: float(accuracy), SIZE_KEY: int(size_bytes), **extra}


# -- the pure rule -----------------------------------------------------------------------------

def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def margin(a: float, b: float, n_val: int, *, margin_se: float = 2.0, min_margin: float = 0.0,
           remaining: float = 0.0, rung_slack: float = 0.0) -> float:
    """How much higher than ``a`` an accuracy ``b`` must be to count as clearly higher.

    ``margin_se`` binomial standard errors of an accuracy on ``n_val`` examples at
    ``p = (a + b) / 2`` (kept at least half an example away from 0 and 1, so a
    perfect score still has a margin), plus ``rung_slack`` times the
    ``remaining`` fraction of the fine-tune times the error ``1 - p``, plus
    ``min_margin``.

    Example:
        >>> round(margin(0.9, 0.9, 100), 4)
        0.06
        >>> round(margin(0.9, 0.9, 100, remaining=0.5, rung_slack=0.5), 4)
        0.085
    """
    n = max(int(n_val), 1)
    p = min(max((a + b) / 2.0, 0.5 / n), 1.0 - 0.5 / n)
    slack = rung_slack * max(0.0, remaining) * (1.0 - p)
    return margin_se * math.sqrt(p * (1.0 - p) / n) + slack + min_margin


class RungTable:
    """Every trial's best accuracy up to each rung: ``step -> {key: (size_bytes, accuracy)}``.

    Keys are anything hashable (the Optuna trial number in both executors). A
    later report for the same key and step replaces the earlier.

    Example:
        >>> t = RungTable()
        >>> t.add("a", step=50, size_bytes=10, accuracy=0.9)
        0.9
        >>> t.add("a", step=100, size_bytes=10, accuracy=0.8)  # a dip: the entry keeps the best so far
        0.9
        >>> t.at(100)
        {'a': (10.0, 0.9)}
    """

    def __init__(self) -> None:
        self._rows: dict[int, dict[Hashable, tuple[float, float]]] = {}

    def add(self, key: Hashable, *, step: int, size_bytes: float, accuracy: float) -> float:
        """Enter a rung report; returns the entry (the best accuracy of ``key`` up to ``step``)."""
        earlier = [row[key][1] for s, row in self._rows.items() if s < int(step) and key in row]
        best = max([float(accuracy), *(a for a in earlier if _finite(a))]) if _finite(accuracy) else float(accuracy)
        self._rows.setdefault(int(step), {})[key] = (float(size_bytes), best)
        return best

    def at(self, step: int) -> dict[Hashable, tuple[float, float]]:
        """The entries at one rung (a copy)."""
        return dict(self._rows.get(int(step), {}))

    @property
    def steps(self) -> list[int]:
        return sorted(self._rows)

    def __len__(self) -> int:
        return sum(len(v) for v in self._rows.values())

    @classmethod
    def from_trials(cls, trials: Iterable[Any]) -> "RungTable":
        """Rebuild from recorded trials (resume): COMPLETE trials with a size and
        their rung accuracies (the fine-tune ``curve``; schema-1 records may hold
        ``rungs`` instead), in step order."""
        table = cls()
        for t in trials:
            if getattr(getattr(t, "state", None), "name", None) != "COMPLETE":
                continue
            attrs = t.user_attrs or {}
            size = attrs.get("size_bytes")
            points = attrs.get("rungs") or attrs.get("curve") or []
            if not _finite(size):
                continue
            rows = []
            for point in points:
                try:
                    rows.append((int(point[0]), float(point[1])))
                except (TypeError, ValueError, IndexError):
                    continue
            for step, acc in sorted(rows):
                table.add(t.number, step=step, size_bytes=size, accuracy=acc)
        return table


@dataclass(frozen=True)
class StopDecision:
    """Why a trial is stopped: at ``step`` with ``accuracy``, dominated by trial
    ``by`` (size ``by_size``, accuracy ``by_accuracy``) by more than ``margin``."""

    step: int
    accuracy: float
    by: Hashable
    by_size: float
    by_accuracy: float
    margin: float

    def as_attr(self) -> dict[str, Any]:
        by = self.by if isinstance(self.by, (int, str)) else str(self.by)
        return {"step": self.step, "accuracy": self.accuracy, "by": by, "by_size_bytes": self.by_size,
                "by_accuracy": self.by_accuracy, "margin": self.margin}


@dataclass(frozen=True)
class StopRule:
    """The early-stopping rule (see the module docstring).

    Args:
        n_val: validation examples behind each rung accuracy.
        final_step: the fine-tune's last step; a trial is never stopped there.
        margin_se: the margin in binomial standard errors.
        rung_slack: added margin, as a share of the error ``1 - p`` per fraction of the
            fine-tune still to run (the study config's default is 0.5).
        min_margin: an absolute accuracy margin added to it.
        min_step: no trial is stopped before this step (grace period).
    """

    n_val: int
    final_step: int
    margin_se: float = 2.0
    min_margin: float = 0.0
    min_step: int = 0
    rung_slack: float = 0.0

    def __post_init__(self) -> None:
        for name in ("n_val", "final_step"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"`{name}` must be an integer >= 1; got {v!r}.")
        for name in ("margin_se", "min_margin", "min_step", "rung_slack"):
            v = getattr(self, name)
            if not _finite(v) or v < 0:
                raise ValueError(f"`{name}` must be a finite number >= 0; got {v!r}.")

    @classmethod
    def from_config(cls, config, *, n_val: int) -> "StopRule":
        """The rule of a :class:`~compresstune.search.config.StudyConfig`."""
        es = config.early_stopping
        final = max(1, int(config.finetune.steps))
        return cls(n_val=int(n_val), final_step=final, margin_se=float(es.margin_se), min_margin=float(es.min_margin),
                   min_step=int(math.ceil(float(es.grace) * final - 1e-9)), rung_slack=float(es.rung_slack))

    def decide(self, table: RungTable | Mapping[int, Mapping[Hashable, tuple[float, float]]], *, key: Hashable,
               step: int, size_bytes: float, accuracy: float) -> StopDecision | None:
        """A :class:`StopDecision` when the trial should stop at this rung, else None.

        ``table`` holds the other trials' entries (the trial's own entry, under
        ``key``, is ignored). Among the dominating trials the decision names the
        most accurate one (then the smallest).
        """
        if not (_finite(step) and _finite(size_bytes) and _finite(accuracy)):
            return None
        if step < self.min_step or step >= self.final_step:
            return None
        rows = table.at(step) if isinstance(table, RungTable) else dict(table.get(step, {}))
        best = None
        for other, entry in rows.items():
            if other == key:
                continue
            try:
                o_size, o_acc = entry
            except (TypeError, ValueError):
                continue
            if not (_finite(o_size) and _finite(o_acc)) or o_size > size_bytes:
                continue
            m = margin(accuracy, o_acc, self.n_val, margin_se=self.margin_se, min_margin=self.min_margin,
                       remaining=1.0 - step / self.final_step, rung_slack=self.rung_slack)
            if o_acc - accuracy > m and (best is None or (o_acc, -o_size) > (best[2], -best[1])):
                best = (other, o_size, o_acc, m)
        if best is None:
            return None
        return StopDecision(step=int(step), accuracy=float(accuracy), by=best[0], by_size=best[1],
                            by_accuracy=best[2], margin=best[3])


# -- both executors ---------------------------------------------------------------------------------

def session_stopping(session) -> tuple[StopRule, RungTable] | None:
    """The study's rule and its rung table rebuilt from the recorded trials (what both
    executors start from); None when ``early_stopping`` is off."""
    if not session.config.early_stopping.enabled:
        return None
    rule = StopRule.from_config(session.config, n_val=session.context.settings.n_val)
    return rule, RungTable.from_trials(session.study.get_trials(deepcopy=False))


# -- the in-process loop's hooks ----------------------------------------------------------------------

class TrialHooks:
    """What the in-process loop adds around ``run_trial``: budgets before
    training and early stopping against the rung table of this study.

    The table is rebuilt from the study when the loop starts (resume) and grows
    as rungs are reported; a trial's rungs are recorded in its ``curve``.
    """

    def __init__(self, *, budgets: Budgets, rule: StopRule | None, table: RungTable | None = None) -> None:
        self.budgets = budgets
        self.rule = rule
        self.table = table if table is not None else RungTable()
        self.stopped = 0
        self.steps_saved = 0

    @classmethod
    def for_session(cls, session) -> "TrialHooks":
        rule, table = session_stopping(session) or (None, None)
        return cls(budgets=Budgets.from_config(session.config), rule=rule, table=table)

    def run(self, trial, plan, ctx: TrialContext, *, stop: bool = True) -> TrialOutcome:
        """Run one asked Optuna trial (the driver records the outcome); ``stop=False`` runs it
        to the end whatever the stop rule says (a promoted trial)."""
        on_rung = self._on_rung(trial) if self.rule is not None and stop else None
        outcome = run_checked(plan, ctx, budgets=self.budgets, on_rung=on_rung)
        rung = outcome.user_attrs.get("stopped_at_rung") if outcome.state == "complete" else None
        if rung is not None:
            self.stopped += 1
            self.steps_saved += max(0, ctx.settings.steps - int(rung))
        return outcome

    def _on_rung(self, trial) -> Callable[[int, float, int], None]:
        def on_rung(step: int, acc: float, size_bytes: int) -> None:
            best = self.table.add(trial.number, step=step, size_bytes=size_bytes, accuracy=acc)
            decision = self.rule.decide(self.table, key=trial.number, step=step, size_bytes=size_bytes,
                                        accuracy=best)
            if decision is not None:
                raise StopTrial(step, acc, decision)

        return on_rung
