"""Pareto-aware early stopping and budgets known before training.

Shared by the in-process loop and the Ray executor: the stopping rule is pure
(plain numbers in, a decision out) so that the local driver and the Ray Tune
scheduler (:mod:`compresstune.search._ray_stop`) decide in exactly the same way.

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

Budgets before training. The size budget is checked by
:func:`~compresstune.search._trial.run_trial`; :func:`run_checked` adds the
bit-operations budget (``constraints.max_bops``), which is also exact before
training because masks and bit-widths are fixed when the plan is applied, and
the latency budget (``constraints.max_latency_ms``): latency is measured on the
squashed model, whose shapes the plan fixes and fine-tuning does not change, so
it is measured once before training (the latency objective, when the study has
one, is measured again after training, as for every trial).

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

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable, Mapping

from compresstune.search._trial import (StopTrial, TrialContext, TrialOutcome, TrialSettings, constraints_for,
                                        run_trial)

__all__ = [
    "Budgets",
    "Preflight",
    "RungTable",
    "StopDecision",
    "StopRule",
    "TrialHooks",
    "margin",
    "preflight",
    "run_checked",
    "rung_result",
    "session_stopping",
    "stopped_outcome",
]

# The keys a Ray trainable reports at every rung (see search/_ray_stop.py).
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
        their rung accuracies (user attr ``rungs`` written by the in-process driver
        at each rung, else the fine-tune ``curve``), in step order."""
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
        """The rule of a :class:`~compresstune.config.StudyConfig`."""
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


# -- budgets before training -----------------------------------------------------------------------

@dataclass(frozen=True)
class Budgets:
    """Budgets checked from the plan before training, beyond run_trial's size budget."""

    max_bops: float | None = None
    activation_bits: int = 32
    max_latency_ms: float | None = None

    @classmethod
    def from_config(cls, config) -> "Budgets":
        c = config.constraints
        return cls(max_bops=c.max_bops, activation_bits=int(config.activation_bits), max_latency_ms=c.max_latency_ms)

    @property
    def any(self) -> bool:
        return self.max_bops is not None or self.max_latency_ms is not None


@dataclass
class Preflight:
    """What is known about a plan before training: packed size, bit-operations
    (when a budget or the objective needs them), and the budgets it breaks."""

    size_bytes: int
    bops: float | None = None
    latency_ms: float | None = None
    over: list[str] = field(default_factory=list)
    seconds: float = 0.0
    student: Any = field(default=None, repr=False)  # the applied plan, reused by the trial

    def applied(self) -> tuple[Any, int, float] | None:
        """``run_trial``'s ``applied`` argument: the student once; None after (or without) it."""
        student, self.student = self.student, None
        return None if student is None else (student, self.size_bytes, self.seconds)

    def extra_value(self, objective: str | None) -> float | None:
        """The value of the study's third objective, when it was measured here."""
        return {"bops": self.bops, "latency": self.latency_ms}.get(objective) if objective else None


def preflight(plan, ctx: TrialContext, budgets: Budgets = Budgets(), *, latency: bool = False) -> Preflight:
    """Apply the plan once and measure what needs no training.

    With ``latency=True`` and a latency objective, latency is measured too: it
    depends on the shapes and bit-widths of the plan, not on the weights that
    fine-tuning changes (the Ray driver needs it to record a stopped trial).

    Example:
        >>> pre = preflight(plan, ctx, Budgets(max_bops=1e9))  # doctest: +SKIP
        >>> pre.size_bytes, pre.bops, pre.over  # doctest: +SKIP
    """
    from compresstune.artifact import to_bytes
    from compresstune.compress import apply
    from compresstune.objectives import bit_operations, latency_ms

    t0 = time.perf_counter()
    student = apply(ctx.model, plan)
    out = Preflight(size_bytes=len(to_bytes(student)), student=student)
    if budgets.max_bops is not None or ctx.settings.extra_objective == "bops":
        out.bops = float(bit_operations(student, ctx.splits.val.x[:1], activation_bits=budgets.activation_bits))
    if budgets.max_latency_ms is not None or (latency and ctx.settings.extra_objective == "latency"):
        s = ctx.settings
        out.latency_ms = float(latency_ms(student, ctx.splits.val.x[:1], batch_size=s.latency_batch_size,
                                          repeats=s.latency_repeats, warmup=s.latency_warmup))
    if budgets.max_bops is not None and out.bops > budgets.max_bops:
        out.over.append("max_bops")
    if budgets.max_latency_ms is not None and out.latency_ms > budgets.max_latency_ms:
        out.over.append("max_latency_ms")
    out.seconds = time.perf_counter() - t0
    return out


def _budget_constraints(budgets: Budgets, pre: Preflight | None) -> dict[str, float]:
    """``max_bops`` / ``max_latency_ms`` constraint values (positive when over; 1.0 when unknown)."""
    out = {}
    for name, limit, value in (("max_bops", budgets.max_bops, pre and pre.bops),
                               ("max_latency_ms", budgets.max_latency_ms, pre and pre.latency_ms)):
        if limit is not None:
            out[name] = float(value - limit) if _finite(value) else 1.0
    return out


def run_checked(plan, ctx: TrialContext, *, budgets: Budgets = Budgets(),
                on_rung: Callable[[int, float, int], None] | None = None,
                pre: Preflight | None = None) -> TrialOutcome:
    """:func:`run_trial` plus the budgets known before training and rung reports.

    * A plan over ``budgets.max_bops`` or ``budgets.max_latency_ms`` is scored
      without fine-tuning and told COMPLETE with a positive constraint of that
      name and ``rejected: budget``, as run_trial does for the size budget. Every
      trial then carries the same constraints (<= 0 when within budget) and a
      ``bops`` / ``latency_before_training_ms`` attribute.
    * ``on_rung(step, val_accuracy, size_bytes)`` is called at every rung (the
      size is known before training); it may raise ``StopTrial``. A stopped
      trial's ``curve`` holds its rungs so far.

    With no budget and no ``on_rung`` this is exactly ``run_trial(plan, ctx)``.
    """
    if not budgets.any and on_rung is None:
        return run_trial(plan, ctx)
    try:
        pre = pre or preflight(plan, ctx, budgets)
    except Exception:  # noqa: BLE001 - let run_trial fail the trial with its own message
        return run_trial(plan, ctx)
    rungs: list[list[float]] = []
    if pre.over:
        settings = dataclasses.replace(ctx.settings, steps=0)
        outcome = run_trial(plan, dataclasses.replace(ctx, settings=settings), applied=pre.applied())
    else:
        def on_eval(step: int, acc: float) -> None:
            rungs.append([int(step), float(acc)])
            if on_rung is not None:
                on_rung(int(step), float(acc), pre.size_bytes)

        outcome = run_trial(plan, ctx, on_eval=on_eval, applied=pre.applied())
    if outcome.state != "complete":
        return outcome
    outcome.constraints.update(_budget_constraints(budgets, pre))
    if pre.bops is not None:
        outcome.user_attrs["bops"] = pre.bops
    if budgets.max_latency_ms is not None:
        outcome.user_attrs["latency_before_training_ms"] = pre.latency_ms
    if pre.over:
        outcome.user_attrs["rejected"] = "budget"
        outcome.user_attrs["over_budget"] = list(pre.over)
        outcome.artifact = None
    if outcome.user_attrs.get("stopped_at_rung") is not None and not outcome.user_attrs.get("curve"):
        outcome.user_attrs["curve"] = rungs
    return outcome


def stopped_outcome(settings: TrialSettings, *, plan_json: str, size_bytes: int, step: int, accuracy: float,
                    curve: list | None = None, extra_value: float | None = None, budgets: Budgets = Budgets(),
                    bops: float | None = None, test_accuracy: float | None = None,
                    latency_ms: float | None = None) -> TrialOutcome:
    """The outcome of a trial stopped by the Ray scheduler, built by the driver from
    the trial's last rung report (its worker is gone, so nothing else is known).

    Values, constraints (``stopped`` positive) and attributes match what
    ``run_trial`` records for a trial stopped in-process, except that
    ``test_accuracy`` is None unless given. ``extra_value`` is required when the
    study has a third objective (``settings.extra_objective``).
    """
    if not _finite(accuracy) or not _finite(size_bytes):
        return TrialOutcome("fail", fail_reason=f"stopped with a non-finite rung report "
                                                f"(accuracy {accuracy!r}, size {size_bytes!r})")
    values = [float(accuracy), float(size_bytes)]
    if settings.extra_objective is not None:
        if extra_value is None:
            raise ValueError(f"`extra_value` is required: the study has a third objective "
                             f"({settings.extra_objective!r}); report it with the rung results.")
        values.append(float(extra_value))
    constraints = constraints_for(settings, float(accuracy), int(size_bytes), stopped=True)
    constraints.update(_budget_constraints(budgets, Preflight(size_bytes=int(size_bytes), bops=bops,
                                                              latency_ms=latency_ms)))
    attrs = {"plan": plan_json, "size_bytes": int(size_bytes), "ratio": settings.reference_bytes / size_bytes,
             "val_accuracy": float(accuracy), "test_accuracy": test_accuracy,
             "curve": [list(p) for p in (curve or [[step, accuracy]])], "stopped_at_rung": int(step)}
    if bops is not None:
        attrs["bops"] = float(bops)
    if budgets.max_latency_ms is not None:
        attrs["latency_before_training_ms"] = latency_ms
    return TrialOutcome("complete", values=values, constraints=constraints, user_attrs=attrs)


def session_stopping(session) -> tuple[StopRule, RungTable] | None:
    """The study's rule and its rung table rebuilt from the recorded trials (what both
    executors start from); None when ``early_stopping`` is off."""
    if not session.config.early_stopping.enabled:
        return None
    rule = StopRule.from_config(session.config, n_val=len(session.context.splits.val))
    return rule, RungTable.from_trials(session.study.get_trials(deepcopy=False))


# -- the in-process loop's hooks ----------------------------------------------------------------------

class TrialHooks:
    """What the in-process loop adds around ``run_trial``: budgets before
    training and early stopping against the rung table of this study.

    The table is rebuilt from the study when the loop starts (resume) and grows
    as rungs are reported; each rung is also written to the trial's user attr
    ``rungs`` so a later run (or the report) can read the curves.
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

    def run(self, trial, plan, ctx: TrialContext) -> TrialOutcome:
        """Run one asked Optuna trial (the driver records the outcome)."""
        on_rung = self._on_rung(trial) if self.rule is not None else None
        outcome = run_checked(plan, ctx, budgets=self.budgets, on_rung=on_rung)
        rung = outcome.user_attrs.get("stopped_at_rung") if outcome.state == "complete" else None
        if rung is not None:
            self.stopped += 1
            self.steps_saved += max(0, ctx.settings.steps - int(rung))
        return outcome

    def _on_rung(self, trial) -> Callable[[int, float, int], None]:
        rungs: list[list[float]] = []

        def on_rung(step: int, acc: float, size_bytes: int) -> None:
            rungs.append([step, acc])
            trial.set_user_attr("rungs", list(rungs))
            best = self.table.add(trial.number, step=step, size_bytes=size_bytes, accuracy=acc)
            decision = self.rule.decide(self.table, key=trial.number, step=step, size_bytes=size_bytes,
                                        accuracy=best)
            if decision is not None:
                trial.set_user_attr("stopped_by", decision.as_attr())
                raise StopTrial(step, acc)

        return on_rung
