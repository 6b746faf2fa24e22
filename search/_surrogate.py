"""The surrogate the seed planners share: per-unit drop curves from the sensitivity scan, the
units' ladders of settings, and the artifact's size model (predicted per-unit changes, exact
sizes of whole plans). The greedy planner (search/_seeds.py) walks a path over it; the exact
allocator (search/_allocate.py) solves a knapsack over it.

Example:
    >>> estimate_bytes(64, 512, sparsity=0.0, bits=8, rank=None)
    33124.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from optuna.distributions import CategoricalDistribution, FloatDistribution
from torch import nn

from compresstune.artifact import to_bytes
from compresstune.compress import apply
from compresstune.search._sensitivity import units as _units

__all__ = ["Seed", "estimate_bytes"]

_GRID = 0.05
_KNOBS = ("sparsity", "bits", "rank_fraction")
_RECORD_BYTES = 100.0  # what a coded weight adds to the (compressed) header, measured
# The artifact's header holds the plan, with the distillation temperature and alpha the
# sampler picks for a seed (longer floats than the 4.0 / 0.5 used here): room for them.
_HEADER_SLACK = 48


@dataclass
class Seed:
    """One planned seed trial."""

    params: dict[str, Any]
    target_ratio: float
    ratio: float
    size_bytes: int
    predicted_drop: float
    reached: bool

    def user_attrs(self) -> dict[str, Any]:
        return {"seed_trial": True, "seed_target_ratio": self.target_ratio, "seed_ratio": round(self.ratio, 4),
                "seed_predicted_drop": round(self.predicted_drop, 6)}


# -- drop curves from the scan ---------------------------------------------------------------------

def _curve(points: list[tuple[float, float]], *, ascending: bool) -> Callable[[float], float]:
    """A drop curve through ``points`` (value, drop): drops clamped at 0 and made
    monotone in the direction of more compression (ascending values for sparsity,
    descending for bits and rank fractions), linear in between, flat outside."""
    pts = sorted(points, key=lambda p: p[0], reverse=not ascending)
    xs, ys, worst = [], [], 0.0
    for x, y in pts:
        worst = max(worst, y if y is not None and math.isfinite(y) else worst)
        xs.append(float(x))
        ys.append(worst)
    if not ascending:
        xs, ys = xs[::-1], ys[::-1]
    xa, ya = np.asarray(xs), np.asarray(ys)
    return lambda v: float(np.interp(float(v), xa, ya))


def _curves(scan: dict, prefix: str) -> dict[str, Callable[[float], float]]:
    if prefix not in scan.get("layers", []):
        return {k: (lambda v: 0.0) for k in _KNOBS}
    row = scan["drop"][scan["layers"].index(prefix)]
    measured: dict[str, list] = {k: [] for k in _KNOBS}
    for (knob, value), drop in zip(scan["knobs"], row):
        if drop is not None and knob in measured:
            measured[knob].append((float(value), max(0.0, float(drop))))
    anchors = {"sparsity": [(0.0, 0.0)], "bits": [(32.0, 0.0)], "rank_fraction": [(1.0, 0.0)]}
    if not any(v == 16 for v, _ in measured["bits"]):
        anchors["bits"].append((16.0, 0.0))  # float16 weights: no measurable loss
    return {k: _curve(anchors[k] + measured[k], ascending=(k == "sparsity")) for k in _KNOBS}


# -- units and their ladders -------------------------------------------------------------------------

@dataclass
class _LadderUnit:
    prefix: str
    members: tuple[str, ...]
    ladders: dict[str, list]  # knob -> values from least to most compressive
    dists: dict[str, Any]
    curves: dict[str, Callable[[float], float]]
    fixed: dict[str, Any] = field(default_factory=dict)  # other params (structured)

    def drop(self, values: dict[str, Any]) -> float:
        return sum(self.curves[k](v) for k, v in values.items())

    def snap(self, knob: str, value: float) -> float:
        d = self.dists[knob]
        value = min(max(float(value), d.low), d.high)
        if d.step is not None:
            value = min(d.low + round((value - d.low) / d.step) * d.step, d.high)
        return float(value)


def _sparsity_ladder(d: FloatDistribution) -> list[float]:
    values = [d.low] + [k * _GRID for k in range(1, int(1 / _GRID)) if d.low < k * _GRID < d.high] + [d.high]
    if d.step is not None:
        values = [min(d.low + round((v - d.low) / d.step) * d.step, d.high) for v in values]
    return sorted(set(round(v, 12) for v in values))


def _build_units(space, scan: dict) -> list[_LadderUnit]:
    dists = space.distributions()
    out = []
    for prefix, members in _units(space):
        ladders, own, fixed = {}, {}, {}
        for knob in _KNOBS + ("structured",):
            d = dists.get(f"{prefix}:{knob}")
            if d is None:
                continue
            if knob == "structured":
                fixed[f"{prefix}:structured"] = False if False in d.choices else d.choices[0]
            elif knob == "sparsity" and isinstance(d, FloatDistribution):
                ladders[knob], own[knob] = _sparsity_ladder(d), d
            elif isinstance(d, CategoricalDistribution):
                ladders[knob], own[knob] = sorted(d.choices, reverse=True), d
        out.append(_LadderUnit(prefix, members, ladders, own, _curves(scan, prefix), fixed))
    return out


# -- sizes ----------------------------------------------------------------------------------------------

def _entropy_bytes(n: int, s: float) -> float:
    """About what an entropy-coded index stream of ``n`` positions at sparsity ``s`` takes."""
    if s <= 0 or s >= 1 or n == 0:
        return 0.0
    h = -(s * math.log2(s) + (1 - s) * math.log2(1 - s))
    return n * h / 8 * 1.1 + 16


def estimate_bytes(rows: int, cols: int, *, sparsity: float, bits: int, rank: int | None) -> float:
    """A size model of one compressed weight in the artifact (verified against the
    real packed size in the tests): per stored part, the index stream, the codes
    bit-packed at ``bits`` plus one float32 scale per row, or float16/32 values.

    Example:
        >>> estimate_bytes(64, 512, sparsity=0.0, bits=8, rank=None)
        33124.0
    """
    parts = [(rows, rank), (rank, cols)] if rank else [(rows, cols)]
    total = _RECORD_BYTES
    for r, c in parts:
        n = r * c
        nnz = n - round(sparsity * n)
        total += _entropy_bytes(n, sparsity)
        if bits <= 8:
            total += math.ceil(nnz * bits / 8) + 4 * r
        else:
            total += nnz * (2 if bits == 16 else 4)
    return total


class _Sizer:
    """Packed sizes: exact (apply + to_bytes) for whole plans; the size model of
    :func:`estimate_bytes` for the per-unit changes along the greedy path."""

    def __init__(self, space, model: nn.Module, base_params: dict[str, Any]) -> None:
        self.space, self.model, self.base = space, model, dict(base_params)
        self._real: dict[tuple, int] = {}
        self._delta: dict[tuple, float] = {}
        self.base_plan = space.decode(self.base)
        self.base_size = self.real(self.base)

    def real(self, params: dict[str, Any]) -> int:
        key = tuple(sorted(params.items()))
        if key not in self._real:
            self._real[key] = len(to_bytes(apply(self.model, self.space.decode(params))))
        return self._real[key]

    def _layer_bytes(self, name: str, lp) -> float:
        info = self.space.discovery.layers[name]
        if lp.is_identity:
            return 4.0 * info.numel
        return estimate_bytes(info.rows, info.cols, sparsity=lp.sparsity, bits=lp.bits, rank=lp.rank)

    def delta(self, unit: _LadderUnit, params: dict[str, Any]) -> float:
        """Predicted change of the packed size when only ``unit`` takes its values in ``params``."""
        mine = {k: v for k, v in params.items() if k.startswith(unit.prefix + ":")}
        key = (unit.prefix, tuple(sorted(mine.items())))
        if key not in self._delta:
            plan = self.space.decode({**self.base, **mine})
            self._delta[key] = sum(self._layer_bytes(m, plan.layers[m]) - self._layer_bytes(m, self.base_plan.layers[m])
                                   for m in unit.members)
        return self._delta[key]


# -- plans as space parameters -------------------------------------------------------------------------

def _params(units_: list[_LadderUnit], state: dict[str, dict[str, Any]], distill: dict[str, Any]) -> dict[str, Any]:
    out = dict(distill)
    for u in units_:
        out.update(u.fixed)
        values = dict(state[u.prefix])
        channels = values.pop("channels", 0.0)
        if channels:  # a group's leading unit: structured pruning, its sparsity the group's fraction
            values.update(structured=True, sparsity=channels)
        out.update({f"{u.prefix}:{k}": v for k, v in values.items()})
    return out
