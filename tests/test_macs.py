"""multiply_accumulates: dense MACs of the squashed shapes (issue 15 item 4, the cost function)."""

from __future__ import annotations

import torch
from torch import nn

import compresstune as ct
from compresstune.objectives import multiply_accumulates
from compresstune.plan import CompressionPlan, LayerPlan


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=4),
                         nn.Conv2d(8, 6, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))


X = torch.randn(2, 3, 5, 5)


def test_counts_every_dense_weight_per_output_position():
    hw = 5 * 5
    expected = hw * 8 * 3 * 9 + hw * 8 * 2 * 9 + hw * 6 * 8 + 4 * 6  # grouped conv: 8 // 4 inputs per group
    assert multiply_accumulates(_cnn(), X) == expected


def test_structured_pruning_and_lowrank_lower_it_unstructured_and_bits_do_not():
    model = _cnn()
    base = multiply_accumulates(model, X)
    sparse = ct.apply(model, CompressionPlan({"3": LayerPlan(sparsity=0.5, bits=4)}))
    assert multiply_accumulates(sparse, X) == base  # zeros still run through a dense kernel
    narrow = ct.apply(model, CompressionPlan({"3": LayerPlan(sparsity=0.5, structured=True)}))
    assert multiply_accumulates(narrow, X) == base - 5 * 5 * 3 * 8 - 3 * 4  # 3 of 6 channels gone, head shrinks
    factored = ct.apply(model, CompressionPlan({"6": LayerPlan(rank=2)}))
    assert multiply_accumulates(factored, X) == base - 4 * 6 + 2 * (6 + 4)


def test_attention_counts_projections_and_products():
    class Attend(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            return self.attn(x, x, x)[0]

    seq = 5
    got = multiply_accumulates(Attend(), torch.randn(1, seq, 8))
    assert got == seq * 3 * 8 * 8 + seq * 8 * 8 + 2 * seq * seq * 8
