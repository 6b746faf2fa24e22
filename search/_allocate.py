"""Plans for a budget by exact allocation over the sensitivity scan (``compresstune plan``).

Each searched unit (a layer, or a group sharing parameters) picks one setting:
a sparsity from the seed planner's 0.05 grid, a bit-width and a rank fraction
among those its space allows. The predicted drop of a plan is the sum of the
units' scanned drops (the seed planner's curves: clamped at 0, monotone,
interpolated between scanned levels) and its predicted size the sum of the
units' sizes under the artifact's size model (:func:`estimate_bytes`) plus what
the rest of the artifact takes (the header, biases, layers not searched:
measured once on the least compressed plan). Minimising the predicted drop
under a byte budget is a multiple-choice knapsack, solved exactly by dynamic
programming over the budget cut into ``buckets`` steps (each unit's size rounded
up, so the solution never exceeds the predicted budget). Among plans of equal
predicted drop the least compressed one wins (a tie-break of 1e-6 per halving of
a unit's size), so settings the scan calls free are not spent without need.

It is exact over the surrogate, not over the model: the scan varies one unit at
a time (drops are not additive in truth) and the size model is an estimate.
So the plan is then packed for real (``apply`` + ``to_bytes``) and the
predicted budget scaled by how far the real size is from the budget (tightened
when over, loosened when it leaves more than 1 % unused), and the knapsack solved
again, at most ``repairs`` times; the plan of least predicted drop that fits wins.

Example:
    >>> solve([[(0.0, 4), (0.1, 2)], [(0.0, 3), (0.2, 1)]], capacity=5)
    [1, 0]
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from torch import nn

from compresstune.artifact import to_bytes
from compresstune.compress import apply
from compresstune.errors import ConfigError
from compresstune.search._surrogate import _build_units, _LadderUnit, _params, _Sizer, estimate_bytes

__all__ = ["Allocation", "allocate", "allocate_bops", "allocate_macs", "exact_seeds", "format_allocation", "plan_study",
           "solve", "study_surrogate"]

BUCKETS = 4096
_TIE = 1e-6  # predicted drop per halving of a unit's size: the tie-break between "free" settings


@dataclass
class Allocation:
    """A plan for a budget: its space parameters, predictions and real packed size."""

    params: dict[str, Any]
    budget_bytes: int
    predicted_drop: float
    predicted_bytes: float
    real_bytes: int
    reference_bytes: int
    solves: int
    seconds: float
    fits: bool
    metric: str = "accuracy"
    # Set for a budget of a per-example count ("MACs" or "bit-operations"); the byte fields are then
    # the plan's real size.
    count: str | None = None
    budget_count: float | None = None
    predicted_count: float | None = None
    real_count: float | None = None
    reference_count: float | None = None

    @property
    def ratio(self) -> float:
        return self.reference_bytes / self.real_bytes


def solve(items: Sequence[Sequence[tuple[float, int]]], capacity: int) -> list[int] | None:
    """Pick one ``(cost, weight)`` item per group with total weight <= ``capacity`` and the least
    total cost (exact: dynamic programming over integer weights). Returns the chosen index per
    group, or None when no pick fits."""
    inf = math.inf
    best = np.full(capacity + 1, inf)
    best[0] = 0.0
    choice = []
    for group in items:
        new = np.full(capacity + 1, inf)
        arg = np.full(capacity + 1, -1, dtype=np.int32)
        for i, (cost, weight) in enumerate(group):
            if weight > capacity:
                continue
            shifted = np.full(capacity + 1, inf)
            shifted[weight:] = best[: capacity + 1 - weight] + cost
            better = shifted < new
            new[better], arg[better] = shifted[better], i
        best = new
        choice.append(arg)
    if not np.isfinite(best).any():
        return None
    k = int(np.argmin(best))  # lowest cost; np.argmin takes the smallest weight among ties
    picks = []
    for group, arg in zip(reversed(items), reversed(choice)):
        i = int(arg[k])
        picks.append(i)
        k -= int(group[i][1])
    return picks[::-1]


# -- the units' settings ----------------------------------------------------------------------------

@dataclass
class _Setting:
    values: dict[str, Any]  # knob -> value
    drop: float
    bytes: float
    cost: float = 0.0  # drop + the tie-break


def _unit_bytes(space, unit: _LadderUnit, values: dict[str, Any]) -> float:
    total = 0.0
    for name in unit.members:
        info = space.discovery.layers[name]
        sparsity, bits = float(values.get("sparsity", 0.0)), int(values.get("bits", 32))
        fraction = float(values.get("rank_fraction", 1.0))
        rank = info.rank_for_fraction(fraction) if fraction < 1 else None
        if sparsity == 0 and bits == 32 and rank is None:
            total += 4.0 * info.numel
        else:
            total += estimate_bytes(info.rows, info.cols, sparsity=sparsity, bits=bits, rank=rank)
    return total


def _settings(space, unit: _LadderUnit) -> list[_Setting]:
    """Every combination of the unit's knob values, dominated ones (bigger and no cheaper) left out."""
    knobs = list(unit.ladders)
    out = []
    for combo in itertools.product(*(unit.ladders[k] for k in knobs)):
        values = dict(zip(knobs, combo))
        out.append(_Setting(values, unit.drop(values), _unit_bytes(space, unit, values)))
    top = max(s.bytes for s in out)
    for s in out:
        s.cost = s.drop + _TIE * math.log2(top / s.bytes)
    out.sort(key=lambda s: (s.bytes, s.cost))
    kept, best = [], math.inf
    for s in out:
        if s.cost < best - 1e-15:
            kept.append(s)
            best = s.cost
    return kept


# -- the allocation ----------------------------------------------------------------------------------

def _pick(settings, budget: float, fixed_bytes: float, buckets: int) -> list[_Setting] | None:
    room = budget - fixed_bytes
    if room <= 0:
        return None
    step = room / buckets
    items = [[(s.cost, math.ceil(s.bytes / step)) for s in options] for options in settings]
    picks = solve(items, buckets)
    return None if picks is None else [options[i] for options, i in zip(settings, picks)]


def _drop(settings: list[_Setting]) -> float:
    return sum(s.drop for s in settings)


def allocate(space, model: nn.Module, scan: dict, *, max_bytes: int, reference_bytes: int,
             buckets: int = BUCKETS, repairs: int = 8, distill: dict[str, Any] | None = None) -> Allocation:
    """The plan of least predicted drop whose real packed size is at most ``max_bytes``; when
    none is found, the space's most compressed plan with ``fits=False``."""
    t0 = time.perf_counter()
    units_ = _build_units(space, scan)
    settings = [_settings(space, u) for u in units_]
    uniform = space.uniform_params(0.0, 32, None)
    distill = distill or {k: v for k, v in uniform.items() if k.startswith("distill:")}
    start = {u.prefix: {k: ladder[0] for k, ladder in u.ladders.items()} for u in units_}
    sizer = _Sizer(space, model, _params(units_, start, distill))
    least = sum(_unit_bytes(space, u, start[u.prefix]) for u in units_)
    fixed_bytes = sizer.base_size - least  # what the artifact holds besides the searched weights
    budget, solves, chosen, real, smallest_real = float(max_bytes), 0, None, None, math.inf
    for _ in range(repairs + 1):
        picked = _pick(settings, budget, fixed_bytes, buckets)
        solves += 1
        if picked is None:
            break
        params = _params(units_, {u.prefix: s.values for u, s in zip(units_, picked)}, distill)
        size = sizer.real(params)
        smallest_real = min(smallest_real, size)
        if size <= max_bytes and (chosen is None or _drop(picked) < _drop(chosen) - 1e-12):
            chosen, real = picked, size
        if max_bytes * 0.99 <= size <= max_bytes:
            break
        # The size model is off by this much here: scale the predicted budget by it (down when the
        # plan is over, up when it leaves room) and solve again.
        budget *= max_bytes / size * (0.999 if size > max_bytes else 1.0)
    fits = chosen is not None
    if not fits:  # the budget is below what the space allows: its most compressed plan
        chosen = [min(options, key=lambda s: s.bytes) for options in settings]
    params = _params(units_, {u.prefix: s.values for u, s in zip(units_, chosen)}, distill)
    return Allocation(params=params, budget_bytes=int(max_bytes), predicted_drop=_drop(chosen),
                      predicted_bytes=fixed_bytes + sum(s.bytes for s in chosen),
                      real_bytes=int(real if fits else sizer.real(params)), reference_bytes=int(reference_bytes),
                      solves=solves, seconds=time.perf_counter() - t0, fits=fits)


# -- a MACs budget ------------------------------------------------------------------------------------
#
# Only ranks and structured pruning lower dense MACs (bits and unstructured sparsity leave them as they
# are), so under a MACs budget each unit picks a rank fraction and, when it leads a channel group, one
# of the scanned channel fractions; its other knobs stay uncompressed. A layer's MACs are the product
# of its input and output groups' kept channels, so they are not a sum over units: the knapsack runs on
# each unit's change of the real count (``multiply_accumulates``) with the others held at the current
# point, and is solved again around its own answer until the real count fits.

def _channel_curve(scan: dict, prefix: str) -> Callable[[float], float]:
    """The scan's drop when the unit's channel group loses a fraction of its channels."""
    from compresstune.search._surrogate import _curve

    if prefix not in scan.get("layers", []):
        return lambda v: 0.0
    row = scan["drop"][scan["layers"].index(prefix)]
    points = [(float(v), float(d)) for (k, v), d in zip(scan["knobs"], row) if k == "structured" and d is not None]
    return _curve([(0.0, 0.0), *points], ascending=True)


def _mac_options(space, unit: _LadderUnit, scan: dict) -> list[_Setting]:
    """The unit's settings that change MACs: its rank fractions x (for a group's leading unit) no
    channel pruning or one of the scanned fractions; every other knob at its least compressive value."""
    from compresstune.search._sensitivity import CHANNEL_LEVELS

    base = {k: ladder[0] for k, ladder in unit.ladders.items()}
    structured = space.distributions().get(f"{unit.prefix}:structured")
    sparsity = unit.dists.get("sparsity")
    channels = [0.0]
    if structured is not None and True in structured.choices and sparsity is not None:
        channels += sorted({unit.snap("sparsity", f) for f in CHANNEL_LEVELS} - {0.0})
    cut = _channel_curve(scan, unit.prefix)
    out = []
    for rank, fraction in itertools.product(unit.ladders.get("rank_fraction", [None]), channels):
        values = {**base, **({"rank_fraction": rank} if rank is not None else {})}
        drop = unit.drop(values) + cut(fraction)
        out.append(_Setting({**values, **({"channels": fraction} if fraction else {})}, drop, 0.0))
    return out


class _Counter:
    """A real per-example count (dense MACs by default) of a plan's model, cached by its parameters."""

    def __init__(self, space, model: nn.Module, example: Any, task, measure: Callable | None = None) -> None:
        from compresstune.objectives import multiply_accumulates

        self.space, self.model, self.example, self.task = space, model, example, task
        self.measure = measure or multiply_accumulates
        self._seen: dict[tuple, float] = {}

    def __call__(self, params: dict[str, Any]) -> float:
        key = tuple(sorted(params.items()))
        if key not in self._seen:
            small = apply(self.model, self.space.decode(params))
            self._seen[key] = float(self.measure(small, self.example, task=self.task))
        return self._seen[key]


def _pick_changes(options: list[list[_Setting]], deltas: list[list[float]], room: float,
                  buckets: int) -> list[int] | None:
    """The knapsack on changes of a count (MACs, bit-operations): ``room`` is how far the count may
    move from the current point."""
    lows = [min(d) for d in deltas]
    capacity = room - sum(lows)
    if capacity < 0:
        return None
    step = max(capacity, 1.0) / buckets
    span = max(max(d) - low for d, low in zip(deltas, lows)) or 1.0
    items = [[(s.drop + _TIE * (max(d) - m) / span, math.ceil((m - low) / step)) for s, m in zip(opts, d)]
             for opts, d, low in zip(options, deltas, lows)]
    return solve(items, buckets)


def allocate_macs(space, model: nn.Module, scan: dict, *, max_macs: float, example: Any, task=None,
                  reference_bytes: int, buckets: int = BUCKETS, repairs: int = 8,
                  distill: dict[str, Any] | None = None, log: Callable[[str], None] | None = None) -> Allocation:
    """The plan of least predicted drop whose real dense MACs (one example) are at most ``max_macs``;
    when none is found, the space's plan of fewest MACs with ``fits=False``."""
    t0 = time.perf_counter()
    units_ = _build_units(space, scan)
    options = [_mac_options(space, u, scan) for u in units_]
    if all(len(o) == 1 for o in options):
        raise ConfigError("no knob of this space lowers MACs: allow rank fractions below 1 (`space.rank_fraction`) "
                          "or structured pruning (`space.structured: [false, true]`).")
    uniform = space.uniform_params(0.0, 32, None)
    distill = distill or {k: v for k, v in uniform.items() if k.startswith("distill:")}
    params_of = lambda picks: _params(units_, {u.prefix: o[i].values for u, o, i in zip(units_, options, picks)},
                                      distill)  # noqa: E731
    count = _Counter(space, model, example, task)
    reference_macs = count(params_of([0] * len(units_)))
    point, target, best, solves, predicted = [0] * len(units_), float(max_macs), None, 0, None
    for _ in range(repairs + 1):
        here = count(params_of(point))
        deltas = [[count(params_of(point[:j] + [i] + point[j + 1:])) - here for i in range(len(o))]
                  for j, o in enumerate(options)]
        picks = _pick_changes(options, deltas, target - here, buckets)
        solves += 1
        if picks is None:
            break
        real = count(params_of(picks))
        drop = sum(o[i].drop for o, i in zip(options, picks))
        if log:
            log(f"allocate: solve {solves}: {real:,.0f} MACs (budget {max_macs:,.0f}), predicted drop {drop:.4f}")
        if real <= max_macs and (best is None or drop < best[1] - 1e-12):
            best, predicted = (picks, drop, real), here + sum(d[i] for d, i in zip(deltas, picks))
        if max_macs * 0.99 <= real <= max_macs or (picks == point and real <= max_macs):
            break  # the budget is used, or the knapsack's answer is the point it was solved around
        if picks == point:  # over, where the count is exact: tighten the knapsack's budget by the excess
            target *= max_macs / real * 0.999
        point = picks
    fits = best is not None
    if not fits:
        picks = [min(range(len(d)), key=d.__getitem__) for d in deltas]  # the fewest MACs around the last point
        best = (picks, sum(o[i].drop for o, i in zip(options, picks)), count(params_of(picks)))
        predicted = best[2]
    params = params_of(best[0])
    return _count_allocation(model, space, params, best[1], fits, reference_bytes, solves, t0, count="MACs",
                             budget=float(max_macs), predicted=predicted, real=best[2], reference=reference_macs)


def _count_allocation(model, space, params, drop, fits, reference_bytes, solves, t0, **counts) -> Allocation:
    real_bytes = len(to_bytes(apply(model, space.decode(params))))
    return Allocation(params=params, budget_bytes=0, predicted_drop=drop, predicted_bytes=float(real_bytes),
                      real_bytes=real_bytes, reference_bytes=int(reference_bytes), solves=solves,
                      seconds=time.perf_counter() - t0, fits=fits, count=counts["count"], budget_count=counts["budget"],
                      predicted_count=counts["predicted"], real_count=counts["real"],
                      reference_count=counts["reference"])


# -- a bit-operations budget ------------------------------------------------------------------------
#
# Bit-operations (``bit_operations``) are a sum over layers of MACs x weight bits x activation bits,
# the MACs counting nonzero weights only. Without channel pruning a unit's share does not depend on
# the other units, and at a given rank it is proportional to the unit's density and bit-width. So two
# real counts per unit and rank (at its least compressive bits, and at its most compressive bits, or
# sparsity when its bits are fixed) give every setting's change of the count; the knapsack runs on
# those changes and the real count of its answer checks it (the budget re-scaled and the knapsack
# solved again while it is over, or leaves more than 1 % unused).

def _own_count(count, at: Callable[[dict], dict], unit: _LadderUnit, values: dict, here: float,
               full: float) -> float:
    """The unit's own count at ``values`` (where the model's count is ``here + full``), from the change
    when its bits (or else its sparsity) move to the ladder's most compressive value; 0 when neither can."""
    for knob, factor in (("bits", lambda v: v / values["bits"]),
                         ("sparsity", lambda v: (1 - v) / (1 - values["sparsity"]))):
        ladder = unit.ladders.get(knob, [])
        if len(ladder) > 1:
            lower = count(at({**values, knob: ladder[-1]})) - here
            return (full - lower) / (1 - factor(ladder[-1]))
    return 0.0


def _bops_options(units_, start, distill, count) -> tuple[float, list[list[_Setting]], list[list[float]]]:
    """The real count at the least compressed point, and each unit's settings (dominated ones left
    out) with their change of the count."""
    here = count(_params(units_, start, distill))
    options, deltas = [], []
    for u in units_:
        s0 = start[u.prefix]
        at = lambda values, u=u: _params(units_, {**start, u.prefix: values}, distill)  # noqa: E731
        own, shift = {}, {}
        for rank in u.ladders.get("rank_fraction", [None]):
            values = {**s0, **({"rank_fraction": rank} if rank is not None else {})}
            shift[rank] = count(at(values)) - here
            own[rank] = _own_count(count, at, u, values, here, shift[rank])
        scored = []
        for combo in itertools.product(*(u.ladders[k] for k in u.ladders)):
            values = dict(zip(u.ladders, combo))
            rank = values.get("rank_fraction")
            scale = (1 - values.get("sparsity", 0.0)) / (1 - s0.get("sparsity", 0.0)) \
                * values.get("bits", 32) / s0.get("bits", 32)
            scored.append((shift[rank] - own[rank] * (1 - scale), _Setting(values, u.drop(values), 0.0)))
        kept = _undominated(scored)
        options.append([k[1] for k in kept])
        deltas.append([k[0] for k in kept])
    return here, options, deltas


def _undominated(scored: list[tuple[float, _Setting]]) -> list[tuple[float, _Setting]]:
    """(change, setting) pairs no other beats on both, with the tie-break: of settings of equal drop
    the least compressive is kept."""
    low, high = min(p[0] for p in scored), max(p[0] for p in scored)
    span = (high - low) or 1.0
    kept, best = [], math.inf
    for delta, setting in sorted(scored, key=lambda p: (p[0], p[1].drop)):
        cost = setting.drop + _TIE * (high - delta) / span
        if cost < best - 1e-15:
            kept.append((delta, setting))
            best = cost
    return kept


def allocate_bops(space, model: nn.Module, scan: dict, *, max_bops: float, example: Any, task=None,
                  activation_bits: int = 32, reference_bytes: int, buckets: int = BUCKETS, repairs: int = 8,
                  distill: dict[str, Any] | None = None, log: Callable[[str], None] | None = None) -> Allocation:
    """The plan of least predicted drop whose real bit-operations (one example, ``activation_bits``)
    are at most ``max_bops``; when none is found, the space's plan of fewest with ``fits=False``."""
    from compresstune.objectives import bit_operations

    t0 = time.perf_counter()
    units_ = _build_units(space, scan)
    uniform = space.uniform_params(0.0, 32, None)
    distill = distill or {k: v for k, v in uniform.items() if k.startswith("distill:")}
    start = {u.prefix: {k: ladder[0] for k, ladder in u.ladders.items()} for u in units_}
    count = _Counter(space, model, example, task,
                     lambda m, x, task: bit_operations(m, x, activation_bits=activation_bits, task=task))
    here, options, deltas = _bops_options(units_, start, distill, count)
    params_of = lambda picks: _params(units_, {u.prefix: o[i].values for u, o, i in zip(units_, options, picks)},
                                      distill)  # noqa: E731
    target, best, solves, last = float(max_bops), None, 0, None
    for _ in range(repairs + 1):
        picks = _pick_changes(options, deltas, target - here, buckets)
        solves += 1
        if picks is None or picks == last:
            break
        last = picks
        real, drop = count(params_of(picks)), sum(o[i].drop for o, i in zip(options, picks))
        if log:
            log(f"allocate: solve {solves}: {real:,.0f} bit-operations (budget {max_bops:,.0f}), "
                f"predicted drop {drop:.4f}")
        if real <= max_bops and (best is None or drop < best[1] - 1e-12):
            best = (picks, drop, real, here + sum(d[i] for d, i in zip(deltas, picks)))
        if max_bops * 0.99 <= real <= max_bops:
            break
        target = here + (target - here) * (max_bops - here) / (real - here) * (0.999 if real > max_bops else 1.0)
    fits = best is not None
    if not fits:
        picks = [min(range(len(d)), key=d.__getitem__) for d in deltas]
        best = (picks, sum(o[i].drop for o, i in zip(options, picks)), count(params_of(picks)), None)
    return _count_allocation(model, space, params_of(best[0]), best[1], fits, reference_bytes, solves, t0,
                             count="bit-operations", budget=float(max_bops),
                             predicted=best[2] if best[3] is None else best[3],
                             real=best[2], reference=here)


def exact_seeds(space, model: nn.Module, scan: dict, *, ratios, reference_bytes: int) -> list:
    """Seed trials (``sensitivity.allocator: exact``): one allocation per target ratio, as
    :func:`compresstune.search._seeds.plan_seeds` returns them (an unreachable target gives the
    most compressed plan, ``reached=False``, once)."""
    from compresstune.search._surrogate import _HEADER_SLACK, Seed

    seeds, seen = [], set()
    for target in sorted(float(r) for r in ratios):
        a = allocate(space, model, scan, max_bytes=int(reference_bytes / target) - _HEADER_SLACK,
                     reference_bytes=reference_bytes)
        key = tuple(sorted(a.params.items()))
        if key in seen:
            continue
        seen.add(key)
        seeds.append(Seed(params=a.params, target_ratio=target, ratio=a.ratio, size_bytes=a.real_bytes,
                          predicted_drop=a.predicted_drop, reached=a.fits))
    return seeds


def format_allocation(alloc: Allocation, space) -> str:
    """The plan per layer, then its predicted drop and its predicted and real sizes (or MACs)."""
    plan = space.decode(alloc.params)
    channels = any(lp.structured for lp in plan.layers.values())
    rows = [("layer", "sparsity", "bits", "rank") + (("channels cut",) if channels else ())]
    for name, lp in plan.layers.items():
        cut = (f"{float(lp.structured):.2f}" if lp.structured else "-",) if channels else ()
        rows.append((name, "-" if lp.structured else f"{lp.sparsity:.2f}", str(lp.bits),
                     "-" if lp.rank is None else str(lp.rank), *cut))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
    state = "fits" if alloc.fits else "does NOT fit (the space's most compressed plan)"
    drop = (f"predicted {alloc.metric} drop {alloc.predicted_drop:.4f} (the scan's, summed over layers, before "
            "fine-tuning)")
    if alloc.count is not None:
        return (f"{table}\n\n{drop}\n{alloc.count} per example {alloc.real_count:,.0f} "
                f"({alloc.real_count / alloc.reference_count:.3g} of the model's {alloc.reference_count:,.0f}), "
                f"budget {alloc.budget_count:,.0f}: {state}\nreal packed size {alloc.real_bytes:,} bytes "
                f"({alloc.ratio:.1f}x{'; every other knob uncompressed' if alloc.count == 'MACs' else ''})\n"
                f"solved {alloc.solves} time(s) in "
                f"{alloc.seconds:.2f} s")
    return (f"{table}\n\n{drop}\npredicted size {alloc.predicted_bytes:,.0f} bytes; real packed size "
            f"{alloc.real_bytes:,} bytes ({alloc.ratio:.1f}x), budget {alloc.budget_bytes:,}: {state}\n"
            f"solved {alloc.solves} time(s) in {alloc.seconds:.2f} s")


def study_surrogate(config, *, log: Callable[[str], None] = print) -> tuple[nn.Module, Any, Any, int, dict]:
    """``(model, task, space, reference bytes, scan)`` of a study file, without training: model
    and data loaded as ``run`` does, the sensitivity scan read from ``OUT`` or run."""
    from pathlib import Path

    from compresstune.artifact import reference_size, to_bytes
    from compresstune.search._sensitivity import load_or_scan
    from compresstune.search._session import load_model_and_task
    from compresstune.spaces import Space
    from compresstune.task import measure

    out = Path(config.search.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    model, task = load_model_and_task(config, out)
    space = Space.from_config(config.space, model)
    reference = reference_size(model)
    baseline = {"val_accuracy": measure(task, model, "val")[0], "packed_bytes": len(to_bytes(model)),
                "reference_bytes": reference}
    scan, _ = load_or_scan(config, out, model, task, space, baseline, log=log)
    return model, task, space, reference, scan


def plan_study(config, *, ratio: float | None = None, max_bytes: int | None = None,
               max_macs: float | None = None, max_bops: float | None = None,
               log: Callable[[str], None] = print) -> tuple[Allocation, Any]:
    """The allocation for a study file's model at ``ratio`` (x smaller than float32), ``max_bytes``,
    ``max_macs`` (dense multiply-accumulates per example) or ``max_bops`` (bit-operations per
    example at the study's ``activation_bits``), without training (:func:`study_surrogate`).
    Returns ``(allocation, space)``.

    Example:
        >>> alloc, space = plan_study(load_config("studies/digits.yaml"), ratio=32)  # doctest: +SKIP
    """
    given = {k: v for k, v in (("ratio", ratio), ("max_bytes", max_bytes), ("max_macs", max_macs),
                               ("max_bops", max_bops)) if v is not None}
    if len(given) != 1:
        raise ConfigError("give exactly one of `ratio`, `max_bytes`, `max_macs` and `max_bops`; got "
                          + ", ".join(f"{k}={v!r}" for k, v in (("ratio", ratio), ("max_bytes", max_bytes),
                                                                ("max_macs", max_macs), ("max_bops", max_bops)))
                          + ".")
    if ratio is not None and not ratio >= 1:
        raise ConfigError(f"`ratio` must be a number >= 1 (times smaller than float32); got {ratio!r}.")
    if max_bytes is not None and not max_bytes >= 1:
        raise ConfigError(f"`max_bytes` must be an integer >= 1; got {max_bytes!r}.")
    for name, value, what in (("max_macs", max_macs, "multiply-accumulates"), ("max_bops", max_bops, "bit-operations")):
        if value is not None and not value > 0:
            raise ConfigError(f"`{name}` must be a number > 0 ({what} per example); got {value!r}.")
    model, task, space, reference, scan = study_surrogate(config, log=log)
    if max_macs is not None or max_bops is not None:
        return _plan_count(config, model, task, space, reference, scan, max_macs=max_macs, max_bops=max_bops,
                           log=log), space
    budget = int(max_bytes) if max_bytes is not None else int(reference / ratio)
    alloc = allocate(space, model, scan, max_bytes=budget, reference_bytes=reference)
    alloc.metric = task.metric
    if not alloc.fits:
        asked = f"--ratio {ratio:g}" if ratio is not None else f"--max-size {max_bytes:,}"
        raise ConfigError(f"no plan of this space fits {asked} ({budget:,} bytes): its most compressed plan packs to "
                          f"{alloc.real_bytes:,} bytes ({alloc.ratio:.1f}x). Ask for less, or allow more compression "
                          "in the space (lower bits, higher sparsity, rank fractions).")
    return alloc, space


def _plan_count(config, model, task, space, reference, scan, *, max_macs, max_bops, log) -> Allocation:
    """``plan_study`` for a MACs or bit-operations budget."""
    example = next(iter(task.batches("val")))
    if max_macs is not None:
        alloc = allocate_macs(space, model, scan, max_macs=float(max_macs), example=example, task=task,
                              reference_bytes=reference, log=log)
        flag, fewer = f"--max-macs {max_macs:,.0f}", "allow lower rank fractions or structured pruning in the space"
    else:
        alloc = allocate_bops(space, model, scan, max_bops=float(max_bops), example=example, task=task,
                              activation_bits=int(config.activation_bits), reference_bytes=reference, log=log)
        flag, fewer = f"--max-bops {max_bops:,.0f}", "allow lower bits, higher sparsity or rank fractions in the space"
    alloc.metric = task.metric
    if not alloc.fits:
        raise ConfigError(f"no plan of this space fits {flag}: its plan of fewest {alloc.count} has "
                          f"{alloc.real_count:,.0f} ({alloc.real_count / alloc.reference_count:.2f} of the model's "
                          f"{alloc.reference_count:,.0f}). Ask for more, or {fewer}.")
    return alloc
