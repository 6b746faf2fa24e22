"""Tiny models for the space tests: no dataset, built in milliseconds."""

import optuna
import pytest
import torch
from torch import nn

optuna.logging.set_verbosity(optuna.logging.WARNING)


class SmallCNN(nn.Module):
    """conv -> BN -> grouped conv -> conv -> pool -> flatten -> linear -> linear.

    Covers: structured pruning through BN and a flatten, a grouped conv (no
    low-rank, no structured), a layer whose channels feed a grouped conv, and
    the model output (no structured).
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, groups=4), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


class TinyText(nn.Module):
    """embedding -> mean -> linear -> linear, with an attention block."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16, padding_idx=0)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.fc1 = nn.Linear(16, 24)
        self.fc2 = nn.Linear(24, 3)

    def forward(self, x):
        h = self.embed(x)
        h, _ = self.attn(h, h, h, need_weights=False)
        return self.fc2(torch.relu(self.fc1(h.mean(1))))


@pytest.fixture(scope="session")
def small_cnn_class():
    return SmallCNN


@pytest.fixture
def cnn():
    torch.manual_seed(0)
    return SmallCNN().eval()


@pytest.fixture
def text_model():
    torch.manual_seed(0)
    return TinyText().eval()


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4)).eval()


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Tiny matrices: torch's intra-op thread pool costs far more than it saves, and
    # on a busy 2-core machine it made `apply` ~15x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
