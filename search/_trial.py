"""One trial, as a pure function of a plan and a context: apply, budget check,
recovery fine-tune, objectives. Shared by the in-process loop and the Ray
workers; it touches no storage and returns everything the driver records."""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from compresstune.artifact import to_bytes
from compresstune.compress import apply
from compresstune.data import Splits
from compresstune.objectives import bit_operations, evaluate, latency_ms, recover
from compresstune.plan import CompressionPlan

__all__ = ["StopTrial", "TrialContext", "TrialOutcome", "TrialSettings", "constraint_names", "run_trial"]


@dataclass(frozen=True)
class TrialSettings:
    """Everything a trial needs from the study config, as plain values (pickles for Ray)."""

    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    optimizer: str
    eval_every: int
    eval_batch_size: int
    seed: int
    max_accuracy_drop: float | None
    max_size_bytes: int | None
    min_ratio: float | None
    extra_objective: str | None  # "latency" | "bops" | None
    activation_bits: int
    latency_batch_size: int
    latency_repeats: int
    latency_warmup: int
    baseline_val_accuracy: float
    reference_bytes: int


@dataclass
class TrialContext:
    """The plain baseline model, the data and the teacher's soft targets: sent to a
    worker once, reused by every trial it runs."""

    model: nn.Module
    splits: Splits
    soft_targets: torch.Tensor
    settings: TrialSettings


class StopTrial(Exception):
    """Raised by an ``on_eval`` callback to stop a trial early at a rung."""

    def __init__(self, step: int, accuracy: float) -> None:
        super().__init__(f"stopped at step {step} (val accuracy {accuracy:.4f})")
        self.step, self.accuracy = step, accuracy


@dataclass
class TrialOutcome:
    """What the driver records: state, values, constraints, attributes and artifact bytes."""

    state: str  # "complete" or "fail"
    values: list[float] | None = None
    constraints: dict[str, float] = field(default_factory=dict)
    user_attrs: dict[str, Any] = field(default_factory=dict)
    artifact: bytes | None = None
    fail_reason: str | None = None


def constraint_names(s: TrialSettings) -> list[str]:
    """Names of the constraint entries, in order (stored in the study)."""
    names = ["accuracy_drop"] if s.max_accuracy_drop is not None else []
    names += ["max_size_bytes"] if s.max_size_bytes is not None else []
    names += ["min_ratio"] if s.min_ratio is not None else []
    return names + ["stopped"]


def constraints_for(s: TrialSettings, val_accuracy: float, size_bytes: int, *,
                    stopped: bool = False) -> dict[str, float]:
    """Named constraint values, positive when violated; the same names (:func:`constraint_names`) for every trial."""
    out = {}
    if s.max_accuracy_drop is not None:
        out["accuracy_drop"] = (s.baseline_val_accuracy - s.max_accuracy_drop) - val_accuracy
    if s.max_size_bytes is not None:
        out["max_size_bytes"] = float(size_bytes - s.max_size_bytes)
    if s.min_ratio is not None:
        out["min_ratio"] = s.min_ratio - s.reference_bytes / size_bytes
    out["stopped"] = 1.0 if stopped else 0.0
    return out


def over_budget(s: TrialSettings, size_bytes: int) -> bool:
    """True when the size alone already breaks a budget (known before any training)."""
    if s.max_size_bytes is not None and size_bytes > s.max_size_bytes:
        return True
    return s.min_ratio is not None and s.reference_bytes / size_bytes < s.min_ratio


def run_trial(plan: CompressionPlan, ctx: TrialContext, *,
              on_eval: Callable[[int, float], None] | None = None,
              applied: tuple[nn.Module, int, float] | None = None) -> TrialOutcome:
    """Run one trial; never raises for a failing trial (the outcome says FAIL and why).

    ``applied``: ``(student, packed size, seconds)`` when the caller has already
    applied this plan to ``ctx.model`` (the budget checks before training do), so
    it is not applied and packed twice.
    """
    try:
        return _run(plan, ctx, on_eval, applied)
    except KeyboardInterrupt:
        raise
    except MemoryError:
        return TrialOutcome("fail", fail_reason="MemoryError: the trial ran out of memory")
    except Exception as exc:  # noqa: BLE001 - a failing trial is recorded, the search goes on
        where = traceback.extract_tb(exc.__traceback__)[-1]
        reason = f"{type(exc).__name__}: {exc} (at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})"
        return TrialOutcome("fail", fail_reason=reason[:2000])


def _run(plan: CompressionPlan, ctx: TrialContext, on_eval, applied=None) -> TrialOutcome:
    s, splits = ctx.settings, ctx.splits
    timings = {}
    t0 = time.perf_counter()
    if applied is None:
        student = apply(ctx.model, plan)
        size = len(to_bytes(student))
    else:
        student, size, before = applied
        t0 -= before
    timings["apply_s"] = time.perf_counter() - t0
    attrs: dict[str, Any] = {"plan": plan.to_json(), "size_bytes": size, "ratio": s.reference_bytes / size}
    rejected = over_budget(s, size)
    stopped = None
    t1 = time.perf_counter()
    try:
        result = None if rejected else recover(
            student, splits.train, splits.val, soft_targets=ctx.soft_targets, temperature=plan.temperature,
            alpha=plan.alpha, steps=s.steps, batch_size=s.batch_size, lr=s.lr, weight_decay=s.weight_decay,
            optimizer=s.optimizer, eval_every=s.eval_every, eval_batch_size=s.eval_batch_size, seed=s.seed,
            on_eval=on_eval)
    except StopTrial as stop:
        stopped, result = stop, None
    timings["finetune_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    val_acc = stopped.accuracy if stopped else evaluate(student, splits.val, batch_size=s.eval_batch_size)
    test_acc = evaluate(student, splits.test, batch_size=s.eval_batch_size)
    timings["eval_s"] = time.perf_counter() - t2
    if not math.isfinite(val_acc):
        raise ValueError(f"validation accuracy is {val_acc}")
    values = [val_acc, float(size)]
    if s.extra_objective is not None:
        values.append(_extra_objective(student, splits, s))
    constraints = constraints_for(s, val_acc, size, stopped=stopped is not None)
    attrs.update(val_accuracy=val_acc, test_accuracy=test_acc, curve=result.curve if result else [])
    if rejected:
        attrs["rejected"] = "budget"
    if stopped:
        attrs["stopped_at_rung"] = stopped.step
    artifact = None if (rejected or stopped) else to_bytes(student)
    if artifact is not None and len(artifact) != size:
        raise RuntimeError(f"packed size changed during fine-tuning ({size} -> {len(artifact)} bytes)")
    timings["total_s"] = time.perf_counter() - t0
    attrs["timings"] = timings
    return TrialOutcome("complete", values=values, constraints=constraints, user_attrs=attrs, artifact=artifact)


def _extra_objective(student: nn.Module, splits: Splits, s: TrialSettings) -> float:
    example = splits.val.x[:1]
    if s.extra_objective == "latency":
        return latency_ms(student, example, batch_size=s.latency_batch_size, repeats=s.latency_repeats,
                          warmup=s.latency_warmup)
    return bit_operations(student, example, activation_bits=s.activation_bits)
