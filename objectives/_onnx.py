"""Deploy-cost objectives and budgets: the size of the plan's ONNX file and its ONNX Runtime latency.

Both depend on the plan's structure (shapes, bit-widths, ranks, structured pruning), not on the
weights' values, so they are measured on the plan's export before fine-tuning and cached by that
structure: an export costs 1-6 s, longer than a digits trial. Opt-in (``objectives: [..., onnx_size]``
or ``constraints.max_onnx_bytes`` / ``max_onnx_latency_ms``); needs the ``onnx`` extra.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compresstune.compress import plan_of
from compresstune.task import Task, take_rows

__all__ = ["OnnxCost", "onnx_cost", "structure_key"]

_CACHE: dict[tuple, "OnnxCost"] = {}
_CACHE_LIMIT = 512


@dataclass(frozen=True)
class OnnxCost:
    """``size_bytes`` of the exported ONNX file and its median ONNX Runtime CPU ``latency_ms``."""

    size_bytes: int
    latency_ms: float


def structure_key(model: nn.Module) -> tuple:
    """What an ONNX file's size and speed depend on: per layer its bits, rank and (structured) kept
    share; unstructured sparsity is left out (ONNX stores zeros densely).

    Example:
        >>> import torch.nn as nn, compresstune as ct
        >>> m = nn.Linear(8, 4)
        >>> a = ct.apply(m, ct.CompressionPlan.uniform(m, bits=4, sparsity=0.5))
        >>> b = ct.apply(m, ct.CompressionPlan.uniform(m, bits=4, sparsity=0.1))
        >>> structure_key(a) == structure_key(b)
        True
    """
    plan = plan_of(model)
    if plan is None:
        return ()
    return tuple(sorted((name, lp.bits, lp.rank, lp.structured) for name, lp in plan.layers.items()))


def onnx_cost(model: nn.Module, example: Any, *, batch_size: int = 1, repeats: int = 30, warmup: int = 5,
              threads: int | None = None, task: Task | None = None) -> OnnxCost:
    """Export ``model`` (:func:`compresstune.export_onnx`, weights at their codes) and time it in ONNX
    Runtime's CPU provider on ``example``'s first ``batch_size`` rows (``threads``: intra-op threads,
    default torch's current thread count, i.e. ``cpus_per_trial`` in a trial); cached by
    :func:`structure_key` and the measurement settings.

    Example:
        >>> import torch, torch.nn as nn, compresstune as ct
        >>> m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        >>> cost = onnx_cost(ct.apply(m, ct.CompressionPlan.uniform(m, bits=4)), torch.randn(4, 8))  # doctest: +SKIP
        >>> cost.size_bytes < 1000  # doctest: +SKIP
        True
    """
    from compresstune.onnx_export import export_onnx, latency_ms

    threads = int(threads or torch.get_num_threads())
    inputs = take_rows(example, batch_size) if task is not None else example[:batch_size]
    shapes = _shapes(example)
    params = tuple((n, tuple(t.shape)) for n, t in model.named_parameters())
    key = (type(model).__name__, params, structure_key(model), shapes, batch_size, repeats, warmup, threads)
    if key in _CACHE:
        return _CACHE[key]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plan.onnx"
        export_onnx(model, example, path, check=False)
        cost = OnnxCost(path.stat().st_size, latency_ms(path, inputs, threads=threads, repeats=repeats,
                                                        warmup=warmup))
    if len(_CACHE) >= _CACHE_LIMIT:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = cost
    return cost


def _shapes(example: Any) -> tuple:
    if isinstance(example, torch.Tensor):
        return (tuple(example.shape), str(example.dtype))
    if isinstance(example, dict):
        return tuple((k, _shapes(v)) for k, v in example.items())
    if isinstance(example, (tuple, list)):
        return tuple(_shapes(v) for v in example)
    return (type(example).__name__,)
