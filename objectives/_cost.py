"""Cost objectives beside size: latency of the squashed model, bit-operations and multiply-accumulates."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from compresstune.compress import TiedTo, plan_of, squash
from compresstune.layers import is_transposed_linear
from compresstune.ops import CompressedWeight
from compresstune.task import Task, move, take_rows

__all__ = ["bit_operations", "latency_ms", "macs_key", "multiply_accumulates"]


@torch.inference_mode()
def latency_ms(model: nn.Module, example: Any, *, batch_size: int = 1, repeats: int = 30,
               warmup: int = 5, task: Task | None = None) -> float:
    """Median wall-clock milliseconds of one forward pass of ``squash(model)``.

    What it measures: the plain module that ``export`` would ship (dequantized
    float weights, low-rank as two layers, structured pruning physical), in
    eval mode under ``torch.inference_mode``, on ``example`` repeated to
    ``batch_size`` rows, on the device the model is on, with torch's current
    thread count. Unstructured zeros are stored as dense zeros, so sparsity does
    not speed this up; bit-widths do not either (no integer kernels). It is the
    speed of the float export, not of a specialised runtime.

    With a ``task``, ``example`` is one of its batches: the model is called through
    ``task.outputs`` on the batch's first ``batch_size`` rows (fewer when it has fewer).
    """
    plain = squash(model).eval()
    device = next(plain.parameters()).device
    if task is None:
        x = example[:1].repeat(batch_size, *([1] * (example.dim() - 1))).to(device)
        call = plain
    else:
        x = move(take_rows(example, batch_size), device)
        def call(batch):
            return task.outputs(plain, batch)
    for _ in range(warmup):
        call(x)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        call(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def _out_rows(module: nn.Module, param_name: str) -> int:
    """Output channels of a weight: dim 1 of transformers' ``Conv1D`` (stored ``(in, out)``), else dim 0."""
    weight = getattr(module, param_name)
    return weight.shape[1] if is_transposed_linear(module) else weight.shape[0]


def _weight_cost(module: nn.Module, param_name: str) -> tuple[float, int]:
    """(weight MACs per output position per output row, weight bits) of one weight."""
    par = None
    if parametrize.is_parametrized(module, param_name):
        par = module.parametrizations[param_name][0]
        if isinstance(par, TiedTo) and parametrize.is_parametrized(par.owner, par.param_name):
            par = par.owner.parametrizations[par.param_name][0]  # a tied weight costs what its owner's does
    weight = getattr(module, param_name)
    rows = _out_rows(module, param_name)
    cols = weight.numel() // rows
    if not isinstance(par, CompressedWeight):
        return float(cols), 32
    dens = [m.float().mean().item() if m.numel() else 1.0 for m in par.masks()]
    if par.factored:
        r = par.rank
        return (r * cols * dens[1] + rows * r * dens[0]) / rows, par.bits
    return cols * dens[0], par.bits


@torch.no_grad()
def bit_operations(model: nn.Module, example: Any, *, activation_bits: int = 32, task: Task | None = None) -> float:
    """Bit-operations of one example: sum over layers of MACs x weight bits x activation bits.

    MACs count only nonzero weights (a pruned weight costs nothing) and the two
    factors of a low-rank layer; attention adds its two activation-by-activation
    products at ``activation_bits**2``. Layers left in float count 32 bits. With a
    ``task``, ``example`` is one of its batches, called through ``task.outputs`` on one row.
    """
    total = 0.0
    hooks = []

    def linear_like(module, param_name):
        def hook(mod, inputs, output):
            nonlocal total
            out = output[0] if isinstance(output, tuple) else output
            rows = _out_rows(mod, param_name)
            positions = out.numel() / out.shape[0] / rows  # output positions per example
            per_row, bits = _weight_cost(mod, param_name)
            total += positions * rows * per_row * bits * activation_bits
        return hook

    def attention(mod, inputs, output):
        nonlocal total
        seq = output[0].shape[1] if mod.batch_first else output[0].shape[0]
        for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
            if getattr(mod, name, None) is not None:
                per_row, bits = _weight_cost(mod, name)
                total += seq * getattr(mod, name).shape[0] * per_row * bits * activation_bits
        per_row, bits = _weight_cost(mod.out_proj, "weight")
        total += seq * mod.out_proj.weight.shape[0] * per_row * bits * activation_bits
        total += 2 * seq * seq * mod.embed_dim * activation_bits * activation_bits

    inside_attention = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            hooks.append(module.register_forward_hook(attention))
            inside_attention.add(id(module.out_proj))
        elif ((isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) or is_transposed_linear(module))
              and id(module) not in inside_attention):
            hooks.append(module.register_forward_hook(linear_like(module, "weight")))
    try:
        was_training = model.training
        model.eval()
        with parametrize.cached():
            if task is None:
                model(example[:1])
            else:
                task.outputs(model, move(take_rows(example, 1), next(model.parameters()).device))
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    return total




@torch.no_grad()
def multiply_accumulates(model: nn.Module, example: Any, *, task: Task | None = None) -> float:
    """Dense multiply-accumulates of one example through ``squash(model)``.

    What a dense float kernel does: every weight of the squashed shapes counts,
    zeros included, so unstructured sparsity and bit-widths leave it unchanged,
    while structured pruning (channels removed) and low-rank factors (two
    smaller layers) lower it. Linear and convolution layers (grouped ones count
    their per-group inputs) and attention (its projections plus its two
    activation-by-activation products) are counted; norms, activations and
    pooling are not. With a ``task``, ``example`` is one of its batches, called
    through ``task.outputs`` on one row.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> multiply_accumulates(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)), torch.zeros(1, 4))
        18.0
    """
    plain = squash(model).eval()
    total = 0.0
    hooks = []

    def dense(mod, inputs, output):
        nonlocal total
        out = output[0] if isinstance(output, tuple) else output
        rows = _out_rows(mod, "weight")
        positions = out.numel() / out.shape[0] / rows  # output positions per example
        total += positions * mod.weight.numel()

    def attention(mod, inputs, output):
        nonlocal total
        seq = output[0].shape[1] if mod.batch_first else output[0].shape[0]
        for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
            if getattr(mod, name, None) is not None:
                total += seq * getattr(mod, name).numel()
        total += seq * mod.out_proj.weight.numel() + 2 * seq * seq * mod.embed_dim

    inside_attention = set()
    for module in plain.modules():
        if isinstance(module, nn.MultiheadAttention):
            hooks.append(module.register_forward_hook(attention))
            inside_attention.add(id(module.out_proj))
        elif ((isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) or is_transposed_linear(module))
              and id(module) not in inside_attention):
            hooks.append(module.register_forward_hook(dense))
    try:
        if task is None:
            plain(example[:1])
        else:
            task.outputs(plain, move(take_rows(example, 1), next(plain.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    return total


def macs_key(model: nn.Module) -> tuple:
    """What :func:`multiply_accumulates` of an applied plan depends on (for one base model and
    input): the layers whose shapes the plan changes, each with its rank and the fraction of output
    channels it removes (``structured``); bit-widths and unstructured sparsity are left out (squash
    keeps those shapes dense).

    Example:
        >>> import torch.nn as nn, compresstune as ct
        >>> m = nn.Linear(8, 4)
        >>> a = ct.apply(m, ct.CompressionPlan.uniform(m, bits=4, sparsity=0.5))
        >>> b = ct.apply(m, ct.CompressionPlan.uniform(m, bits=8, sparsity=0.1))
        >>> macs_key(a) == macs_key(b)
        True
    """
    plan = plan_of(model)
    if plan is None:
        return ()
    keys = ((name, lp.rank, _channels_removed(lp)) for name, lp in plan.layers.items())
    return tuple(sorted(k for k in keys if k[1] is not None or k[2] > 0))


def _channels_removed(lp) -> float:
    """The fraction of output channels a layer plan removes: ``structured`` (plan schema 2), or
    ``sparsity`` when ``structured`` is the schema-1 flag ``True``."""
    if lp.structured is True:
        return float(lp.sparsity)
    return float(lp.structured or 0.0)
