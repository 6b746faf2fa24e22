"""Promotion to a longer fine-tune (the study's ``promotion`` section).

Every trial fine-tunes for ``finetune.steps``: a budget that ranks plans, and
decides feasibility, but is short. A promotion round takes the plans on (or
near) the front so far, and those the metric constraint rejected by at most a
margin, and runs each again as a trial of its own: the same parameters (so the
same plan and distillation settings), fine-tuned for ``promotion.steps`` with no
early stopping, linked to its short trial by ``promoted_from``. The promoted
trial replaces the short one on the front and in the hypervolume
(search/pareto.py), so the final front reflects the longer budget. This is the
multi-fidelity half of successive halving that early stopping does not cover.

Rounds are due after every ``promotion.every`` COMPLETE (short) trials and after
the last one; each is recorded in the study (``promotion_rounds``) when it is
planned, and its trials are enqueued, so a killed driver resumes them. Promoted
trials do not count against ``search.trials``.

Example:
    >>> checkpoints(100, every=40)
    [40, 80, 100]
    >>> checkpoints(100, every=None)
    [100]
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Sequence

import numpy as np
from optuna.trial import TrialState

from compresstune.search._budgets import drop_name

__all__ = ["PROMOTED_FROM", "PROMOTION_ROUNDS", "PROMOTION_STEPS", "Promoter", "candidates", "checkpoints",
           "is_promotion", "promotion_steps", "superseded"]

PROMOTED_FROM = "promoted_from"  # trial attr: the short trial this one fine-tunes longer
PROMOTION_STEPS = "promotion_steps"  # trial attr: its fine-tune steps
PROMOTION_ROUNDS = "promotion_rounds"  # study attr: the rounds planned so far
DEFAULT_FACTOR = 4  # promotion.steps defaults to 4x finetune.steps


def promotion_steps(user_attrs: dict | None) -> int | None:
    """The fine-tune steps of a promoted trial (from its attributes); None for any other trial."""
    steps = (user_attrs or {}).get(PROMOTION_STEPS)
    return None if steps is None else int(steps)


def is_promotion(trial) -> bool:
    """True for a trial that re-runs another one with the longer fine-tune."""
    return (trial.user_attrs or {}).get(PROMOTED_FROM) is not None


def checkpoints(target: int, every: int | None) -> list[int]:
    """The COMPLETE-trial counts after which a round is due: every ``every``, and ``target``."""
    marks = list(range(every, target, every)) if every else []
    return marks + [int(target)]


def superseded(trials: Iterable[Any]) -> dict[int, int]:
    """``{short trial: its COMPLETE promotion}``: the short trials the front no longer counts."""
    out = {}
    for t in trials:
        source = (t.user_attrs or {}).get(PROMOTED_FROM)
        if source is not None and t.state == TrialState.COMPLETE:
            out[int(source)] = t.number
    return out


# -- which trials a round promotes ------------------------------------------------------------------

def _constraints(trial, names: Sequence[str] = ()) -> dict[str, float]:
    """Constraint values by name (an older study's list entries named by ``names``)."""
    from compresstune.search.pareto import _constraints as constraint_values

    return {names[int(k)] if k.isdigit() and int(k) < len(names) else k: v
            for k, v in constraint_values(trial).items()}


def _eligible(trial) -> bool:
    attrs = trial.user_attrs or {}
    return (trial.state == TrialState.COMPLETE and trial.values is not None
            and all(math.isfinite(v) for v in trial.values)
            and attrs.get("rejected") is None and attrs.get("stopped_at_rung") is None)


def _near_miss(trial, metric_key: str | None, margin: float, names: Sequence[str]) -> bool:
    """Broke the metric constraint alone, by at most ``margin``."""
    if metric_key is None:
        return False
    c = _constraints(trial, names)
    over = c.get(metric_key, 0.0)
    return 0.0 < over <= margin and all(v <= 0 for k, v in c.items() if k != metric_key)


def _layers(points: np.ndarray, directions: Sequence[Any], ranks: int) -> np.ndarray:
    """Pareto layer (1 = the front) of each row, up to ``ranks``; 0 beyond."""
    from compresstune.search.pareto import pareto_mask

    layer = np.zeros(len(points), dtype=int)
    left = np.ones(len(points), dtype=bool)
    for rank in range(1, ranks + 1):
        if not left.any():
            break
        idx = np.flatnonzero(left)
        on = idx[pareto_mask(points[idx], directions)]
        layer[on] = rank
        left[on] = False
    return layer


def _dominated(point: np.ndarray, others: np.ndarray, signs: np.ndarray) -> bool:
    if not len(others):
        return False
    a, b = others * signs, point * signs
    return bool(np.any(np.all(a >= b, axis=1) & np.any(a > b, axis=1)))


def candidates(trials: Sequence[Any], directions: Sequence[Any], *, ranks: int = 1, metric_key: str | None,
               margin: float, max_trials: int, names: Sequence[str] = ()) -> list[Any]:
    """The trials a round promotes, the smallest first: short trials not promoted yet, on
    the first ``ranks`` Pareto layers of the feasible trials (a promoted trial standing in for
    its short one), or broken by the metric constraint alone by at most ``margin`` and
    dominated by no feasible trial. ``names``: the study's ``constraint_names`` (older studies
    store constraints as a list).

    Example:
        >>> candidates([], ["maximize", "minimize"], metric_key="accuracy_drop", margin=0.01, max_trials=5)
        []
    """
    gone = superseded(trials)
    promoted = {int(t.user_attrs[PROMOTED_FROM]) for t in trials if is_promotion(t)}
    pool = [t for t in trials if _eligible(t) and t.number not in gone]
    feasible = [t for t in pool if all(v <= 0 for v in _constraints(t).values())]
    fresh = {t.number for t in pool if not is_promotion(t) and t.number not in promoted}
    chosen = []
    if feasible:
        points = np.array([t.values for t in feasible], dtype=float)
        layer = _layers(points, directions, ranks)
        chosen += [t for t, r in zip(feasible, layer) if r and t.number in fresh]
        signs = np.array([1.0 if getattr(d, "name", str(d)).upper().endswith("MAXIMIZE") else -1.0
                          for d in directions])
    else:
        points, signs = np.zeros((0, len(directions))), np.ones(len(directions))
    for t in pool:
        if t.number in fresh and _near_miss(t, metric_key, margin, names) and not _dominated(
                np.array(t.values, dtype=float), points, signs):
            chosen.append(t)
    chosen.sort(key=lambda t: (t.values[1], t.number))
    return chosen[:max_trials]


# -- the rounds ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class Promoter:
    """Plans the promotion rounds of one study and enqueues their trials."""

    steps: int
    every: int | None
    ranks: int
    margin: float
    max_trials: int
    metric_key: str | None

    @classmethod
    def for_session(cls, session) -> "Promoter | None":
        """The study's promoter; None when ``promotion.enabled`` is off."""
        p = session.config.promotion
        if not p.enabled:
            return None
        settings = session.context.settings
        drop = settings.max_drop
        margin = p.margin if p.margin is not None else (0.5 * drop if drop is not None else 0.0)
        return cls(steps=int(p.steps or max(1, DEFAULT_FACTOR * settings.steps)), every=p.every, ranks=p.ranks,
                   margin=float(margin), max_trials=p.max_trials,
                   metric_key=drop_name(settings.metric) if drop is not None else None)

    planned: set[int] | None = None  # checkpoints whose round is recorded (read from the study once)

    def due(self, study, complete: int, target: int) -> int | None:
        """The first checkpoint reached and not planned yet, else None."""
        marks = [c for c in checkpoints(target, self.every) if c <= complete]
        if not marks:
            return None
        if self.planned is None:
            self.planned = {int(r["after"]) for r in study.user_attrs.get(PROMOTION_ROUNDS) or []}
        return next((c for c in marks if c not in self.planned), None)

    def plan_round(self, study, checkpoint: int) -> list[int]:
        """Choose this round's trials, enqueue their promotions, record the round; returns the
        numbers of the short trials promoted (possibly none: the round is recorded anyway)."""
        trials = study.get_trials(deepcopy=False)
        chosen = candidates(trials, study.directions, ranks=self.ranks, metric_key=self.metric_key,
                            margin=self.margin, max_trials=self.max_trials,
                            names=list(study.user_attrs.get("constraint_names") or []))
        for t in chosen:
            study.enqueue_trial(dict(t.params), user_attrs={PROMOTED_FROM: t.number, PROMOTION_STEPS: self.steps},
                                skip_if_exists=False)
        rounds = list(study.user_attrs.get(PROMOTION_ROUNDS) or [])
        rounds.append({"after": checkpoint, "steps": self.steps, "promoted": [t.number for t in chosen]})
        study.set_user_attr(PROMOTION_ROUNDS, rounds)
        self.planned = {int(r["after"]) for r in rounds}
        return [t.number for t in chosen]
