"""Shared tiny models for the core tests. Everything here runs in milliseconds."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

# The tests use tiny tensors: one intra-op thread avoids OpenMP spin-waiting on a busy 2-core machine.
torch.set_num_threads(1)

# The example studies (studies/: models, loaders, baseline training) are the
# repository's, not the installed package's; appended so the package always wins.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.append(_ROOT)


def run(model: nn.Module, *inputs) -> torch.Tensor:
    """Outputs in eval mode without gradients."""
    model.eval()
    with torch.no_grad():
        return model(*inputs)


class EveryKind(nn.Module):
    """One of every supported layer kind: Linear, Conv1d, Conv2d, grouped and
    depthwise convs, Embedding, a packed and a separate-projection
    MultiheadAttention, a TransformerEncoderLayer, and a tied output head."""

    vocab, seq, img = 50, 7, 4

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(self.vocab, 16)
        self.c1 = nn.Conv1d(16, 32, 3, padding=1)
        self.dw = nn.Conv1d(32, 32, 3, padding=1, groups=32)
        self.c2 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)
        self.gc = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.enc = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0)
        self.xattn = nn.MultiheadAttention(32, 4, kdim=16, vdim=16, batch_first=True)
        self.fc1 = nn.Linear(32, 24)
        self.fc2 = nn.Linear(24 + 8 * 4 * 4, 10)
        self.to_vocab = nn.Linear(32, 16)
        self.head = nn.Linear(16, self.vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, tok, img):
        e = self.emb(tok)
        h = torch.relu(self.dw(self.c1(e.transpose(1, 2)))).transpose(1, 2)
        h = self.enc(h)
        h = h + self.xattn(h, e, e, need_weights=False)[0]
        logits = self.head(self.to_vocab(h)).mean(1)
        h = torch.relu(self.fc1(h.mean(1)))
        g = self.gc(torch.relu(self.c3(torch.relu(self.bn(self.c2(img))))))
        return torch.cat([self.fc2(torch.cat([h, g.flatten(1)], 1)), logits], 1)

    @classmethod
    def inputs(cls, n: int = 3, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        return torch.randint(0, cls.vocab, (n, cls.seq), generator=gen), torch.randn(n, 1, cls.img, cls.img, generator=gen)


class SmallCNN(nn.Module):
    """Structured-prunable everywhere but the last layer: conv-BN-ReLU-conv-pool-flatten-Linear-Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(6 * 2 * 2, 12)
        self.fc2 = nn.Linear(12, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(x.size(0), -1)
        return self.fc2(torch.relu(self.fc1(x)))

    @staticmethod
    def inputs(n: int = 4, seed: int = 0):
        return (torch.randn(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed)),)


class TiedLM(nn.Module):
    """Embedding -> Linear -> output Linear whose weight IS the embedding's."""

    def __init__(self, vocab: int = 40, dim: int = 12) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mid = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, tok):
        return self.out(torch.tanh(self.mid(self.emb(tok))))

    @staticmethod
    def inputs(n: int = 3, seed: int = 0):
        return (torch.randint(0, 40, (n, 5), generator=torch.Generator().manual_seed(seed)),)


# -- models where structured pruning must be refused ------------------------------------------------

class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x) + x))


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(8, 2)

    def forward(self, x):
        return self.c(torch.cat([self.a(x), self.b(x)], 1))


class IntoAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        h = self.proj(x)
        return self.out(self.attn(h, h, h)[0])


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        if h.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            h = -h
        return self.b(h)


class ConvIntoLinearWithoutFlatten(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv1d(4, 8, 1), nn.Linear(8, 3)

    def forward(self, x):  # (N, 4, 8) -> (N, 8, 8): fc acts on the length, not the channels
        return self.fc(torch.relu(self.conv(x)))


class SharedConsumer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x, y):
        return self.head(self.a(x)) * self.head(y)


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


def has_parametrizations(model: nn.Module) -> bool:
    return any(parametrize.is_parametrized(m) for m in model.modules())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
