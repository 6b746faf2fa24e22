"""Baseline training (studies/training.py), accuracy and batching."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from compresstune.data import Split, iterate_batches
from compresstune.objectives import accuracy
from studies.datasets import load_digits
from studies.training import cache_key, fit, fit_cached


def _blobs(n: int = 200, seed: int = 0) -> Split:
    """Two well-separated Gaussian blobs: any working trainer reaches 100%."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 2, generator=g) * 0.3 + (y.float() * 4 - 2).unsqueeze(1)
    return Split(x, y)


def _linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(2, 2)


# --------------------------------------------------------------------------- batches


def test_iterate_batches_in_order():
    s = Split(torch.arange(10.0).view(10, 1), torch.arange(10))
    batches = list(iterate_batches(s, 4, shuffle=False))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([y for _, y in batches]), torch.arange(10))
    assert all(torch.equal(x.flatten().long(), y) for x, y in batches)


def test_iterate_batches_shuffled_covers_each_row_once_and_is_seeded():
    s = Split(torch.arange(10.0).view(10, 1), torch.arange(10))

    def order(seed):
        gen = torch.Generator().manual_seed(seed)
        return torch.cat([y for _, y in iterate_batches(s, 3, shuffle=True, generator=gen)])

    a, b, c = order(0), order(0), order(1)
    assert sorted(a.tolist()) == list(range(10))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, torch.arange(10))


def test_iterate_batches_drop_last_and_bad_batch_size():
    s = Split(torch.zeros(10, 1), torch.zeros(10, dtype=torch.long))
    assert [len(y) for _, y in iterate_batches(s, 4, shuffle=True, drop_last=True)] == [4, 4]
    with pytest.raises(ValueError, match="batch_size"):
        list(iterate_batches(s, 0, shuffle=False))


# --------------------------------------------------------------------------- accuracy


def test_accuracy_value_and_mode_restored():
    s = Split(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1, 1, 1]))
    model = nn.Sequential(nn.Identity(), nn.Dropout(0.9)).train()
    assert accuracy(model, s, batch_size=3) == 0.75  # dropout off in eval, or this would be random
    assert model.training
    model.eval()
    accuracy(model, s)
    assert not model.training


def test_accuracy_rejects_empty_split():
    empty = Split(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="`split` must hold at least one example"):
        accuracy(nn.Identity(), empty)


# --------------------------------------------------------------------------- fit


def test_fit_learns_and_reports():
    train, val = _blobs(seed=0), _blobs(seed=1)
    model, lines = _linear(), []
    result = fit(model, train, epochs=5, lr=0.05, batch_size=32, val=val, log=lines.append)
    assert result["epochs"] == 5 and result["seconds"] >= 0
    assert result["val_accuracy"] == accuracy(model, val) == 1.0
    assert result["train_loss"] < 0.1
    assert len(lines) == 5 and lines[0].startswith("epoch 1/5 loss") and "val_accuracy 1.0000" in lines[-1]


def test_fit_keep_best_ends_on_the_best_validation_epoch():
    # Too high a learning rate: the validation accuracy moves from epoch to epoch.
    train, val = _blobs(seed=0), _blobs(seed=1)
    noisy = Split(val.x, torch.where(torch.arange(len(val.y)) % 3 == 0, 1 - val.y, val.y))
    model = _linear()
    result = fit(model, train, epochs=6, lr=2.0, batch_size=8, val=noisy, keep_best=True, optimizer="sgd")
    curve = result["val_curve"]
    assert len(curve) == 6
    assert result["best_epoch"] == curve.index(max(curve)) + 1
    assert result["val_accuracy"] == max(curve) == accuracy(model, noisy)
    plain = fit(_linear(), train, epochs=2, val=val)
    assert plain["best_epoch"] == 2 and len(plain["val_curve"]) == 2
    with pytest.raises(ValueError, match="`keep_best` must be True \\(with `val`\\)"):
        fit(_linear(), train, epochs=1, keep_best=True)


def test_fit_is_deterministic_and_leaves_global_rng_alone():
    train = _blobs()
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a, b = _linear(), _linear()
    torch.manual_seed(123)
    fit(a, train, epochs=2, seed=7)
    after = torch.rand(3)
    fit(b, train, epochs=2, seed=7)
    assert torch.equal(before, after)
    assert torch.equal(a.weight, b.weight)
    c = _linear()
    fit(c, train, epochs=2, seed=8)
    assert not torch.equal(a.weight, c.weight)


def test_fit_restores_mode_and_handles_zero_epochs():
    model = _linear().eval()
    w = model.weight.detach().clone()
    result = fit(model, _blobs(), epochs=0, val=_blobs(seed=1))
    assert not model.training and torch.equal(model.weight, w)
    assert result["train_loss"] is None and 0.0 <= result["val_accuracy"] <= 1.0
    fit(model, _blobs(), epochs=1)
    assert not model.training and not torch.equal(model.weight, w)


def test_fit_sgd_cosine_anneals_to_zero():
    seen = []

    def record(optimizer, args, kwargs):
        seen.append((type(optimizer).__name__, optimizer.param_groups[0]["lr"]))

    handle = register_optimizer_step_pre_hook(record)
    try:
        result = fit(_linear(), _blobs(100), epochs=2, batch_size=32, lr=0.1, optimizer="sgd", schedule="cosine")
    finally:
        handle.remove()
    lrs = [lr for name, lr in seen if name == "SGD"]
    assert len(lrs) == len(seen) == 8  # 100 rows: 3 full batches + a remainder of 4, per epoch
    assert lrs[0] == pytest.approx(0.1) and lrs[-1] < 0.01
    assert all(x > y for x, y in zip(lrs, lrs[1:]))
    assert math.isfinite(result["train_loss"])


def test_fit_adam_constant_by_default():
    seen = []
    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: seen.append((type(opt).__name__, opt.param_groups[0]["lr"])))
    try:
        fit(_linear(), _blobs(64), epochs=1, batch_size=32, lr=0.02)
    finally:
        handle.remove()
    assert seen == [("Adam", 0.02), ("Adam", 0.02)]


def test_fit_drops_a_trailing_batch_of_one_for_batchnorm():
    model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    fit(model, _blobs(65), epochs=1, batch_size=32)  # 65 = 2 x 32 + 1 would crash BatchNorm


def test_fit_applies_augment_to_training_batches_only():
    seen = []

    def augment(x, generator):
        seen.append(len(x))
        return x + 0.0 * torch.rand(x.shape, generator=generator)

    fit(_linear(), _blobs(50), epochs=2, batch_size=20, augment=augment, val=_blobs(30, seed=1))
    assert seen == [20, 20, 10, 20, 20, 10]


def test_fit_raises_on_nan_loss():
    bad = Split(torch.full((8, 2), float("nan")), torch.zeros(8, dtype=torch.long))
    with pytest.raises(FloatingPointError, match="loss became nan"):
        fit(_linear(), bad, epochs=1)


@pytest.mark.parametrize("kwargs, name", [
    ({"epochs": -1}, "epochs"),
    ({"epochs": 1.5}, "epochs"),
    ({"batch_size": 0}, "batch_size"),
    ({"lr": 0.0}, "lr"),
    ({"lr": float("nan")}, "lr"),
    ({"weight_decay": -1.0}, "weight_decay"),
    ({"optimizer": "rmsprop"}, "optimizer"),
    ({"schedule": "step"}, "schedule"),
    ({"momentum": 1.0}, "momentum"),
    ({"seed": -3}, "seed"),
])
def test_fit_rejects_bad_arguments(kwargs, name):
    args = {"epochs": 1, **kwargs}
    with pytest.raises(ValueError, match=f"`{name}` must be"):
        fit(_linear(), _blobs(), **args)


def test_fit_rejects_bad_splits_and_frozen_models():
    with pytest.raises(ValueError, match="`train` must be a compresstune.data.Split"):
        fit(_linear(), (torch.zeros(2, 2), torch.zeros(2)), epochs=1)
    frozen = _linear().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        fit(frozen, _blobs(), epochs=1)


# --------------------------------------------------------------------------- cache


def test_cache_key_depends_on_settings_and_data():
    d0, d1 = load_digits(seed=0), load_digits(seed=1)
    k = cache_key("digits", {"epochs": 3}, d0)
    assert k == cache_key("digits", {"epochs": 3}, d0) and len(k) == 12
    assert k != cache_key("digits", {"epochs": 4}, d0)
    assert k != cache_key("digits", {"epochs": 3}, d1)
    with pytest.raises(ValueError, match="JSON-serialisable"):
        cache_key("digits", {"x": object()}, d0)


def test_fit_cached_trains_once_then_loads(tmp_path):
    d = load_digits()

    def make():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    lines = []
    m1, info1 = fit_cached(make, d, cache_dir=tmp_path, name="tiny", epochs=2, log=lines.append)
    m2, info2 = fit_cached(make, d, cache_dir=tmp_path, name="tiny", epochs=2, log=lines.append)
    assert (info1["cached"], info2["cached"]) == (False, True) and info1["path"] == info2["path"]
    assert info2["val_accuracy"] == info1["val_accuracy"]
    assert any(line.startswith("loaded cached baseline") for line in lines)
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert not m2.training
    _, info3 = fit_cached(make, d, cache_dir=tmp_path, name="tiny", epochs=3)
    assert not info3["cached"] and info3["path"] != info1["path"]
    with pytest.raises(ValueError, match="`name`"):
        fit_cached(make, d, cache_dir=tmp_path, name="../escape", epochs=1)
