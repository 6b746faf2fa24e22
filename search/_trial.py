"""One trial, as a pure function of a plan and a context: apply, budgets known
before training, recovery fine-tune, objectives; and the one builder of every
kind of outcome (complete, failed, over a budget, stopped at a rung). Shared by
the in-process loop and the Ray workers; it touches no storage and returns
everything the driver records."""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from compresstune.artifact import to_bytes
from compresstune.compress import apply
from compresstune.objectives import bit_operations, evaluate, latency_ms, onnx_cost, recover
from compresstune.plan import CompressionPlan
from compresstune.task import Task
from compresstune.search._budgets import (Budgets, Preflight, budget_constraints, constraint_names, constraints_for,
                                          macs_of, over_budget, preflight)

__all__ = ["StopTrial", "TrialContext", "TrialOutcome", "TrialSettings", "constraint_names", "failed", "failed_from",
           "run_checked", "run_trial", "stopped_outcome", "with_steps", "worker_info"]

@dataclass(frozen=True)
class TrialSettings:
    """Everything a trial needs from the study config, as plain values (pickles for Ray)."""

    steps: int
    lr: float
    weight_decay: float
    optimizer: str
    eval_every: int
    seed: int
    max_drop: float | None  # in the metric's units, a drop being a change for the worse
    max_size_bytes: int | None
    min_ratio: float | None
    extra_objective: str | None  # "latency" | "bops" | "macs" | "onnx_size" | "onnx_latency" | None
    activation_bits: int
    latency_batch_size: int
    latency_repeats: int
    latency_warmup: int
    baseline_value: float  # the baseline's metric on the validation split
    reference_bytes: int
    metric: str = "accuracy"
    direction: str = "maximize"
    n_val: int | None = None  # validation examples behind a binomial metric (early stopping's noise)
    batchnorm: str = "frozen"  # BatchNorm during the fine-tune: "frozen" or "train"


@dataclass
class TrialContext:
    """The plain baseline model (also the teacher), the task and, when the training data
    is in-memory tensors, the teacher's cached outputs: sent to a worker once, reused by
    every trial it runs."""

    model: nn.Module
    task: Task
    settings: TrialSettings
    cached_teacher: torch.Tensor | None = None
    example: Any = None  # one validation batch: the input of the latency and bit-operation measurements
    # Multiply-accumulates by plan structure (search/_budgets.py, macs_of): the model and example above fix the rest.
    macs_cache: dict = field(default_factory=dict, repr=False)


def with_steps(ctx: TrialContext, steps: int) -> TrialContext:
    """``ctx`` with a fine-tune of ``steps`` (a promoted trial's longer one)."""
    return dataclasses.replace(ctx, settings=dataclasses.replace(ctx.settings, steps=int(steps)))


class StopTrial(Exception):
    """Raised by an ``on_eval`` callback to stop a trial early at a rung."""

    def __init__(self, step: int, accuracy: float, decision: Any = None) -> None:
        super().__init__(f"stopped at step {step} (val metric {accuracy:.4f})")
        self.step, self.accuracy, self.decision = step, accuracy, decision


@dataclass
class TrialOutcome:
    """What the driver records: state, values, constraints, attributes and artifact bytes."""

    state: str  # "complete" or "fail"
    values: list[float] | None = None
    constraints: dict[str, float] = field(default_factory=dict)
    user_attrs: dict[str, Any] = field(default_factory=dict)
    artifact: bytes | None = None
    fail_reason: str | None = None
    fail_kind: str | None = None  # see search/_records.py, FAIL_KINDS


# -- the outcomes ------------------------------------------------------------------------------------

def failed(reason: str, kind: str = "error") -> TrialOutcome:
    """A FAIL outcome: ``reason`` for people (at most 2,000 characters), ``kind`` for counting.

    Example:
        >>> failed("interrupted: stopped by the user", "interrupted").fail_kind
        'interrupted'
    """
    return TrialOutcome("fail", fail_reason=str(reason)[:2000], fail_kind=kind)


def failed_from(exc: BaseException, kind: str = "error") -> TrialOutcome:
    """The FAIL outcome of an exception: its type, message and where it was raised.

    Example:
        >>> failed_from(MemoryError()).fail_reason
        'MemoryError: the trial ran out of memory'
    """
    if isinstance(exc, MemoryError):
        return failed("MemoryError: the trial ran out of memory", "memory")
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno})" if frames else ""
    return failed(f"{type(exc).__name__}: {exc}{where}", kind)


def worker_info() -> dict[str, Any]:
    """Where this process runs (the executor adds ``seconds`` and ``retries``; Ray adds its node)."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "node_id": None}


def stopped_outcome(settings: TrialSettings, *, plan_json: str, size_bytes: int, step: int, accuracy: float,
                    curve: list | None = None, extra_value: float | None = None, budgets: Budgets = Budgets(),
                    bops: float | None = None, test_accuracy: float | None = None,
                    latency_ms: float | None = None, decision: Any = None,
                    timings: dict | None = None, macs: float | None = None) -> TrialOutcome:
    """The outcome of a trial stopped at a rung, on either executor.

    Values are the rung accuracy, the size (and the third objective); constraints
    have ``stopped`` positive; attributes hold the rungs in ``curve``,
    ``stopped_at_rung``, ``stopped_by`` and ``test_accuracy: None`` (no test
    pass is spent on a stopped trial). ``extra_value`` is required when the
    study has a third objective (``settings.extra_objective``). ``bops`` / ``macs`` /
    ``latency_ms``: what was measured before training (the budgets' constraints and attributes).
    """
    if not _finite(accuracy) or not _finite(size_bytes):
        return failed(f"stopped with a non-finite rung report (accuracy {accuracy!r}, size {size_bytes!r})")
    values = [float(accuracy), float(size_bytes)]
    if settings.extra_objective is not None:
        if extra_value is None:
            raise ValueError(f"`extra_value` is required: the study has a third objective "
                             f"({settings.extra_objective!r}); report it with the rung results.")
        values.append(float(extra_value))
    constraints = constraints_for(settings, float(accuracy), int(size_bytes), stopped=True)
    if macs is None and settings.extra_objective == "macs":
        macs = extra_value
    constraints.update(budget_constraints(budgets, Preflight(size_bytes=int(size_bytes), bops=bops, macs=macs,
                                                             latency_ms=latency_ms)))
    attrs = {"plan": plan_json, "size_bytes": int(size_bytes), "ratio": settings.reference_bytes / size_bytes,
             "val_accuracy": float(accuracy), "test_accuracy": test_accuracy,
             "curve": [list(p) for p in (curve or [[step, accuracy]])], "stopped_at_rung": int(step),
             "timings": dict(timings or {})}
    if decision is not None:
        attrs["stopped_by"] = decision.as_attr() if hasattr(decision, "as_attr") else dict(decision)
    if bops is not None:
        attrs["bops"] = float(bops)
    if macs is not None:
        attrs["macs"] = float(macs)
    if budgets.max_latency_ms is not None:
        attrs["latency_before_training_ms"] = latency_ms
    return TrialOutcome("complete", values=values, constraints=constraints, user_attrs=attrs)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
    except Exception as exc:  # noqa: BLE001 - a failing trial is recorded, the search goes on
        return failed_from(exc)  # MemoryError too: it is an Exception


def _run(plan: CompressionPlan, ctx: TrialContext, on_eval, applied=None) -> TrialOutcome:
    s, task = ctx.settings, ctx.task
    timings = {}
    t0 = time.perf_counter()
    if applied is None:
        student = apply(ctx.model, plan)
        size = len(to_bytes(student))
    else:
        student, size, before = applied
        t0 -= before
    # Known before training (the structure fixes it; cached, so a preflight's count is reused).
    macs = macs_of(student, ctx) if s.extra_objective == "macs" else None
    timings["apply_s"] = time.perf_counter() - t0
    rejected = over_budget(s, size)
    rungs: list[list[float]] = []

    def on_rung(step: int, accuracy: float) -> None:
        rungs.append([int(step), float(accuracy)])
        if on_eval is not None:
            on_eval(step, accuracy)

    t1 = time.perf_counter()
    try:
        result = None if rejected else recover(
            student, ctx.model, task, temperature=plan.temperature, alpha=plan.alpha, steps=s.steps, lr=s.lr,
            weight_decay=s.weight_decay, optimizer=s.optimizer, eval_every=s.eval_every, seed=s.seed,
            cached_teacher=ctx.cached_teacher, on_eval=on_rung, batchnorm=s.batchnorm)
    except StopTrial as stop:
        timings["finetune_s"] = time.perf_counter() - t1
        timings["eval_s"] = 0.0
        timings["total_s"] = time.perf_counter() - t0
        extra = _extra_objective(student, ctx) if s.extra_objective is not None else None
        return stopped_outcome(s, plan_json=plan.to_json(), size_bytes=size, step=stop.step, accuracy=stop.accuracy,
                               curve=rungs, extra_value=extra, decision=stop.decision, timings=timings, macs=macs)
    timings["finetune_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    val_acc = evaluate(student, task, "val")
    test_acc = evaluate(student, task, "test") if task.has_split("test") else None
    timings["eval_s"] = time.perf_counter() - t2
    values = [val_acc, float(size)]
    if s.extra_objective is not None:
        values.append(_extra_objective(student, ctx))
    attrs: dict[str, Any] = {"plan": plan.to_json(), "size_bytes": size, "ratio": s.reference_bytes / size,
                             "val_accuracy": val_acc, "test_accuracy": test_acc,
                             "curve": result.curve if result else []}
    if macs is not None:
        attrs["macs"] = macs
    if rejected:
        attrs["rejected"] = "budget"
    artifact = None if rejected else to_bytes(student)
    if artifact is not None and len(artifact) != size:
        raise RuntimeError(f"packed size changed during fine-tuning ({size} -> {len(artifact)} bytes)")
    timings["total_s"] = time.perf_counter() - t0
    attrs["timings"] = timings
    return TrialOutcome("complete", values=values, constraints=constraints_for(s, val_acc, size), user_attrs=attrs,
                        artifact=artifact)


def run_checked(plan, ctx: TrialContext, *, budgets: Budgets = Budgets(),
                on_rung: Callable[[int, float, int], None] | None = None,
                pre: Preflight | None = None) -> TrialOutcome:
    """:func:`run_trial` plus the budgets known before training and rung reports.

    * A plan over ``budgets.max_bops``, ``max_macs``, ``max_latency_ms`` (or an
      ONNX budget) is scored without fine-tuning and told COMPLETE with a
      positive constraint of that name and ``rejected: budget``, as run_trial
      does for the size budgets. Every trial then carries the same constraints
      (<= 0 when within budget) and a ``bops`` / ``macs`` /
      ``latency_before_training_ms`` attribute.
    * ``on_rung(step, val_accuracy, size_bytes)`` is called at every rung (the
      size is known before training); it may raise ``StopTrial``.

    With no budget and no ``on_rung`` this is exactly ``run_trial(plan, ctx)``.
    """
    if not budgets.any and on_rung is None:
        return run_trial(plan, ctx)
    try:
        pre = pre or preflight(plan, ctx, budgets)
    except Exception:  # noqa: BLE001 - let run_trial fail the trial with its own message
        return run_trial(plan, ctx)
    if pre.over:
        settings = dataclasses.replace(ctx.settings, steps=0)
        outcome = run_trial(plan, dataclasses.replace(ctx, settings=settings), applied=pre.applied())
    else:
        def on_eval(step: int, acc: float) -> None:
            if on_rung is not None:
                on_rung(int(step), float(acc), pre.size_bytes)

        outcome = run_trial(plan, ctx, on_eval=on_eval, applied=pre.applied())
    if outcome.state != "complete":
        return outcome
    outcome.constraints.update(budget_constraints(budgets, pre))
    if pre.bops is not None:
        outcome.user_attrs["bops"] = pre.bops
    if pre.macs is not None:
        outcome.user_attrs["macs"] = pre.macs
    if budgets.max_latency_ms is not None:
        outcome.user_attrs["latency_before_training_ms"] = pre.latency_ms
    if pre.onnx_bytes is not None:
        outcome.user_attrs["onnx_bytes"] = pre.onnx_bytes
        outcome.user_attrs["onnx_latency_ms"] = pre.onnx_latency_ms
    if pre.over:
        outcome.user_attrs["rejected"] = "budget"
        outcome.user_attrs["over_budget"] = list(pre.over)
        outcome.artifact = None
    return outcome


def _extra_objective(student: nn.Module, ctx: TrialContext) -> float:
    s = ctx.settings
    if s.extra_objective == "latency":
        return latency_ms(student, ctx.example, batch_size=s.latency_batch_size, repeats=s.latency_repeats,
                          warmup=s.latency_warmup, task=ctx.task)
    if s.extra_objective in ("onnx_size", "onnx_latency"):  # cached by structure: the preflight's export
        cost = onnx_cost(student, ctx.example, batch_size=s.latency_batch_size, repeats=s.latency_repeats,
                         warmup=s.latency_warmup, task=ctx.task)
        return float(cost.size_bytes if s.extra_objective == "onnx_size" else cost.latency_ms)
    if s.extra_objective == "macs":  # cached by structure: counted before training
        return macs_of(student, ctx)
    return bit_operations(student, ctx.example, activation_bits=s.activation_bits, task=ctx.task)
