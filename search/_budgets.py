"""Every budget and constraint of a trial, and what is known before training.

The constraints (positive when violated; the same names for every trial of a
study, stored as ``constraint_names``): ``accuracy_drop`` (``metric_drop`` for
a task whose metric is not accuracy), ``max_size_bytes``,
``min_ratio``, ``stopped``, and ``max_bops`` / ``max_macs`` / ``max_latency_ms``
(and the ONNX budgets) when the study sets those budgets.

Budgets before training. The size budgets (``max_size_bytes``, ``min_ratio``)
are exact from the plan: the packed size depends only on it. So is the
bit-operations budget (``constraints.max_bops``): masks and bit-widths are fixed
when the plan is applied; and the multiply-accumulates budget
(``constraints.max_macs``): dense MACs of the squashed shapes, which only
structured pruning and ranks change (computed once per distinct structure, see
:func:`macs_of`). The latency budget (``constraints.max_latency_ms``)
is measured on the squashed model, whose shapes the plan fixes and fine-tuning
does not change, so it is measured once before training (the latency
objective, when the study has one, is measured again after training, as for
every trial). A plan over any of them is scored without fine-tuning.

Settings (``s``) are duck-typed: anything with the fields of
:class:`~compresstune.search._trial.TrialSettings` that are read.

Example:
    >>> from types import SimpleNamespace
    >>> s = SimpleNamespace(max_drop=None, max_size_bytes=1000, min_ratio=None, reference_bytes=4000)
    >>> constraint_names(s)
    ['max_size_bytes', 'stopped']
    >>> over_budget(s, 1200)
    True
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Budgets", "Preflight", "budget_constraints", "constraint_names", "constraints_for", "drop_name", "drop_of",
           "macs_of", "over_budget", "preflight"]

_MACS_CACHE_LIMIT = 4096


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def drop_name(metric: str) -> str:
    """The name of the metric-drop constraint: ``accuracy_drop`` for accuracy (as older
    studies have it), ``metric_drop`` for any other metric."""
    return "accuracy_drop" if metric == "accuracy" else "metric_drop"


def drop_of(s, value: float) -> float:
    """How much worse than the baseline ``value`` is, in the metric's units (negative: better)."""
    sign = -1.0 if getattr(s, "direction", "maximize") == "minimize" else 1.0
    return sign * (s.baseline_value - value)


def constraint_names(s) -> list[str]:
    """Names of the size and metric constraint entries, in order, then ``stopped``."""
    names = [drop_name(getattr(s, "metric", "accuracy"))] if s.max_drop is not None else []
    names += ["max_size_bytes"] if s.max_size_bytes is not None else []
    names += ["min_ratio"] if s.min_ratio is not None else []
    return names + ["stopped"]


def constraints_for(s, val_value: float, size_bytes: int, *, stopped: bool = False) -> dict[str, float]:
    """Named constraint values, positive when violated; the same names (:func:`constraint_names`) for every trial."""
    out = {}
    if s.max_drop is not None:
        out[drop_name(getattr(s, "metric", "accuracy"))] = drop_of(s, val_value) - s.max_drop
    if s.max_size_bytes is not None:
        out["max_size_bytes"] = float(size_bytes - s.max_size_bytes)
    if s.min_ratio is not None:
        out["min_ratio"] = s.min_ratio - s.reference_bytes / size_bytes
    out["stopped"] = 1.0 if stopped else 0.0
    return out


def over_budget(s, size_bytes: int) -> bool:
    """True when the size alone already breaks a budget (known before any training)."""
    if s.max_size_bytes is not None and size_bytes > s.max_size_bytes:
        return True
    return s.min_ratio is not None and s.reference_bytes / size_bytes < s.min_ratio


@dataclass(frozen=True)
class Budgets:
    """The budgets checked from the plan before training beyond the size budgets
    (bit-operations, multiply-accumulates, latency, the ONNX costs)."""

    max_bops: float | None = None
    max_macs: float | None = None
    activation_bits: int = 32
    max_latency_ms: float | None = None
    max_onnx_bytes: int | None = None
    max_onnx_latency_ms: float | None = None

    @classmethod
    def from_config(cls, config) -> "Budgets":
        c = config.constraints
        return cls(max_bops=c.max_bops, max_macs=c.max_macs, activation_bits=int(config.activation_bits),
                   max_latency_ms=c.max_latency_ms, max_onnx_bytes=c.max_onnx_bytes,
                   max_onnx_latency_ms=c.max_onnx_latency_ms)

    @property
    def onnx(self) -> bool:
        return self.max_onnx_bytes is not None or self.max_onnx_latency_ms is not None

    @property
    def any(self) -> bool:
        return (self.max_bops is not None or self.max_macs is not None or self.max_latency_ms is not None
                or self.onnx)


@dataclass
class Preflight:
    """What is known about a plan before training: packed size, bit-operations,
    multiply-accumulates, latency and the ONNX costs (each when a budget or the
    objective needs it), and the budgets it breaks."""

    size_bytes: int
    bops: float | None = None
    macs: float | None = None
    latency_ms: float | None = None
    onnx_bytes: int | None = None
    onnx_latency_ms: float | None = None
    over: list[str] = field(default_factory=list)
    seconds: float = 0.0
    student: Any = field(default=None, repr=False)  # the applied plan, reused by the trial

    def applied(self) -> tuple[Any, int, float] | None:
        """``run_trial``'s ``applied`` argument: the student once; None after (or without) it."""
        student, self.student = self.student, None
        return None if student is None else (student, self.size_bytes, self.seconds)

    def extra_value(self, objective: str | None) -> float | None:
        """The value of the study's third objective, when it was measured here."""
        values = {"bops": self.bops, "macs": self.macs, "latency": self.latency_ms, "onnx_size": self.onnx_bytes,
                  "onnx_latency": self.onnx_latency_ms}
        return values.get(objective) if objective else None


def preflight(plan, ctx, budgets: Budgets = Budgets(), *, latency: bool = False) -> Preflight:
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
        out.bops = float(bit_operations(student, ctx.example, activation_bits=budgets.activation_bits, task=ctx.task))
    if budgets.max_macs is not None or ctx.settings.extra_objective == "macs":
        out.macs = macs_of(student, ctx)
    if budgets.max_latency_ms is not None or (latency and ctx.settings.extra_objective == "latency"):
        s = ctx.settings
        out.latency_ms = float(latency_ms(student, ctx.example, batch_size=s.latency_batch_size,
                                          repeats=s.latency_repeats, warmup=s.latency_warmup, task=ctx.task))
    if budgets.onnx or ctx.settings.extra_objective in ("onnx_size", "onnx_latency"):
        from compresstune.objectives import onnx_cost

        s = ctx.settings
        cost = onnx_cost(student, ctx.example, batch_size=s.latency_batch_size, repeats=s.latency_repeats,
                         warmup=s.latency_warmup, task=ctx.task)
        out.onnx_bytes, out.onnx_latency_ms = cost.size_bytes, cost.latency_ms
    if budgets.max_bops is not None and out.bops > budgets.max_bops:
        out.over.append("max_bops")
    if budgets.max_macs is not None and out.macs > budgets.max_macs:
        out.over.append("max_macs")
    if budgets.max_onnx_bytes is not None and out.onnx_bytes > budgets.max_onnx_bytes:
        out.over.append("max_onnx_bytes")
    if budgets.max_onnx_latency_ms is not None and out.onnx_latency_ms > budgets.max_onnx_latency_ms:
        out.over.append("max_onnx_latency_ms")
    if budgets.max_latency_ms is not None and out.latency_ms > budgets.max_latency_ms:
        out.over.append("max_latency_ms")
    out.seconds = time.perf_counter() - t0
    return out


def budget_constraints(budgets: Budgets, pre: Preflight | None) -> dict[str, float]:
    """``max_bops`` / ``max_macs`` / ``max_latency_ms`` / ONNX constraint values (positive when over;
    1.0 when unknown)."""
    out = {}
    for name, limit, value in (("max_bops", budgets.max_bops, pre and pre.bops),
                               ("max_macs", budgets.max_macs, pre and pre.macs),
                               ("max_latency_ms", budgets.max_latency_ms, pre and pre.latency_ms),
                               ("max_onnx_bytes", budgets.max_onnx_bytes, pre and pre.onnx_bytes),
                               ("max_onnx_latency_ms", budgets.max_onnx_latency_ms, pre and pre.onnx_latency_ms)):
        if limit is not None:
            out[name] = float(value - limit) if _finite(value) else 1.0
    return out


def macs_of(student, ctx) -> float:
    """Dense multiply-accumulates of one example (``ctx.example``) through the applied plan
    ``student`` (:func:`compresstune.objectives.multiply_accumulates`), computed once per distinct
    structure (:func:`compresstune.objectives.macs_key`) per trial context: a context has one base
    model and one example, so the structure decides the count. It needs no trained weights.

    Example:
        >>> pre_macs = macs_of(apply(ctx.model, plan), ctx)  # doctest: +SKIP
    """
    from compresstune.objectives import macs_key, multiply_accumulates

    cache = getattr(ctx, "macs_cache", None)
    key = macs_key(student)
    if cache is not None and key in cache:
        return cache[key]
    value = float(multiply_accumulates(student, ctx.example, task=ctx.task))
    if cache is not None:
        if len(cache) >= _MACS_CACHE_LIMIT:
            cache.pop(next(iter(cache)))
        cache[key] = value
    return value
