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

from compresstune.errors import ConfigError
from compresstune.search._surrogate import _build_units, _LadderUnit, _params, _Sizer, estimate_bytes

__all__ = ["Allocation", "allocate", "exact_seeds", "format_allocation", "plan_study", "solve", "study_surrogate"]

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
    """The plan per layer, then its predicted drop and its predicted and real sizes."""
    plan = space.decode(alloc.params)
    rows = [("layer", "sparsity", "bits", "rank")]
    for name, lp in plan.layers.items():
        rows.append((name, f"{lp.sparsity:.2f}", str(lp.bits), "-" if lp.rank is None else str(lp.rank)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    table = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
    state = "fits" if alloc.fits else "does NOT fit (the space's most compressed plan)"
    return (f"{table}\n\npredicted {alloc.metric} drop {alloc.predicted_drop:.4f} (the scan's, summed over layers, before "
            f"fine-tuning)\npredicted size {alloc.predicted_bytes:,.0f} bytes; real packed size "
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
               log: Callable[[str], None] = print) -> tuple[Allocation, Any]:
    """The allocation for a study file's model at ``ratio`` (x smaller than float32) or
    ``max_bytes``, without training (:func:`study_surrogate`). Returns ``(allocation, space)``.

    Example:
        >>> alloc, space = plan_study(load_config("studies/digits.yaml"), ratio=32)  # doctest: +SKIP
    """
    if (ratio is None) == (max_bytes is None):
        raise ConfigError(f"give exactly one of `ratio` and `max_bytes`; got ratio={ratio!r}, max_bytes={max_bytes!r}.")
    if ratio is not None and not ratio >= 1:
        raise ConfigError(f"`ratio` must be a number >= 1 (times smaller than float32); got {ratio!r}.")
    if max_bytes is not None and not max_bytes >= 1:
        raise ConfigError(f"`max_bytes` must be an integer >= 1; got {max_bytes!r}.")
    model, task, space, reference, scan = study_surrogate(config, log=log)
    budget = int(max_bytes) if max_bytes is not None else int(reference / ratio)
    alloc = allocate(space, model, scan, max_bytes=budget, reference_bytes=reference)
    alloc.metric = task.metric
    if not alloc.fits:
        asked = f"--ratio {ratio:g}" if ratio is not None else f"--max-size {max_bytes:,}"
        raise ConfigError(f"no plan of this space fits {asked} ({budget:,} bytes): its most compressed plan packs to "
                          f"{alloc.real_bytes:,} bytes ({alloc.ratio:.1f}x). Ask for less, or allow more compression "
                          "in the space (lower bits, higher sparsity, rank fractions).")
    return alloc, space
