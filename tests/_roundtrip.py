"""The round trip every layer kind must survive, shared by the model-zoo tests:
apply a plan, save and load it exactly, squash to equal outputs, torch.export the
squashed model, and take one fine-tune step with finite gradients."""

from __future__ import annotations

import os
from typing import Callable

import torch
from torch import nn

import compresstune as ct
from compresstune.plan import CompressionPlan, LayerPlan

Call = Callable[[nn.Module], torch.Tensor]

_MIXED = (
    dict(sparsity=0.6, bits=3),
    dict(bits=8, rank_fraction=0.25),
    dict(sparsity=0.3, bits=4, rank_fraction=0.5),
    dict(bits=16),
    dict(sparsity=0.5, bits=6),
)


def mixed_plan(model: nn.Module) -> CompressionPlan:
    """A different setting per layer, cycling through prune / quantize / low-rank mixes;
    a rank only where the layer takes one and it saves storage."""
    found = ct.discover(model, trace=False)
    layers = {}
    for i, (name, info) in enumerate(found.layers.items()):
        knobs = dict(_MIXED[i % len(_MIXED)])
        fraction = knobs.pop("rank_fraction", None)
        rank = info.rank_for_fraction(fraction) if fraction else None
        layers[name] = LayerPlan(rank=rank, **knobs)
    return CompressionPlan(layers)


def outputs(model: nn.Module, call: Call) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return call(model)


def check_round_trip(model: nn.Module, plan: CompressionPlan, call: Call, path, *, export_args=None,
                     export_kwargs=None) -> float:
    """Every promise of the core for ``model`` under ``plan``; returns the compression ratio.

    ``call(m)`` runs a model and returns one float tensor; ``export_args`` /
    ``export_kwargs`` are what ``torch.export`` traces the squashed model with
    (``call`` must pass the same).
    """
    small = ct.apply(model, plan)
    y = outputs(small, call)

    size = ct.save(small, path)
    assert os.path.getsize(path) == size == ct.packed_size(small)
    again = ct.load(path, into=model)
    assert torch.allclose(outputs(again, call), y, rtol=0, atol=1e-6)
    assert ct.plan_of(again) == ct.plan_of(small)

    plain = ct.squash(small).eval()
    assert not any(type(m).__name__.startswith("Parametrized") for m in plain.modules())
    assert torch.allclose(outputs(plain, call), y, rtol=1e-4, atol=1e-5)
    if export_args is not None:
        exported = torch.export.export(plain, tuple(export_args), kwargs=export_kwargs or {}, strict=False)
        got = exported.module()(*export_args, **(export_kwargs or {}))
        got = got if isinstance(got, torch.Tensor) else _first_tensor(got)
        assert torch.allclose(got, y, rtol=1e-4, atol=1e-5)

    _finetune_step(small, call)
    return ct.reference_size(model) / size


def _first_tensor(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        return _first_tensor(next(iter(out.values())))
    return _first_tensor(out[0])


def _finetune_step(small: nn.Module, call: Call) -> None:
    small.train()
    trainable = [p for p in small.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    opt = torch.optim.SGD(trainable, lr=1e-2)
    opt.zero_grad()
    loss = call(small).float().pow(2).mean()
    loss.backward()
    grads = [p.grad for p in trainable if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, trainable))
