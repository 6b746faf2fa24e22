"""Tiny versions of the CNN families whose channels structured pruning must keep aligned:
ResNet (1x1 downsample and option-A pad shortcuts), MobileNetV2's inverted residual, DenseNet's
concat and ConvNeXt's layer scale. Each writes its forward the way its reference code does."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block: a 1x1 conv + BN shortcut when the shape changes."""

    def __init__(self, inp: int, out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inp, out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out)
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or inp != out:
            self.downsample = nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return F.relu(out)


class TinyResNet(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = BasicBlock(8, 8)
        self.layer2 = BasicBlock(8, 16, stride=2)
        self.layer3 = BasicBlock(16, 16)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class LambdaLayer(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class OptionABlock(nn.Module):
    """The CIFAR ResNet block of He et al. (option A): the shortcut subsamples and zero-pads channels."""

    def __init__(self, inp: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inp, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or inp != planes:
            pad = planes // 4
            self.shortcut = LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad), "constant", 0))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class OptionAResNet(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(OptionABlock(8, 8), OptionABlock(8, 8))
        self.layer2 = nn.Sequential(OptionABlock(8, 16, 2), OptionABlock(16, 16))
        self.linear = nn.Linear(16, classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer2(self.layer1(out))
        out = F.avg_pool2d(out, out.size()[3])
        return self.linear(out.view(out.size(0), -1))


class BNAct(nn.BatchNorm2d):
    """BatchNorm with its activation, as MobileNet/EfficientNet code bases write it."""

    def forward(self, x):
        return F.relu6(super().forward(x))


class InvertedResidual(nn.Module):
    """MobileNetV2: 1x1 expand -> BN+act -> 3x3 depthwise -> BN+act -> 1x1 project -> BN (+ input)."""

    def __init__(self, inp: int, out: int, expand: int = 4, stride: int = 1) -> None:
        super().__init__()
        hidden = inp * expand
        self.use_res = stride == 1 and inp == out
        self.expand = nn.Conv2d(inp, hidden, 1, bias=False)
        self.bn1 = BNAct(hidden)
        self.dw = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.bn2 = BNAct(hidden)
        self.project = nn.Conv2d(hidden, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)

    def forward(self, x):
        out = self.bn3(self.project(self.bn2(self.dw(self.bn1(self.expand(x))))))
        return x + out if self.use_res else out


class TinyMobileNet(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), BNAct(8))
        self.blocks = nn.Sequential(InvertedResidual(8, 8), InvertedResidual(8, 12, stride=2), InvertedResidual(12, 12))
        self.head = nn.Conv2d(12, 32, 1)
        self.classifier = nn.Linear(32, classes)

    def forward(self, x):
        x = F.relu(self.head(self.blocks(self.stem(x))))
        return self.classifier(x.mean([2, 3]))


class DenseLayer(nn.Module):
    def __init__(self, inp: int, growth: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(inp)
        self.conv = nn.Conv2d(inp, growth, 3, 1, 1, bias=False)

    def forward(self, x):
        return torch.cat([x, self.conv(F.relu(self.norm(x)))], 1)


class TinyDenseNet(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.block = nn.Sequential(DenseLayer(8, 6), DenseLayer(14, 6), DenseLayer(20, 6))
        self.norm = nn.BatchNorm2d(26)
        self.transition = nn.Conv2d(26, 12, 1, bias=False)
        self.fc = nn.Linear(12, classes)

    def forward(self, x):
        x = self.transition(F.relu(self.norm(self.block(self.stem(x)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ConvNeXtBlock(nn.Module):
    """ConvNeXt: 7x7 depthwise -> channels last -> LayerNorm -> MLP -> layer scale -> back -> + input."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, x):
        h = self.dwconv(x).permute(0, 2, 3, 1)
        h = self.pwconv2(self.act(self.pwconv1(self.norm(h))))
        h = self.gamma * h
        return x + h.permute(0, 3, 1, 2)


class TinyConvNeXt(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 2, 2)
        self.blocks = nn.Sequential(ConvNeXtBlock(16), ConvNeXtBlock(16))
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(self.norm(x.mean([-2, -1])))
