"""Structured-pruning analysis traces through user subclasses of known layer and norm types
(issue 15 item 1): they are torch.fx leaves, so one subclass no longer breaks the whole trace."""

from __future__ import annotations

import torch
from torch import nn

import compresstune as ct
from compresstune.plan import CompressionPlan, LayerPlan


class PlainBN(nn.BatchNorm2d):
    """``class B(nn.BatchNorm2d): pass``: once enough to fail the trace on ``if self.training``."""


class BNAct(nn.BatchNorm2d):
    """A BatchNorm that applies its activation, as MobileNet/EfficientNet code bases write it."""

    def forward(self, x):
        return torch.relu(super().forward(x))


class MyLinear(nn.Linear):
    """A user Linear subclass with its own forward (same arithmetic)."""

    def forward(self, x):
        return nn.functional.linear(x, self.weight, self.bias)


class InvertedStem(nn.Module):
    """pointwise expand -> BN+act subclass -> depthwise conv -> plain BN subclass -> pool -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(3, 16, 1)
        self.bn1 = BNAct(16)
        self.reduce = nn.Conv2d(16, 8, 3, padding=1)
        self.bn2 = PlainBN(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = MyLinear(8, 6)
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        x = self.bn2(self.reduce(self.bn1(self.expand(x))))
        return self.head(self.fc(torch.flatten(self.pool(x), 1)))


def test_subclasses_are_leaves_and_refusals_stay_per_layer():
    found = ct.discover(InvertedStem())
    refused = {name: info.refused.get("structured") for name, info in found.layers.items()}
    assert refused["expand"] is None and refused["reduce"] is None and refused["fc"] is None
    assert "model output" in refused["head"]  # the only refusal, with its own reason
    roles = {name: [(m.name, m.role) for m in found.group_of(name).members] for name in ("expand", "reduce", "fc")}
    assert roles["expand"] == [("expand", "layer"), ("bn1", "norm"), ("reduce", "reader")]
    assert roles["reduce"] == [("reduce", "layer"), ("bn2", "norm"), ("fc", "reader")]
    assert roles["fc"] == [("fc", "layer"), ("head", "reader")]


def test_a_subclass_with_unknown_channel_use_is_refused_by_name():
    class Scale(nn.Module):
        def forward(self, x):
            return x * torch.ones(8).view(1, -1, 1, 1)  # a tensor made in forward: its channels are unknown

    model = nn.Sequential(nn.Conv2d(3, 8, 1), PlainBN(8), Scale(), nn.Conv2d(8, 4, 1))
    found = ct.discover(model)
    assert found.layers["0"].refused["structured"] == "its channels feed a product (mul) with a tensor whose channels cannot be pruned"
    assert "model output" in found.layers["3"].refused["structured"]


def test_pruning_through_subclasses_shrinks_squashes_exports_and_trains():
    torch.manual_seed(0)
    model = InvertedStem()
    with torch.no_grad():  # non-trivial running statistics, so a wrong kept index would show
        model(torch.randn(16, 3, 8, 8))
    model.eval()
    plan = CompressionPlan({"expand": LayerPlan(sparsity=0.5, structured=True),
                            "reduce": LayerPlan(sparsity=0.25, structured=True),
                            "fc": LayerPlan(sparsity=0.5, structured=True)})
    small = ct.apply(model, plan).eval()
    plain = ct.squash(small).eval()
    assert plain.expand.weight.shape == (8, 3, 1, 1) and plain.bn1.running_mean.shape == (8,)
    assert plain.reduce.weight.shape == (6, 8, 3, 3) and plain.bn2.weight.shape == (6,)
    assert plain.fc.weight.shape == (3, 6) and plain.head.weight.shape == (4, 3)
    assert isinstance(plain.bn1, BNAct) and isinstance(plain.fc, MyLinear)
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), small(x))
    exported = torch.export.export(plain, (x,))
    torch.testing.assert_close(exported.module()(x), plain(x))
    small.train()
    opt = torch.optim.SGD(small.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(small(x), torch.tensor([0, 1, 2, 3, 0]))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
