"""The CIFAR ResNet family of He et al. (2016), depth 20/32/44/56, with option-A
shortcuts: the architecture of the published weights in ``../shared/data/pretrained/``.

Option A: a block that changes the channel count or stride has a parameter-free
shortcut that subsamples the input (``x[:, :, ::2, ::2]``) and zero-pads
``planes // 4`` channels on each side. Layer names follow the published state
dicts (``conv1``/``bn1`` stem, ``layer1..3``, a head named ``linear``), so
:func:`load_published` loads them after stripping their ``module.`` prefix.

The models take uint8 CIFAR images ``(N, 3, 32, 32)`` and normalise inside
``forward`` with the ImageNet mean and std the published weights were trained
with (non-persistent buffers, so the state dict holds only learned tensors).

Example:
    >>> m = cifar_resnet(20)
    >>> m(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape
    torch.Size([2, 10])
    >>> sum(p.numel() for p in m.parameters())
    269722
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DEPTHS", "CifarResNet", "cifar_resnet", "load_published"]

DEPTHS = (20, 32, 44, 56)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class _Normalize(nn.Module):
    """uint8 images in [0, 255] -> float, standardised per channel."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255.0 - self.mean) / self.std


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad ``pad`` channels on each side."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class Block(nn.Module):
    """Two 3x3 conv-BN layers and an identity or option-A shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        changes = stride != 1 or in_planes != planes
        self.shortcut: nn.Module = PadShortcut(planes // 4) if changes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet-``depth`` (``depth = 6n + 2``): 3 stages of ``n`` blocks, 16/32/64 channels.

    Args:
        depth: 20, 32, 44 or 56 (any ``6n + 2`` works).
        num_classes: outputs of the ``linear`` head.

    Example:
        >>> CifarResNet(56)(torch.zeros(1, 3, 32, 32, dtype=torch.uint8)).shape
        torch.Size([1, 10])
    """

    def __init__(self, depth: int = 20, num_classes: int = 10) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"`depth` must be an integer 6n + 2 >= 8 (e.g. {list(DEPTHS)}); got {depth!r}.")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"`num_classes` must be an integer >= 1; got {num_classes!r}.")
        n = (depth - 2) // 6
        self.normalize = _Normalize(IMAGENET_MEAN, IMAGENET_STD)
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = _stage(16, 16, n, stride=1)
        self.layer2 = _stage(16, 32, n, stride=2)
        self.layer3 = _stage(32, 64, n, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(self.normalize(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.flatten(self.pool(x)))


def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    first = Block(in_planes, planes, stride)
    return nn.Sequential(first, *(Block(planes, planes) for _ in range(blocks - 1)))


def cifar_resnet(depth: int = 20, num_classes: int = 10) -> CifarResNet:
    """A randomly initialised :class:`CifarResNet` (see there).

    Example:
        >>> type(cifar_resnet(32)).__name__
        'CifarResNet'
    """
    return CifarResNet(depth, num_classes)


def load_published(path: str | Path, depth: int | None = None) -> CifarResNet:
    """A :class:`CifarResNet` holding published weights (e.g. ``resnet20-12fca82f.th``).

    The file is a dict with ``state_dict`` (keys prefixed ``module.``, saved from
    ``DataParallel`` on CUDA) and ``best_prec1``; it is read on the CPU with
    ``weights_only=True``.

    Args:
        path: the ``.th`` file.
        depth: the network depth; None reads it from the number of blocks in the file.

    Returns:
        The model in eval mode.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file holds no ResNet state dict, or not one of ``depth``.

    Example:
        >>> m = load_published("../shared/data/pretrained/resnet20-12fca82f.th")  # doctest: +SKIP
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"published CIFAR ResNet weights not found: {path}")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    state = saved.get("state_dict", saved) if isinstance(saved, dict) else None
    if not isinstance(state, dict) or not any(k.endswith("linear.weight") for k in state):
        raise ValueError(f"{path} holds no CIFAR ResNet state dict (expected `state_dict` with a `linear` head).")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    blocks = len({k.split(".")[1] for k in state if k.startswith("layer1.")})
    depth = 6 * blocks + 2 if depth is None else depth
    model = CifarResNet(depth, num_classes=state["linear.weight"].shape[0])
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path} does not hold a ResNet-{depth}: {exc}") from None
    return model.eval()
