"""The paper's CIFAR ResNet family loads the published weights and scores what
their README says on the JPEG copy of CIFAR-10."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
PUBLISHED = {20: SHARED / "pretrained" / "resnet20-12fca82f.th", 56: SHARED / "pretrained" / "resnet56-4bfd9763.th"}


def _module(name: str):
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(name)


@pytest.mark.parametrize("depth, params", [(20, 269_722), (32, 464_154), (44, 658_586), (56, 853_018)])
def test_family_has_the_papers_parameter_counts(depth, params):
    # The paper (He et al. 2016, Table 6): 0.27M, 0.46M, 0.66M, 0.85M.
    rc = _module("studies.resnet_cifar")
    model = rc.cifar_resnet(depth)
    assert sum(p.numel() for p in model.parameters()) == params
    assert model(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape == (2, 10)
    assert not any("normalize" in k for k in model.state_dict())  # normalisation is not a learned tensor


def test_option_a_shortcut_subsamples_and_pads_both_sides():
    rc = _module("studies.resnet_cifar")
    x = torch.randn(1, 16, 8, 8)
    out = rc.PadShortcut(8)(x)
    assert out.shape == (1, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0


@pytest.mark.parametrize("bad", [21, 0, "20", True, 2])
def test_bad_depth_is_refused_with_the_rule(bad):
    rc = _module("studies.resnet_cifar")
    with pytest.raises(ValueError, match=r"`depth` must be an integer 6n \+ 2"):
        rc.CifarResNet(bad)


def test_missing_or_foreign_file_is_a_clear_error(tmp_path):
    rc = _module("studies.resnet_cifar")
    with pytest.raises(FileNotFoundError, match="published CIFAR ResNet weights not found"):
        rc.load_published(tmp_path / "absent.th")
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.th")
    with pytest.raises(ValueError, match="holds no CIFAR ResNet state dict"):
        rc.load_published(tmp_path / "other.th")


@pytest.mark.parametrize("depth", [20, 56])
def test_published_weights_load_and_classify(depth):
    path = PUBLISHED[depth]
    if not path.is_file():
        pytest.skip(f"{path} not found (see shared/data/README.md)")
    rc = _module("studies.resnet_cifar")
    model = rc.load_published(path)
    assert len(model.layer1) == (depth - 2) // 6
    # One batch of real test images: the README measures 81.0% / 83.2% on the whole
    # JPEG test split; 300 images give a standard error of ~2.3 points.
    data = _module("studies.cifar10").data(cache_dir=ROOT / ".cache" / "smoke-data", val_size=100, test_size=300)
    with torch.no_grad():
        acc = (model(data.test.x).argmax(1) == data.test.y).float().mean().item()
    assert acc > 0.72, acc
