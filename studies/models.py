"""Reference model architectures for the studies.

Each model takes exactly what the matching loader in :mod:`studies.datasets`
produces. Models fed uint8 images convert them inside ``forward`` (``x.float() /
255`` then the dataset's mean and std, held as non-persistent buffers, so the
state dict holds only learned tensors). The image models are plain ``nn``
layers without data-dependent control flow, so ``torch.fx.symbolic_trace``
works on them.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DigitsCNN", "LeNet300", "LeNet5", "TextTransformer"]

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
# Per-channel statistics of the CIFAR-10 training images.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class _Normalize(nn.Module):
    """uint8 images in [0, 255] -> float, standardised per channel."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255.0 - self.mean) / self.std


class DigitsCNN(nn.Module):
    """Small CNN for scikit-learn's 8x8 digits (float input in [0, 1]).

    conv(1->16, 3, pad 1) - ReLU - conv(16->32, 3, pad 1) - ReLU - maxpool 2 -
    flatten - Linear(512->64) - ReLU - Linear(64->10).

    Example:
        >>> DigitsCNN()(torch.rand(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x)))))
        return self.fc2(self.relu3(self.fc1(self.flatten(x))))


class LeNet300(nn.Module):
    """LeNet-300-100: the 784-300-100-10 MLP of the pruning literature (266,610 parameters).

    Takes uint8 MNIST images ``(N, 1, 28, 28)``.

    Example:
        >>> LeNet300()(torch.zeros(2, 1, 28, 28, dtype=torch.uint8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.normalize = _Normalize(MNIST_MEAN, MNIST_STD)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(28 * 28, 300)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(300, 100)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.normalize(x))
        return self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(x)))))


class LeNet5(nn.Module):
    """LeNet-5, Caffe variant (431,080 parameters); takes uint8 MNIST images.

    conv1(1->20, 5) - maxpool 2 - conv2(20->50, 5) - maxpool 2 - fc1(800->500) -
    ReLU - fc2(500->10). As in Caffe's example there is no activation after the
    convolutions.

    Example:
        >>> LeNet5()(torch.zeros(2, 1, 28, 28, dtype=torch.uint8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.normalize = _Normalize(MNIST_MEAN, MNIST_STD)
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool2(self.conv2(self.pool1(self.conv1(self.normalize(x)))))
        return self.fc2(self.relu(self.fc1(self.flatten(x))))


class TextTransformer(nn.Module):
    """Small transformer encoder for sentence classification over token ids.

    Token embedding (id 0 is padding) plus a learned positional embedding, a
    ``nn.TransformerEncoder``, a mean over the non-padding positions, and a
    linear head. Takes int64 ids ``(N, L)`` with ``L <= max_len``.

    Args:
        vocab_size: number of token ids (``len(splits.vocab)``).
        d_model: embedding width.
        nhead: attention heads.
        num_layers: encoder layers.
        dim_feedforward: hidden width of each layer's feed-forward block.
        max_len: longest sequence accepted.
        num_classes: output classes.
        dropout: dropout inside the encoder layers.

    Example:
        >>> m = TextTransformer(100, max_len=16).eval()
        >>> m(torch.randint(0, 100, (3, 16))).shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 128,
        nhead: int = 4,
        num_layers: int = 2,
        dim_feedforward: int = 256,
        max_len: int = 64,
        num_classes: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("max_len", max_len), ("num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1; got {value!r}.")
        self.max_len = max_len
        self.embedding = nn.Embedding(vocab_size, d_model, padding_idx=0)
        self.pos_embedding = nn.Parameter(torch.zeros(1, max_len, d_model))
        nn.init.normal_(self.pos_embedding, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d_model, nhead, dim_feedforward=dim_feedforward, dropout=dropout, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > self.max_len:
            raise ValueError(f"input length {x.shape[1]} exceeds `max_len`={self.max_len}.")
        pad = x.eq(0)
        # A row of padding only would mask every key and give NaN; let it attend.
        attend_mask = pad & ~pad.all(dim=1, keepdim=True)
        h = self.embedding(x) + self.pos_embedding[:, : x.shape[1]]
        h = self.encoder(h, src_key_padding_mask=attend_mask)
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        pooled = (h * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)
        return self.head(pooled)
