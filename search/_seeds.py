"""Seed trials planned from the sensitivity scan, and the optional narrowing.

Seeds. For each target ratio (reference fp32 bytes / packed bytes; 4x, 8x,
16x, 32x, 64x by default) one plan that spends the compression where the scan
says it hurts least, as space parameters for ``study.enqueue_trial``:

1. Every unit starts at its least compressive setting allowed by the space
   (lowest sparsity, most bits, highest rank fraction, no structured pruning).
2. A greedy path compresses step by step: at each step, among every unit's
   next sparsity levels (a 0.05 grid), next lower bit-width and next lower rank
   fraction, take the move with the smallest increase of the predicted drop per
   bit of size saved. The predicted drop of a plan is the sum over units and
   knobs of the scanned drops (clamped at 0, made monotone, interpolated
   between scanned levels); the size along the path is the real packed size of
   the starting plan plus, per unit, the change predicted by a size model of
   the artifact format (:func:`estimate_bytes`: index stream near its entropy,
   bit-packed codes plus a float32 scale per row, or float16/32 values).
3. Per target, the first plan on the path that reaches it is checked with the
   REAL packed size of the whole model (apply + to_bytes). When the move that
   reached it was a sparsity move, that sparsity is bisected on the real size
   so the ratio lands just at or above the target; when it was a discrete move
   (bits, rank) that overshoots, the plan before it is also continued with
   sparsity moves alone (bisected the same way), and the one within 10 % of the
   target wins, then the one with the lower predicted drop.

Only the per-layer parameters are enqueued: the distillation temperature and
alpha of a seed are left to the sampler (on digits, pinning them to one
setting for every seed lowered the final hypervolume in 2 of 3 searches).
:func:`before_search` enqueues at most half
of ``search.trials`` seeds, spread over the ratios (:func:`spread`).

Narrowing (``sensitivity.narrow``). Per unit, sparsity is capped at the first
scanned level whose drop reaches ``cliff``, bit-widths below the first such
bit-width are removed, and so are rank fractions below the first such fraction
(the cliff level itself stays searchable). Stored in the study as
``"narrowing"`` (``{unit: {knob: range or choices}}``) and re-applied on resume
as exact-name overrides (or group knobs), since Optuna refuses a categorical
parameter whose choices change within a study.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

from optuna.distributions import CategoricalDistribution, FloatDistribution
from torch import nn

from compresstune.search._records import fully_tuned_feasible
from compresstune.search._sensitivity import _channel_settings, cache_key, load_or_scan, units as _units
from compresstune.search._surrogate import (_HEADER_SLACK, _KNOBS, Seed, _build_units, _LadderUnit, _params,
                                            _Sizer, estimate_bytes)

__all__ = ["Seed", "SeedRefiner", "before_search", "describe_narrowing", "enqueue", "estimate_bytes", "narrowed_space", "narrowing",
           "plan_seeds", "refine_targets", "spread"]

_EPS = 1e-4  # cost floor: among moves the scan calls free, the one saving most goes first
_BAND = 1.10  # a seed lands in [target, 1.1 x target] when its space allows


# -- the greedy path and the targets ------------------------------------------------------------------

def _moves(u: _LadderUnit, values: dict[str, Any], knobs):
    for knob, ladder in u.ladders.items():
        if knob not in knobs:
            continue
        cur = values[knob]
        if knob == "sparsity":
            ahead = [v for v in ladder if v > cur + 1e-12]
        else:
            ahead = [v for v in ladder if v < cur][:2]
        for v in ahead:
            yield knob, v


def _copy(state: dict) -> dict:
    return {p: dict(v) for p, v in state.items()}


def _greedy_path(units_, sizer: _Sizer, start: dict, *, stop_size: float, knobs=_KNOBS) -> list:
    """From ``start``, the cheapest move at each step (predicted drop per bit of
    predicted size saved) until the predicted size is under ``stop_size``.
    Each entry: ``(state, predicted size, predicted drop, (unit, knob, old value) or None)``."""
    state = _copy(start)
    size_of = {u.prefix: sizer.delta(u, _unit_params(u, state)) for u in units_}
    drop_of = {u.prefix: u.drop(state[u.prefix]) for u in units_}
    total = float(sizer.base_size) + sum(size_of.values())
    path = [(_copy(state), total, sum(drop_of.values()), None)]
    while total > stop_size:
        best = None
        for u in units_:
            for knob, value in _moves(u, state[u.prefix], knobs):
                trial_values = {**state[u.prefix], knob: value}
                new_unit_size = sizer.delta(u, {f"{u.prefix}:{k}": v for k, v in trial_values.items()})
                new_total = total - size_of[u.prefix] + new_unit_size
                if new_total <= 0 or new_total >= total:
                    continue
                gain = math.log2(total) - math.log2(new_total)
                cost = max(0.0, u.drop(trial_values) - drop_of[u.prefix]) + _EPS
                if best is None or cost / gain < best[0]:
                    best = (cost / gain, u, knob, value, new_unit_size, new_total)
        if best is None:
            break
        _, u, knob, value, new_unit_size, new_total = best
        old = state[u.prefix][knob]
        state[u.prefix][knob] = value
        size_of[u.prefix], total = new_unit_size, new_total
        drop_of[u.prefix] = u.drop(state[u.prefix])
        path.append((_copy(state), total, sum(drop_of.values()), (u.prefix, knob, old)))
    return path


def _unit_params(u: _LadderUnit, state: dict) -> dict:
    return {f"{u.prefix}:{k}": v for k, v in state[u.prefix].items()}


def _bisect(make: Callable[[float], dict], fits: Callable[[dict], bool], iters: int = 12) -> dict | None:
    """The params ``make(t)`` with the smallest t in [0, 1] that ``fits`` (assumed
    monotone); None when even ``make(1)`` does not fit."""
    if not fits(make(1.0)):
        return None
    if fits(make(0.0)):
        return make(0.0)
    lo_t, hi_t = 0.0, 1.0
    for _ in range(iters):
        mid = (lo_t + hi_t) / 2
        if fits(make(mid)):
            hi_t = mid
        else:
            lo_t = mid
    return make(hi_t)


def _state_of(units_, params: dict) -> dict:
    return {u.prefix: {k: params[f"{u.prefix}:{k}"] for k in u.ladders} for u in units_}


def _hit(units_, path: list, distill: dict, fits) -> tuple[int, dict | None]:
    """The first entry of ``path`` whose REAL size fits, and its params refined: when
    the move that got there was a sparsity move, that sparsity is bisected between
    its old and new value so the plan just fits. ``(index, params)``; params None
    when no entry fits."""
    for k, (state, _, _, move) in enumerate(path):
        params = _params(units_, state, distill)
        if not fits(params):
            continue
        if move is None or move[1] != "sparsity":
            return k, params
        prefix, _, old = move
        unit = next(u for u in units_ if u.prefix == prefix)
        new = state[prefix]["sparsity"]

        def make(t: float, state=state) -> dict:
            st = _copy(state)
            st[prefix]["sparsity"] = unit.snap("sparsity", old + t * (new - old))
            return _params(units_, st, distill)

        return k, _bisect(make, fits)
    return len(path) - 1, None


def plan_seeds(space, model: nn.Module, scan: dict, *, ratios, reference_bytes: int,
               temperature: float | None = None, alpha: float | None = None, allocator: str = "greedy") -> list[Seed]:
    """Seed plans hitting ``ratios`` (see the module docstring), as space params; with
    ``allocator="exact"`` each is the exact allocation over the same surrogate
    (search/_allocate.py) instead of a point on the greedy path.

    Returns one :class:`Seed` per distinct plan, in the order of ``ratios``
    (sorted); a target the space cannot reach gives its most compressed plan
    (``reached=False``), once.

    Example:
        >>> seeds = plan_seeds(space, model, scan, ratios=[4, 8], reference_bytes=153128)  # doctest: +SKIP
        >>> [round(s.ratio, 1) for s in seeds]  # doctest: +SKIP
        [4.0, 8.0]
    """
    targets = sorted(float(r) for r in ratios)
    if not targets:
        return []
    if allocator == "exact":
        from compresstune.search._allocate import exact_seeds

        return exact_seeds(space, model, scan, ratios=targets, reference_bytes=reference_bytes)
    units_ = _build_units(space, scan)
    uniform = space.uniform_params(0.0, 32, None, temperature=temperature, alpha=alpha)
    distill = {k: v for k, v in uniform.items() if k.startswith("distill:")}
    start = {u.prefix: {k: ladder[0] for k, ladder in u.ladders.items()} for u in units_}
    sizer = _Sizer(space, model, _params(units_, start, distill))
    path = _greedy_path(units_, sizer, start, stop_size=reference_bytes / targets[-1] * 0.8)
    drop = lambda params: sum(u.drop(_state_of(units_, params)[u.prefix]) for u in units_)  # noqa: E731
    seeds: list[Seed] = []
    seen: set[tuple] = set()
    for target in targets:
        budget = reference_bytes / target - _HEADER_SLACK
        fits = lambda params: sizer.real(params) <= budget  # noqa: E731
        k, chosen = _hit(units_, path, distill, fits)
        reached = chosen is not None
        if not reached:
            chosen = _params(units_, path[-1][0], distill)
        elif path[k][3] is not None and path[k][3][1] != "sparsity":
            # A discrete move (bits, rank) got there and may overshoot: also try the plan
            # before it, compressed further by sparsity moves alone.
            before = path[k - 1][0]
            more = _greedy_path(units_, sizer, before, stop_size=budget * 0.9, knobs=("sparsity",))
            _, other = _hit(units_, more, distill, fits)
            if other is not None:
                # Hit the target (within _BAND) when either does; then the lowest predicted drop.
                chosen = min([chosen, other], key=lambda c: (reference_bytes / sizer.real(c) > target * _BAND,
                                                             round(drop(c), 9), -sizer.real(c)))
        key = tuple(sorted(chosen.items()))
        if key in seen:
            continue
        seen.add(key)
        size = sizer.real(chosen)
        seeds.append(Seed(params=chosen, target_ratio=target, ratio=reference_bytes / size, size_bytes=size,
                          predicted_drop=drop(chosen), reached=reached))
    return seeds


def spread(ratios, k: int) -> list[float]:
    """At most ``k`` of the sorted ``ratios``, evenly spread (both ends kept).

    Example:
        >>> spread([4, 8, 16, 32, 64], 3)
        [4.0, 16.0, 64.0]
    """
    values = sorted(float(r) for r in ratios)
    if k >= len(values):
        return values
    if k <= 1:
        return values[:1]
    return [values[round(i * (len(values) - 1) / (k - 1))] for i in range(k)]


def enqueue(study, seeds: list[Seed], *, round_: int = 1) -> None:
    """Enqueue the seeds (marked ``seed_trial: True`` and ``seed_round``) and record
    them in the study's ``seed_trials`` attr (a later round is appended).

    Only the per-layer parameters are fixed: the distillation temperature and
    alpha are left to the sampler (Optuna samples the parameters an enqueued
    trial does not give), so the seeds do not pin every early trial to one
    distillation setting."""
    for seed in seeds:
        params = {k: v for k, v in seed.params.items() if not k.startswith("distill:")}
        study.enqueue_trial(params, user_attrs={**seed.user_attrs(), "seed_round": round_}, skip_if_exists=False)
    earlier = list(study.user_attrs.get("seed_trials") or []) if round_ > 1 else []
    study.set_user_attr("seed_trials", earlier + [
        {"target_ratio": s.target_ratio, "ratio": round(s.ratio, 4), "size_bytes": s.size_bytes,
         "predicted_drop": round(s.predicted_drop, 6), "reached": s.reached, "round": round_} for s in seeds])


# -- a second round: where the seed path stops being feasible ---------------------------------------------

def refine_targets(points: list[tuple[float, bool]], k: int) -> list[float]:
    """``k`` target ratios between the largest feasible seed ratio and the smallest
    infeasible one above it (evenly spaced in log ratio), or, when every seed above
    it was feasible, up to twice the largest; none (an empty list) without a feasible seed.

    The front's hypervolume is made at its high-ratio end, so the first round's
    seeds are followed by a bisection of where the sensitivity-guided path stops
    meeting the constraints.

    Example:
        >>> [round(r, 1) for r in refine_targets([(8, True), (16, True), (32, False)], 1)]
        [22.6]
        >>> [round(r, 1) for r in refine_targets([(8, True), (16, True)], 2)]
        [22.6, 32.0]
        >>> refine_targets([(8, False)], 2)
        []
    """
    good = [r for r, ok in points if ok]
    if not good or k < 1:
        return []
    lo = max(good)
    above = [r for r, ok in points if not ok and r > lo]
    hi = min(above) if above else 2.0 * lo
    steps = k + 1 if above else k
    return [lo * (hi / lo) ** (i / steps) for i in range(1, k + 1)]


def _seed_point(trial) -> tuple[float, bool] | None:
    """(ratio, feasible) of a finished seed trial; None while it is not COMPLETE."""
    if trial.state.name != "COMPLETE" or not isinstance(trial.user_attrs.get("ratio"), (int, float)):
        return None
    return float(trial.user_attrs["ratio"]), fully_tuned_feasible(trial)


class SeedRefiner:
    """Enqueues the second seed round once every first-round seed has finished
    (both executors call :meth:`step` before asking for a trial). Done once per
    study: the ``seed_refinement`` attr records it, also when there was nothing
    to add."""

    def __init__(self, session) -> None:
        self.session = session
        cfg = session.config.sensitivity
        self.k = int(cfg.refine_seeds) if cfg.enabled and cfg.seed_ratios else 0
        self.done = self.k == 0 or "seed_refinement" in session.study.user_attrs

    def step(self, room: int | None = None) -> None:
        """Enqueue the second round when its time has come; at most ``room`` trials (the
        trials the search still has room for: a seed queued beyond them would never run)."""
        if self.done:
            return
        study = self.session.study
        seeds = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("seed_trial")]
        if not seeds:
            self.done = True  # a study seeded by nothing (e.g. resumed from before seeds existed)
            return
        if any(t.state.name in ("WAITING", "RUNNING") for t in seeds):
            return
        points = [p for p in map(_seed_point, seeds) if p is not None]
        attrs = study.user_attrs
        targets = refine_targets(points, self.k) if "sensitivity" in attrs else []
        added = []
        try:
            if targets:
                new = plan_seeds(self.session.space, self.session.context.model, attrs["sensitivity"],
                                 ratios=targets, reference_bytes=int(attrs["baseline"]["reference_bytes"]),
                                 allocator=self.session.config.sensitivity.allocator)
                done_ratios = [r for r, _ in points]
                added = [s for s in new if all(abs(s.ratio / r - 1) > 0.05 for r in done_ratios)]
                added = added[:max(0, room)] if room is not None else added
                enqueue(study, added, round_=2)
        except Exception as exc:  # noqa: BLE001 - seeds are a head start, never a reason to stop the search
            self.session.log(f"seed trials, second round: skipped ({type(exc).__name__}: {exc})")
            added = []
        study.set_user_attr("seed_refinement", {"targets": [round(t, 3) for t in targets],
                                                "ratios": [round(s.ratio, 3) for s in added]})
        self.done = True
        if added:
            self.session.log("seed trials, second round (where the seed path meets the constraints): "
                             + ", ".join(f"{s.target_ratio:.1f}x->{s.ratio:.1f}x" for s in added))


# -- narrowing ------------------------------------------------------------------------------------------

def narrowing(space, scan: dict, *, cliff: float) -> dict[str, dict[str, Any]]:
    """Per unit, the knob settings that stop at the scan's cliff (only changed knobs).

    Example:
        >>> narrowing(space, scan, cliff=0.3)  # doctest: +SKIP
        {'conv1': {'bits': [3, 4, 5, 6, 8, 16, 32]}}
    """
    dists = space.distributions()
    out: dict[str, dict[str, Any]] = {}
    for prefix, _ in _units(space):
        if prefix not in scan.get("layers", []):
            continue
        row = scan["drop"][scan["layers"].index(prefix)]
        cliffs: dict[str, list[float]] = {k: [] for k in _KNOBS}
        for (knob, value), drop in zip(scan["knobs"], row):
            if drop is not None and drop >= cliff and knob in cliffs:
                cliffs[knob].append(value)
        knobs: dict[str, Any] = {}
        d = dists.get(f"{prefix}:sparsity")
        if isinstance(d, FloatDistribution) and cliffs["sparsity"]:
            edge = min(cliffs["sparsity"])
            if d.low < edge < d.high:
                knobs["sparsity"] = {"low": d.low, "high": edge, "step": d.step, "log": d.log}
        for knob in ("bits", "rank_fraction"):
            d = dists.get(f"{prefix}:{knob}")
            if isinstance(d, CategoricalDistribution) and cliffs[knob]:
                edge = max(cliffs[knob])
                kept = [c for c in d.choices if c >= edge]
                if kept and len(kept) < len(d.choices):
                    knobs[knob] = sorted(kept)
        if knobs:
            out[prefix] = knobs
    return out


def describe_narrowing(narrow: dict[str, dict[str, Any]]) -> str:
    parts = []
    for prefix, knobs in narrow.items():
        for knob, value in knobs.items():
            if knob == "sparsity":
                parts.append(f"{prefix} sparsity <= {value['high']:g}")
            else:
                parts.append(f"{prefix} {knob} >= {min(value):g}")
    return "; ".join(parts) or "nothing"


def narrowed_space(config, model: nn.Module, narrow: dict[str, dict[str, Any]]):
    """The study's space with the stored narrowing applied: exact-name overrides
    for layers, the group's own knobs for groups (they win over overrides)."""
    from compresstune.spaces import Space

    data = config.space.model_dump(mode="json")
    groups = {g["name"]: i for i, g in enumerate(data.get("groups", []))}
    for prefix, knobs in narrow.items():
        if prefix in groups:
            data["groups"][groups[prefix]].update(knobs)
        else:
            data.setdefault("overrides", []).append({"name": prefix, **knobs})
    return Space.from_config(data, model)


# -- before the first trial (the controller calls it) ------------------------------------------------------------------------------

def _baselines(table: dict) -> str:
    """``" (baseline 0.9120 on the sample, 0.9150 on the whole split)"``, when both are known."""
    whole = table.get("baseline_whole")
    if whole is None:
        return ""
    return f" (baseline {table['baseline_accuracy']:.4f} on the sample, {whole:.4f} on the whole split)"


def before_search(session) -> None:
    """Run before the first trial of ``run`` (both executors): the sensitivity
    scan (reused from the study or the cache when its key matches), narrowing
    (decided for a new study, re-applied from the study on resume), the
    ``max_bops`` / ``max_macs`` / ``max_latency_ms`` / ONNX constraint names, and the seed trials (a new study only; at most
    half of ``search.trials``, spread over the ratios, so the sampler always gets
    a share)."""
    config, study, log = session.config, session.study, session.log
    cfg = config.sensitivity
    new = len(study.get_trials(deepcopy=False)) == 0
    attrs = study.user_attrs
    budgets = [n for n in ("max_bops", "max_macs", "max_latency_ms", "max_onnx_bytes", "max_onnx_latency_ms")
               if getattr(config.constraints, n) is not None]
    names = list(attrs.get("constraint_names") or [])
    if new and [n for n in budgets if n not in names]:
        study.set_user_attr("constraint_names", names + [n for n in budgets if n not in names])
    table = None
    if cfg.enabled:
        baseline = attrs.get("baseline") or {}
        key = cache_key(config.fingerprint(), baseline, cfg, [p for p, _ in _units(session.space)],
                        channels=bool(_channel_settings(session.space)))
        stored = attrs.get("sensitivity")
        if isinstance(stored, dict) and stored.get("key") == key:
            table = stored
        else:
            table, cached = load_or_scan(config, session.out, session.context.model, session.context.task,
                                         session.space, baseline, log=log)
            study.set_user_attr("sensitivity", table)
            log(f"sensitivity scan: {len(table['layers'])} layers x {len(table['settings'])} settings on "
                f"{table['examples']} validation examples" + _baselines(table)
                + (" (from the cache)" if cached else f" ({table['seconds']:.1f} s)"))
    narrow = attrs.get("narrowing")
    if narrow is None and new and table is not None and cfg.narrow:
        narrow = narrowing(session.space, table, cliff=cfg.cliff)
        study.set_user_attr("narrowing", narrow)
        if narrow:
            log(f"narrowed the space where the scan shows a cliff: {describe_narrowing(narrow)}")
    if narrow:
        session.space = narrowed_space(config, session.context.model, narrow)
    if new and table is not None and cfg.seed_ratios:
        t0 = time.perf_counter()
        ratios = spread(cfg.seed_ratios, max(1, config.search.trials // 2))
        seeds = plan_seeds(session.space, session.context.model, table, ratios=ratios,
                           reference_bytes=int(attrs["baseline"]["reference_bytes"]), allocator=cfg.allocator)
        enqueue(study, seeds)
        study.set_user_attr("seed_seconds", round(time.perf_counter() - t0, 3))
        shown = ", ".join(f"{s.target_ratio:g}x->{s.ratio:.1f}x" for s in seeds)
        log(f"seed trials enqueued: {len(seeds)} ({shown})")
