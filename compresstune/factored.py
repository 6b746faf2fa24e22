"""The small modules ``squash`` turns a low-rank layer into.

Each holds the two factors as ordinary layers and computes ``x -> second(first(x))``,
so the squashed model runs (and ``torch.export`` traces) two small products instead
of one large one. Each also keeps the interface of the layer it replaces: the same
attributes (``in_features``, ``out_channels``, ``num_embeddings``, ``bias``, ...)
and a read-only ``.weight``, the product of the factors in the original layout,
computed on first use and cached until a factor changes; it is not a parameter and
not in ``state_dict``. Code that reads ``child.weight`` or its dtype (HF ViT's patch
embedding, T5's feed-forward, ``get_input_embeddings().weight``) keeps working.

This module depends on torch only: a pickled squashed model needs it importable,
nothing else of compresstune. For a file that runs with torch alone, save
``torch.export.export(model, args)`` with ``torch.export.save``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FactoredConv", "FactoredEmbedding", "FactoredLinear"]


class _CachedWeight(nn.Module):
    """Base: ``.weight`` is ``self._product()``, cached while the factors are unchanged."""

    def _factors(self) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def _product(self) -> torch.Tensor:
        raise NotImplementedError

    @property
    def weight(self) -> torch.Tensor:
        if torch.compiler.is_compiling():  # never cache a traced (fake) tensor on the module
            return self._product()
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in self._factors())
        cached = self.__dict__.get("_weight_cache")
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, self._product())
            self.__dict__["_weight_cache"] = cached
        return cached[1]

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_weight_cache", None)  # derived; never pickled
        return state


class FactoredLinear(_CachedWeight):
    """``y = x @ (second @ first).T + bias``: a Linear of rank ``rank``.

    Args:
        in_features, out_features, rank: the shapes.
        bias: whether there is a bias (held by ``second``).
        transposed: ``.weight`` in transformers' Conv1D layout ``(in, out)``
            (and ``nf`` set), for the Conv1D layers it replaces.

    Example:
        >>> layer = FactoredLinear(16, 8, rank=2)
        >>> layer(torch.randn(3, 16)).shape, layer.weight.shape
        (torch.Size([3, 8]), torch.Size([8, 16]))
    """

    def __init__(self, in_features: int, out_features: int, rank: int, *, bias: bool = True,
                 transposed: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.transposed = transposed
        if transposed:
            self.nf = out_features
        self.first = nn.Linear(in_features, rank, bias=False)
        self.second = nn.Linear(rank, out_features, bias=bias)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.second.bias

    def _factors(self):
        return (self.first.weight, self.second.weight)

    def _product(self) -> torch.Tensor:
        w = self.second.weight @ self.first.weight
        return w.t() if self.transposed else w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}" + (
            ", transposed=True" if self.transposed else "")


class FactoredConv(_CachedWeight):
    """A convolution of rank ``rank``: ``first`` (the kernel, to ``rank`` channels)
    then ``second`` (a 1x1 convolution to the output channels, with the bias).

    ``first`` is a transposed convolution when the layer replaced was one; then
    ``forward`` takes its ``output_size`` too and ``.weight`` has the transposed
    layout ``(in, out, *kernel)``.

    Example:
        >>> conv = FactoredConv(nn.Conv2d(3, 2, 3, bias=False), nn.Conv2d(2, 8, 1))
        >>> conv.weight.shape, conv(torch.randn(1, 3, 5, 5)).shape
        (torch.Size([8, 3, 3, 3]), torch.Size([1, 8, 3, 3]))
    """

    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__()
        self.first, self.second = first, second
        self.transposed = bool(getattr(first, "transposed", False))
        self.in_channels, self.out_channels, self.rank = first.in_channels, second.out_channels, first.out_channels
        for attr in ("kernel_size", "stride", "padding", "dilation", "output_padding", "groups", "padding_mode"):
            setattr(self, attr, getattr(first, attr))

    @property
    def bias(self) -> torch.Tensor | None:
        return self.second.bias

    def _factors(self):
        return (self.first.weight, self.second.weight)

    def _product(self) -> torch.Tensor:
        a = self.second.weight.reshape(self.out_channels, self.rank)
        if self.transposed:  # first.weight: (in, rank, *k)
            b = self.first.weight.transpose(0, 1).reshape(self.rank, -1)
            w = (a @ b).reshape(self.out_channels, self.in_channels, *self.kernel_size)
            return w.transpose(0, 1)
        b = self.first.weight.reshape(self.rank, -1)
        return (a @ b).reshape(self.out_channels, self.in_channels, *self.kernel_size)

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        h = self.first(x, output_size) if self.transposed else self.first(x)
        return self.second(h)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, rank={self.rank}"


class FactoredEmbedding(_CachedWeight):
    """An embedding of rank ``rank``: ``first`` looks up ``rank``-wide rows, ``second``
    (a ``embedding_dim x rank`` matrix, no bias) widens them.

    Example:
        >>> emb = FactoredEmbedding(100, 16, rank=4)
        >>> emb(torch.tensor([[1, 2]])).shape, emb.weight.shape
        (torch.Size([1, 2, 16]), torch.Size([100, 16]))
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, rank: int, *, padding_idx: int | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.rank = num_embeddings, embedding_dim, rank
        self.first = nn.Embedding(num_embeddings, rank, padding_idx=padding_idx)
        self.second = nn.Linear(rank, embedding_dim, bias=False)
        self.padding_idx = self.first.padding_idx

    def _factors(self):
        return (self.first.weight, self.second.weight)

    def _product(self) -> torch.Tensor:
        return self.first.weight @ self.second.weight.t()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.linear(self.first(tokens), self.second.weight)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, rank={self.rank}"
