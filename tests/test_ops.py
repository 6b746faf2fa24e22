"""The operators: magnitude pruning, quantization, SVD factors, KD loss, CompressedWeight."""

from __future__ import annotations

import doctest
import importlib
import math

import pytest
import torch

from compresstune.ops import (
    CompressedWeight,
    channels_to_keep,
    dequantize,
    fake_quantize,
    kd_loss,
    magnitude_mask,
    quantize_codes,
    svd_factors,
)
from compresstune.ops.quantize import qmax

# -- pruning -----------------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.77, 0.99])
def test_magnitude_mask_zeroes_exactly_the_smallest(sparsity):
    w = torch.randn(13, 7)
    mask = magnitude_mask(w, sparsity)
    n_zero = round(sparsity * w.numel())
    assert mask.shape == w.shape and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert int((mask == 0).sum()) == n_zero
    if 0 < n_zero < w.numel():
        assert w.abs()[mask == 0].max() <= w.abs()[mask == 1].min()


def test_magnitude_mask_count_is_exact_with_ties():
    mask = magnitude_mask(torch.zeros(10), 0.3)
    assert mask.tolist() == [0.0] * 3 + [1.0] * 7


def test_magnitude_mask_breaks_ties_by_position_like_a_stable_sort():
    gen = torch.Generator().manual_seed(0)
    for i in range(200):
        n = int(torch.randint(1, 40, (), generator=gen))
        w = torch.randint(-3, 4, (n,), generator=gen).float()  # many ties
        sparsity = float(torch.rand((), generator=gen)) * 0.99
        order = torch.argsort(w.abs(), stable=True)
        expected = torch.ones(n)
        expected[order[: round(sparsity * n)]] = 0
        assert torch.equal(magnitude_mask(w, sparsity), expected)


def test_channels_to_keep_largest_norm_sorted_and_at_least_one():
    w = torch.tensor([[3.0, 0.0], [0.1, 0.0], [0.0, 2.0], [1.0, 1.0]])
    assert channels_to_keep(w, 0.5).tolist() == [0, 2]
    assert channels_to_keep(w, 0.99).tolist() == [0]
    assert channels_to_keep(w, 0.0).tolist() == [0, 1, 2, 3]
    conv = torch.randn(6, 3, 3, 3)
    keep = channels_to_keep(conv, 1 / 3)
    norms = conv.flatten(1).norm(dim=1)
    assert len(keep) == 4 and set(keep.tolist()) == set(norms.topk(4).indices.tolist())


# -- quantization ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_quantization_is_symmetric_per_output_channel(bits):
    w = torch.randn(9, 4, 3) * torch.logspace(-3, 2, 9)[:, None, None]
    codes, scales = quantize_codes(w, bits)
    q = qmax(bits)
    assert q == 2 ** (bits - 1) - 1
    assert codes.dtype == torch.int32 and codes.shape == w.shape and scales.shape == (9, 1)
    assert int(codes.abs().max()) == q and len(codes.unique()) <= 2**bits - 1
    assert torch.allclose(scales.squeeze(1), w.flatten(1).abs().amax(1) / q)
    assert torch.equal(quantize_codes(-w, bits)[0], -codes)  # symmetric: no zero-point
    deq = dequantize(codes, scales)
    assert ((deq - w).flatten(1).abs() <= scales / 2 * (1 + 1e-6)).all()  # round to nearest
    assert torch.equal(fake_quantize(w, bits), deq)  # what is stored, bit for bit
    for row in range(9):  # each row has its own grid
        levels = deq[row].flatten() / scales[row]
        assert torch.allclose(levels, levels.round(), atol=1e-4)


def test_float_bit_widths():
    w = torch.randn(5, 5)
    assert fake_quantize(w, 32) is w
    assert torch.equal(fake_quantize(w, 16), w.half().float())


def test_all_zero_rows_quantize_to_zero():
    w = torch.zeros(3, 4)
    w[1] = 1.0
    codes, scales = quantize_codes(w, 4)
    assert torch.equal(dequantize(codes, scales), w)
    assert torch.isfinite(fake_quantize(w, 2)).all()


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
def test_straight_through_gradient(bits):
    w = torch.randn(6, 5, requires_grad=True)
    g = torch.randn(6, 5)
    (fake_quantize(w, bits) * g).sum().backward()
    assert torch.equal(w.grad, g)


# -- low rank ---------------------------------------------------------------------------------------


def test_svd_factors_recover_a_low_rank_matrix_and_are_optimal():
    torch.manual_seed(1)
    m = torch.randn(12, 3) @ torch.randn(3, 20)
    a, b = svd_factors(m, 3)
    assert a.shape == (12, 3) and b.shape == (3, 20)
    assert torch.allclose(a @ b, m, atol=1e-4)
    full = torch.randn(10, 8)
    s = torch.linalg.svdvals(full)
    a, b = svd_factors(full, 2)
    # Eckart-Young: the Frobenius error is the norm of the dropped singular values.
    assert math.isclose(float((full - a @ b).norm()), float(s[2:].norm()), rel_tol=1e-4)
    # Singular values split evenly between the factors.
    assert torch.allclose(a.norm(dim=0), b.norm(dim=1), rtol=1e-4)


# -- distillation -----------------------------------------------------------------------------------


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def test_kd_loss_matches_a_hand_computation():
    s = [[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]]
    t = [[0.5, 0.0, 1.0], [2.0, 0.0, -1.0]]
    y = [1, 0]
    T, alpha = 2.0, 0.3
    kl = ce = 0.0
    for si, ti, yi in zip(s, t, y):
        pt = _softmax([v / T for v in ti])
        ps = _softmax([v / T for v in si])
        kl += sum(p * (math.log(p) - math.log(q)) for p, q in zip(pt, ps))
        ce += -math.log(_softmax(si)[yi])
    expected = alpha * T * T * kl / 2 + (1 - alpha) * ce / 2
    got = kd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), temperature=T, alpha=alpha)
    assert math.isclose(got.item(), expected, rel_tol=1e-5)
    only_ce = kd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), temperature=T, alpha=0.0)
    assert math.isclose(only_ce.item(), ce / 2, rel_tol=1e-5)
    only_kd = kd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), temperature=T, alpha=1.0)
    assert math.isclose(only_kd.item(), T * T * kl / 2, rel_tol=1e-5)


def test_kd_loss_does_not_backpropagate_into_the_teacher():
    s = torch.randn(4, 5, requires_grad=True)
    t = torch.randn(4, 5, requires_grad=True)
    kd_loss(s, t, torch.tensor([0, 1, 2, 3]), temperature=3.0, alpha=0.5).backward()
    assert s.grad is not None and t.grad is None


@pytest.mark.parametrize("kwargs, field", [({"temperature": 0.0, "alpha": 0.5}, "temperature"),
                                           ({"temperature": 2.0, "alpha": 1.5}, "alpha")])
def test_kd_loss_rejects_bad_settings(kwargs, field):
    with pytest.raises(ValueError, match=field):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 1]), **kwargs)


# -- the parametrization ----------------------------------------------------------------------------


def test_compressed_weight_low_rank_then_prune_then_quantize():
    w = torch.randn(6, 4, 3, 3)  # a Conv2d weight: factored as 6 x (4*3*3)
    par = CompressedWeight(tuple(w.shape), sparsity=0.5, bits=4, rank=3)
    a, b = par.right_inverse(w)
    assert a.shape == (6, 3) and b.shape == (3, 36)
    ma, mb = par.masks()
    assert int((ma == 0).sum()) == 9 and int((mb == 0).sum()) == 54  # sparsity on both factors
    out = par(a, b)
    expected = (fake_quantize(a * ma, 4) @ fake_quantize(b * mb, 4)).reshape(w.shape)
    assert out.shape == w.shape and torch.equal(out, expected)


def test_compressed_weight_without_rank_and_without_sparsity():
    w = torch.randn(5, 7)
    par = CompressedWeight(tuple(w.shape), sparsity=0.0, bits=8, rank=None)
    stored = par.right_inverse(w)
    assert not par.factored and par.masks()[0].numel() == 0  # dense: no mask stored
    assert torch.equal(par(stored), fake_quantize(w, 8))


@pytest.mark.parametrize("module", ["compresstune.plan", "compresstune.layers", "compresstune.compress",
                                    "compresstune.artifact", "compresstune.ops.prune", "compresstune.ops.quantize",
                                    "compresstune.ops.lowrank", "compresstune.ops.distill", "compresstune"])
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
