"""The study modules in studies/: data() and the cached baseline()."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

from compresstune.data import Split, Splits
from studies.models import DigitsCNN, LeNet5, LeNet300, TextTransformer
from compresstune.objectives import accuracy

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"


def _study(name: str):
    """``studies.<name>`` of this checkout (a package: the modules share studies/_common.py)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(f"studies.{name}")


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (see shared/data/README.md)")
    return path


def _subset(d: Splits, n_train: int, n_val: int) -> Splits:
    return Splits(
        Split(d.train.x[:n_train], d.train.y[:n_train]), Split(d.val.x[:n_val], d.val.y[:n_val]),
        d.test, d.num_classes, d.name, d.classes, d.vocab,
    )


@pytest.mark.parametrize("name", ["digits", "mnist", "cifar10", "sst2"])
def test_study_modules_expose_data_and_baseline(name):
    module = _study(name)
    assert callable(module.data) and callable(module.baseline)


# --------------------------------------------------------------------------- digits


def test_digits_baseline_trains_then_loads_from_cache(tmp_path):
    digits = _study("digits")
    d = digits.data()
    lines = []
    model = digits.baseline(data=d, cache_dir=tmp_path, log=lines.append)
    assert isinstance(model, DigitsCNN) and not model.training
    assert accuracy(model, d.val) >= 0.95
    (cache,) = tmp_path.glob("digits-cnn-*.pt")
    stamp = cache.stat().st_mtime_ns
    assert any(line.startswith("trained baseline") for line in lines)
    assert sum(line.startswith("epoch ") for line in lines) == 20

    lines.clear()
    again = digits.baseline(data=d, cache_dir=tmp_path, log=lines.append)
    assert [line for line in lines if not line.startswith("loaded cached baseline")] == []
    assert len(lines) == 1 and cache.stat().st_mtime_ns == stamp
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert not again.training


def test_digits_baseline_cache_names_differ_by_settings_and_data(tmp_path):
    digits = _study("digits")
    digits.baseline(data=digits.data(), cache_dir=tmp_path, epochs=1)
    digits.baseline(data=digits.data(), cache_dir=tmp_path, epochs=1, lr=1e-3)
    digits.baseline(data=digits.data(seed=1), cache_dir=tmp_path, epochs=1)
    assert len(list(tmp_path.glob("digits-cnn-*.pt"))) == 3


def test_digits_baseline_retrains_over_a_corrupt_cache(tmp_path):
    digits = _study("digits")
    d = digits.data()
    digits.baseline(data=d, cache_dir=tmp_path, epochs=1)
    (cache,) = tmp_path.glob("digits-cnn-*.pt")
    cache.write_bytes(b"not a checkpoint")
    lines = []
    model = digits.baseline(data=d, cache_dir=tmp_path, epochs=1, log=lines.append)
    assert any("ignoring unreadable baseline cache" in line for line in lines)
    assert any(line.startswith("trained baseline") for line in lines)
    assert torch.load(cache, weights_only=True)["state_dict"].keys() == model.state_dict().keys()


def test_digits_baseline_rejects_other_data(tmp_path):
    digits = _study("digits")
    tokens = Splits(*(Split(torch.zeros(4, 6, dtype=torch.long), torch.zeros(4, dtype=torch.long)),) * 3, 2, "text")
    with pytest.raises(ValueError, match="`data` must be the digits Splits.*'text' splits"):
        digits.baseline(data=tokens, cache_dir=tmp_path)


# --------------------------------------------------------------------------- MNIST


def test_mnist_missing_path_is_named(tmp_path):
    mnist = _study("mnist")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent")):
        mnist.data(path=tmp_path / "absent")


def test_mnist_relative_path_and_both_architectures(tmp_path, monkeypatch):
    _need(SHARED / "mnist")
    mnist = _study("mnist")
    monkeypatch.chdir(SHARED.parent)
    d = mnist.data(path="data/mnist", val_size=1000)
    assert (len(d.train), len(d.val), len(d.test)) == (59000, 1000, 10000)
    small = _subset(d, 2000, 500)
    for arch, cls in (("lenet300", LeNet300), ("lenet5", LeNet5)):
        model = mnist.baseline(data=small, cache_dir=tmp_path, arch=arch, epochs=1)
        assert isinstance(model, cls) and not model.training
        assert accuracy(model, small.val) > 0.5  # chance is 0.1
        assert len(list(tmp_path.glob(f"mnist-{arch}-*.pt"))) == 1
    with pytest.raises(ValueError, match=r"`arch` must be one of \['lenet300', 'lenet5'\]; got 'lenet6'"):
        mnist.baseline(data=small, cache_dir=tmp_path, arch="lenet6")


# --------------------------------------------------------------------------- CIFAR-10


def test_cifar_crop_flip():
    cifar10 = _study("cifar10")
    x = torch.full((8, 3, 32, 32), 7, dtype=torch.uint8)
    x[:, :, :, :16] = 9  # left half differs from right half, so flips are visible
    a = cifar10.crop_flip(x, torch.Generator().manual_seed(0))
    b = cifar10.crop_flip(x, torch.Generator().manual_seed(0))
    c = cifar10.crop_flip(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) <= {0, 7, 9}
    assert ((a != 0).flatten(1).sum(1) >= 3 * 28 * 28).all()  # shifted by at most 4 each way
    nines_left = (a[:, 0, 16, :16] == 9).sum(1) > (a[:, 0, 16, 16:] == 9).sum(1)
    assert 0 < int(nines_left.sum()) < 8  # some images flipped, some not


def test_cifar_baseline_on_a_tiny_set(tmp_path):
    cifar10 = _study("cifar10")
    g = torch.Generator().manual_seed(0)
    part = lambda n: Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),  # noqa: E731
                           torch.arange(n) % 10)
    d = Splits(part(20), part(10), part(10), 10, "cifar10")
    lines = []
    model = cifar10.baseline(data=d, cache_dir=tmp_path, epochs=1, batch_size=8, log=lines.append, checkpoint=None)
    assert type(model).__name__ == "CifarResNet" and len(model.layer1) == 3 and not model.training
    assert lines[0].startswith("epoch 1/1") and len(list(tmp_path.glob("cifar10-resnet20-*.pt"))) == 1
    cifar10.baseline(data=d, cache_dir=tmp_path, epochs=1, batch_size=8, augment=False)
    assert len(list(tmp_path.glob("cifar10-resnet20-*.pt"))) == 2


def test_cifar_missing_archive_is_named(tmp_path):
    cifar10 = _study("cifar10")
    with pytest.raises(FileNotFoundError, match="no-such.tar.gz"):
        cifar10.data(path=tmp_path / "no-such.tar.gz", cache_dir=None)


# --------------------------------------------------------------------------- SST-2


def _tiny_sst2(folder: Path) -> Path:
    folder.mkdir()
    rows = ["a good , fun film\t1", "a dull , bad film\t0", "good good\t1", "bad bad\t0"] * 3
    for name, n in (("train.tsv", 12), ("dev.tsv", 4), ("test.tsv", 2)):
        (folder / name).write_text("sentence\tlabel\n" + "\n".join(rows[:n]) + "\n")
    return folder


def test_sst2_data_maps_files_to_splits_and_baseline_uses_vocab(tmp_path):
    sst2 = _study("sst2")
    d = sst2.data(path=_tiny_sst2(tmp_path / "sst2"), max_len=8)
    assert d.name == "sst2" and (len(d.train), len(d.val), len(d.test)) == (12, 4, 2)
    model = sst2.baseline(data=d, cache_dir=tmp_path / "cache", d_model=16, nhead=2, dim_feedforward=32, epochs=1)
    assert isinstance(model, TextTransformer) and not model.training
    assert model.embedding.num_embeddings == len(d.vocab) and model.max_len == 8
    assert model(d.test.x).shape == (2, 2)
    trimmed = sst2.trim_padding(d.train.x)
    assert trimmed.shape == (12, 5) and torch.equal(trimmed, d.train.x[:, :5])
    assert torch.allclose(model(trimmed), model(d.train.x), atol=1e-5)  # training on trimmed batches is exact
    assert sst2.trim_padding(torch.zeros(2, 8, dtype=torch.long)).shape == (2, 1)


def test_sst2_missing_file_is_named(tmp_path):
    sst2 = _study("sst2")
    folder = _tiny_sst2(tmp_path / "sst2")
    (folder / "dev.tsv").unlink()
    with pytest.raises(FileNotFoundError, match="dev.tsv"):
        sst2.data(path=folder)


def test_sst2_real_files_are_split_as_documented():
    sst2 = _study("sst2")
    d = sst2.data(path=_need(SHARED / "sst2"))
    assert (len(d.train), len(d.val), len(d.test)) == (60614, 6735, 872)


def test_sst2_baseline_rejects_image_data(tmp_path):
    sst2 = _study("sst2")
    with pytest.raises(ValueError, match="token-id Splits"):
        sst2.baseline(data=_study("digits").data(), cache_dir=tmp_path)
