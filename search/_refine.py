"""Refining around the front (``sensitivity.refine_front``): after the seed trials, one trial in
every ``refine_front`` extends the high-ratio end of the feasible front.

The front's hypervolume is made at its high-ratio end, and a sampler rarely lands just beyond it.
So the feasible Pareto trials, from the largest ratio down, are continued along the seed planner's
path: from that trial's own settings, the cheapest moves by the scan's predicted drop per bit saved
until the real packed size is ``refine_step`` times smaller (the last sparsity move bisected on the
real size, as a seed's is). A trial is continued at most twice, the second time (only when the first
continuation broke a constraint) by half the step in log ratio, and not when the next front trial
above it already lies beyond its target. The new plan keeps the trial's distillation
settings and is enqueued as its own trial, marked ``refined_from`` (the front trial) and
``refine_target_ratio``; the sampler's own proposals run in between. Every refinement is recorded in
the study's ``front_refinements`` attribute when it is planned, so a resumed search does not repeat
one; a front trial whose continuation cannot reach the target, or gives a plan already tried, is
recorded as such and not tried again.
"""

from __future__ import annotations

from typing import Any

from compresstune.search._records import (FRONT_REFINEMENTS, REFINE_TARGET_RATIO, REFINED_FROM, SEED_TRIAL,
                                          fully_tuned_feasible)
from compresstune.search._seeds import _greedy_path, _hit, _state_of
from compresstune.search._surrogate import _HEADER_SLACK, _build_units, _params, _Sizer

__all__ = ["FrontRefiner"]


def _feasible_points(trials) -> list:
    """COMPLETE, feasible, fully fine-tuned trials that no promotion replaced."""
    return [t for t in trials if fully_tuned_feasible(t) and t.user_attrs.get("promoted_to") is None]


def _front_2d(trials, maximize: bool) -> list:
    """The trials no other beats on both the metric and the size, largest ratio (smallest size) first."""
    sign = 1.0 if maximize else -1.0
    ordered = sorted(trials, key=lambda t: (float(t.values[1]), -sign * float(t.values[0])))
    front, best = [], -float("inf")
    for t in ordered:
        score = sign * float(t.values[0])
        if score > best:
            front.append(t)
            best = score
    return front


def _next_source(front: list, tried: list[dict], step: float, succeeded: set[int]):
    """``(front trial, step)`` to continue next: from the largest ratio down, a trial not yet
    continued to a feasible plan (``succeeded``) and continued fewer than twice (the second time
    half the step, in log ratio), whose target is not already reached by the next front trial above
    it; None when there is none."""
    for i, t in enumerate(front):
        attempts = sum(1 for r in tried if int(r["of"]) == t.number)
        if attempts >= 2 or t.number in succeeded:
            continue
        this = step ** (0.5 ** attempts)
        target = float(t.user_attrs["ratio"]) * this
        if i > 0 and float(front[i - 1].user_attrs["ratio"]) <= target * 1.05:
            continue  # the gap above it is already filled
        return t, this
    return None


class FrontRefiner:
    """Enqueues one refinement of the front's high-ratio end for every ``refine_front`` trials asked
    once the seed trials (both rounds) have finished; both executors call :meth:`step` before
    asking for a trial."""

    def __init__(self, session) -> None:
        self.session = session
        cfg = session.config.sensitivity
        self.every = int(cfg.refine_front) if cfg.enabled else 0
        self.step_ratio = float(cfg.refine_step)
        self.asked = 0

    def step(self, room: int | None = None) -> None:
        if self.every <= 0 or (room is not None and room <= 0):
            return
        self.asked += 1
        if self.asked < self.every:
            return
        study = self.session.study
        trials = study.get_trials(deepcopy=False)
        if not self._ready(study, trials):
            return
        self.asked = 0
        try:
            self._refine(study, trials)
        except Exception as exc:  # noqa: BLE001 - a refinement is a proposal, never a reason to stop
            self.session.log(f"refining the front: skipped ({type(exc).__name__}: {exc})")

    def _ready(self, study, trials) -> bool:
        """The seeds (and their second round) have run, the scan is there and nothing is queued."""
        attrs = study.user_attrs
        if "sensitivity" not in attrs or "baseline" not in attrs:
            return False
        seeded = any(t.user_attrs.get(SEED_TRIAL) for t in trials)
        if seeded and "seed_refinement" not in attrs and self.session.config.sensitivity.refine_seeds:
            return False
        return not any(t.state.name in ("WAITING", "RUNNING") and (t.user_attrs.get(SEED_TRIAL)
                                                                  or t.user_attrs.get(REFINED_FROM) is not None)
                       for t in trials)

    def _refine(self, study, trials) -> None:
        tried = list(study.user_attrs.get(FRONT_REFINEMENTS) or [])
        maximize = study.directions[0].name == "MAXIMIZE"
        feasible = _feasible_points(trials)
        succeeded = {int(t.user_attrs[REFINED_FROM]) for t in feasible if t.user_attrs.get(REFINED_FROM) is not None}
        picked = _next_source(_front_2d(feasible, maximize), tried, self.step_ratio, succeeded)
        if picked is None:
            return
        source, step = picked
        params, size = self._plan(source, step)
        seen = {tuple(sorted(t.params.items())) for t in trials}
        if params is not None and tuple(sorted(params.items())) in seen:
            params = None
        reference = int(study.user_attrs["baseline"]["reference_bytes"])
        target = float(source.user_attrs["ratio"]) * step
        record = {"of": source.number, "target_ratio": round(target, 3),
                  "ratio": None if params is None else round(reference / size, 3)}
        study.set_user_attr(FRONT_REFINEMENTS, tried + [record])
        if params is None:
            return
        study.enqueue_trial(params, user_attrs={REFINED_FROM: source.number, REFINE_TARGET_RATIO: round(target, 3)},
                            skip_if_exists=False)
        self.session.log(f"refining the front: trial {source.number} ({source.user_attrs['ratio']:.1f}x) continued "
                         f"to {reference / size:.1f}x")

    def _plan(self, source, step: float) -> tuple[dict[str, Any] | None, int]:
        """``(params, real packed bytes)`` of ``source`` continued ``step`` times smaller; params None
        when the path cannot get there."""
        s = self.session
        attrs = s.study.user_attrs
        units_ = _build_units(s.space, attrs["sensitivity"])
        params = dict(source.params)
        if any(f"{u.prefix}:{k}" not in params for u in units_ for k in u.ladders):
            return None, 0  # a trial of an earlier space
        for u in units_:
            u.fixed = {k: params.get(k, v) for k, v in u.fixed.items()}
        distill = {k: v for k, v in params.items() if k.startswith("distill:")}
        start = _state_of(units_, params)
        sizer = _Sizer(s.space, s.context.model, _params(units_, start, distill))
        budget = float(source.user_attrs["size_bytes"]) / step - _HEADER_SLACK
        path = _greedy_path(units_, sizer, start, stop_size=budget * 0.8)
        _, chosen = _hit(units_, path[1:], distill, lambda p: sizer.real(p) <= budget)
        if chosen is None:
            return None, 0
        return {**params, **chosen}, sizer.real(chosen)
