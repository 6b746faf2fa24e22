"""Channel groups: which output channels structured pruning must remove together.

A residual sum ``conv_a(x) + conv_b(y)`` makes channel ``j`` of both convs one
channel of the sum: pruning one without the other would misalign the sum. A
concat places its inputs' channels side by side, an option-A shortcut
(``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))``) places ``x``'s channels at
offset ``p`` of the sum's, a depthwise convolution, a normalisation layer or a
per-channel scale (ConvNeXt's layer scale) keeps its input's channels. This
module walks the torch.fx graph once, following every channel through these
ops, and ties the channels that must stay aligned into :class:`ChannelGroup`\\ s.

A group is a line of ``size`` channel positions. Every tensor on the way is a
run of :class:`Segment`\\ s, each a slice of one *space* (the outputs of one
layer, or the zeros a pad inserts) placed at an offset of its group. Pruning a
group by a fraction removes that fraction of every *region* (a run of positions
covered by the same spaces), so every shape after pruning depends on the plan
alone, and keeps the positions with the largest importance: the L2 norm of each
member layer's output channel, divided by that layer's mean, averaged over the
members at that position. The same positions go out everywhere: member layers
lose output channels, norms and scales lose entries, readers (the next
Linear/Conv) lose input columns, and channel pads are rewritten to their new
widths.

Anything the walk cannot prove safe (the model output, attention, a reshape
that mixes channels, a module called twice, an unknown op) refuses the whole
group, with the reason.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["ChannelGroup", "Member", "PadEdit", "Segment", "analyse"]


@dataclass(frozen=True)
class Segment:
    """Channels ``[start, start + length)`` of space ``space`` at ``position`` of a tensor's channel dim."""

    position: int
    space: int
    start: int
    length: int


@dataclass(frozen=True)
class Member:
    """Something a group's pruning shrinks.

    ``role``: ``"layer"`` (a Linear/Conv producing the channels: output rows),
    ``"depthwise"`` (a depthwise conv: its rows follow its input channels),
    ``"norm"`` (BatchNorm / LayerNorm entries), ``"param"`` (a per-channel
    parameter such as a layer scale, along ``dim``), ``"reader"`` (a Linear/Conv
    reading the channels: input columns; ``channels_last`` says a flatten
    interleaved them). ``width``: the member's channel count (a reader's input
    channels before any flatten); ``segments`` place this group's part of them.
    """

    name: str
    role: str
    segments: tuple[Segment, ...]
    width: int = 0
    dim: int = 0
    channels_last: bool = False


@dataclass(frozen=True)
class PadEdit:
    """A constant ``F.pad`` on the channel dim whose widths follow the group: ``args[1][index]``
    and ``args[1][index + 1]`` become the kept sizes of the ``low`` and ``high`` zero spaces."""

    node: str
    index: int
    low: int | None
    high: int | None


@dataclass(frozen=True)
class ChannelGroup:
    """Output channels that structured pruning removes together.

    Attributes:
        name: the FQN of its first layer (in model order).
        size: channel positions in the group.
        layers: plan layers whose output channels are the group's (Linear/Conv and depthwise convs).
        spaces: space id -> (offset in the group, number of channels).
        members: everything pruning shrinks.
        pads: channel pads rewritten to the new widths.
    """

    name: str
    size: int
    layers: tuple[str, ...]
    spaces: Mapping[int, tuple[int, int]]
    members: tuple[Member, ...] = ()
    pads: tuple[PadEdit, ...] = ()

    def regions(self) -> list[tuple[int, int]]:
        """``(start, length)`` of each run of positions covered by the same spaces."""
        cuts = {0, self.size}
        for offset, size in self.spaces.values():
            cuts.update((offset, offset + size))
        edges = sorted(cuts)
        return [(a, b - a) for a, b in itertools.pairwise(edges) if b > a]

    def kept_per_region(self, fraction: float) -> list[int]:
        """Positions kept in each region when ``fraction`` of the group is pruned (at least one each)."""
        return [max(1, length - round(fraction * length)) for _, length in self.regions()]

    def kept_size(self, fraction: float) -> int:
        return sum(self.kept_per_region(fraction))

    def kept_in(self, space: int, start: int, length: int, fraction: float) -> int:
        """How many of channels ``[start, start + length)`` of ``space`` a pruning by ``fraction`` keeps."""
        offset = self.spaces[space][0] + start
        kept = 0
        for (r_start, r_len), r_kept in zip(self.regions(), self.kept_per_region(fraction)):
            if offset <= r_start and r_start + r_len <= offset + length:
                kept += r_kept
        return kept

    def member_width(self, member: Member, fraction: float) -> tuple[int, int]:
        """(channels before, channels after) of ``member``'s segments in this group."""
        before = sum(s.length for s in member.segments)
        after = sum(self.kept_in(s.space, s.start, s.length, fraction) for s in member.segments)
        return before, after

    def keep(self, fraction: float, importance: torch.Tensor) -> torch.Tensor:
        """Sorted positions kept: in each region, the ones with the largest ``importance``."""
        kept = []
        for (start, length), n_keep in zip(self.regions(), self.kept_per_region(fraction)):
            top = torch.topk(importance[start:start + length], n_keep, sorted=False).indices
            kept.append(top + start)
        return torch.sort(torch.cat(kept)).values

    def removed(self, member: Member, positions: torch.Tensor) -> list[int]:
        """The member's own channel indices that go when the group keeps ``positions``."""
        wanted = set(positions.tolist())
        out = []
        for seg in member.segments:
            offset = self.spaces[seg.space][0] + seg.start
            out += [seg.position + j for j in range(seg.length) if offset + j not in wanted]
        return out

    def importance(self, weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Per position: the L2 norm of each member layer's output channel there, over that layer's
        mean norm, averaged over the member layers at the position. ``weights``: module FQN -> weight
        with output channels first."""
        total = torch.zeros(self.size)
        count = torch.zeros(self.size)
        for member in self.members:
            if member.role not in ("layer", "depthwise"):
                continue
            w = weights[member.name].detach().float().cpu()
            norms = w.reshape(w.shape[0], -1).norm(dim=1)
            norms = norms / norms.mean().clamp_min(1e-12)
            for seg in member.segments:
                at = self.spaces[seg.space][0] + seg.start
                total[at:at + seg.length] += norms[seg.position:seg.position + seg.length]
                count[at:at + seg.length] += 1
        return total / count.clamp_min(1)


# -- the walk over the torch.fx graph ----------------------------------------------------------------

_BINARY = {operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.imul,
           torch.add, torch.sub, torch.mul, torch.div}
_BINARY_METHODS = {"add", "sub", "mul", "div", "add_", "mul_"}
_SUMS = {operator.add, operator.iadd, torch.add, operator.sub, torch.sub, "add", "sub", "add_"}
_PASS_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "float", "gelu", "silu"}
_FLATTEN_METHODS = {"flatten", "view", "reshape"}
_REDUCE = {torch.mean, torch.sum, torch.amax, "mean", "sum", "amax"}
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NDIM = {nn.Conv1d: 3, nn.Conv2d: 4, nn.Conv3d: 5}


@dataclass
class _Layout:
    """How a tensor's channel dim is made: segments, which dim holds them (``axis``; -1 with
    ``ndim`` None: the last, of unknown rank) and whether a flatten folded them into features."""

    segments: tuple[Segment, ...]
    axis: int
    ndim: int | None
    flat: bool = False

    @property
    def width(self) -> int:
        return sum(s.length for s in self.segments)

    @property
    def spaces(self) -> set[int]:
        return {s.space for s in self.segments}

    def at_dim1(self) -> bool:
        return not self.flat and (self.axis == 1 or (self.ndim == 2 and self.axis == -1))

    def at_last(self) -> bool:
        return self.flat or self.axis == -1 or (self.ndim is not None and self.axis == self.ndim - 1)

    def moved(self, **changes) -> _Layout:
        data = {"segments": self.segments, "axis": self.axis, "ndim": self.ndim, "flat": self.flat}
        data.update(changes)
        return _Layout(**data)


class _Refuse(Exception):
    """The channels reaching this node cannot be followed; the message is the reason."""


@dataclass
class _Walk:
    modules: dict[str, nn.Module]
    producers: dict[str, str]  # module FQN -> plan layer FQN, for layers that may produce a group
    depthwise: dict[str, str]  # module FQN -> plan layer FQN of depthwise convs
    calls: dict[str, int]  # module FQN -> times the graph calls it
    tied: set[str]
    params: dict[str, torch.Tensor]
    sizes: list[int] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    offset: list[int] = field(default_factory=list)
    origin: dict[int, str] = field(default_factory=dict)  # space -> layer FQN that produces it
    refused: dict[int, str] = field(default_factory=dict)
    members: list[Member] = field(default_factory=list)
    pads: list[tuple[str, int, int | None, int | None]] = field(default_factory=list)

    # -- spaces, joined with offsets (union-find) --
    def new_space(self, size: int, origin: str | None = None) -> int:
        self.sizes.append(size)
        self.parent.append(len(self.parent))
        self.offset.append(0)
        if origin is not None:
            self.origin[len(self.sizes) - 1] = origin
        return len(self.sizes) - 1

    def find(self, s: int) -> tuple[int, int]:
        """(root, position of channel 0 of ``s`` in the root's coordinates)."""
        off = 0
        while self.parent[s] != s:
            off += self.offset[s]
            s = self.parent[s]
        return s, off

    def join(self, a: int, b: int, shift: int) -> None:
        """Channel ``j`` of ``a`` is channel ``j + shift`` of ``b``."""
        ra, oa = self.find(a)
        rb, ob = self.find(b)
        if ra == rb:
            if oa != shift + ob:
                self.refuse({a, b}, "a residual sum aligns its channels with themselves at two offsets")
            return
        self.parent[ra] = rb
        self.offset[ra] = shift + ob - oa

    def refuse(self, spaces, reason: str) -> None:
        for s in spaces:
            self.refused.setdefault(s, reason)

    # -- the walk --
    def run(self, graph) -> None:
        layouts: dict[Any, _Layout | None] = {}
        for node in graph.nodes:
            inputs = [a for a in node.all_input_nodes if layouts.get(a) is not None]
            try:
                layouts[node] = self.step(node, layouts)
            except _Refuse as exc:
                self.refuse(set().union(*(layouts[a].spaces for a in inputs)) if inputs else set(), str(exc))
                layouts[node] = None

    def step(self, node, layouts) -> _Layout | None:
        known = {a: layouts[a] for a in node.all_input_nodes if layouts.get(a) is not None}
        if node.op == "call_module":
            return self.module_step(node, known)
        if node.op == "output":
            if known:
                raise _Refuse("its channels are the model output")
            return None
        if node.op in ("placeholder", "get_attr"):
            return None
        if not known:
            return None
        return self.function_step(node, known, layouts)

    def module_step(self, node, known) -> _Layout | None:
        name, mod = node.target, self.modules[node.target]
        layout = next(iter(known.values()), None)
        if len(known) > 1:
            raise _Refuse(f"its channels feed {name!r} ({type(mod).__name__}) with more than one input")
        if name in self.producers or name in self.depthwise:
            return self.layer_step(node, name, mod, layout)
        if layout is None:
            return None
        if name in self.tied:
            raise _Refuse(f"its channels feed {name!r}, whose weight is tied")
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and layout.at_dim1():
            return self.member(name, "norm", layout)
        if isinstance(mod, nn.BatchNorm1d) and not layout.flat and layout.axis == -1 and layout.ndim is None:
            return self.member(name, "norm", layout.moved(ndim=2))  # a Linear's (N, C) output: BatchNorm1d runs on 2-D
        if isinstance(mod, nn.LayerNorm) and layout.at_last() and not layout.flat \
                and tuple(mod.normalized_shape) == (layout.width,):
            return self.member(name, "norm", layout)
        if isinstance(mod, _PASS_MODULES) or (isinstance(mod, _POOL_MODULES) and layout.at_dim1()):
            return layout
        if isinstance(mod, nn.Flatten) and mod.start_dim == 1 and layout.at_dim1():
            return layout.moved(flat=True)
        raise _Refuse(f"its channels feed {name!r} ({type(mod).__name__})")

    def member(self, name: str, role: str, layout: _Layout, **extra) -> _Layout:
        if self.calls.get(name, 0) > 1:
            raise _Refuse(f"its channels feed {name!r}, which is called more than once")
        self.members.append(Member(name, role, layout.segments, width=layout.width, **extra))
        return layout

    def layer_step(self, node, name: str, mod: nn.Module, layout: _Layout | None) -> _Layout | None:
        if layout is not None and name not in self.depthwise:
            try:
                self.read(name, mod, layout)
            except _Refuse as exc:  # the input's group is refused; this layer's own channels may still go
                self.refuse(layout.spaces, str(exc))
        if name in self.depthwise:
            if layout is None:
                return None
            if not layout.at_dim1() or layout.width != mod.in_channels:
                raise _Refuse(f"its channels feed the depthwise convolution {name!r} in an unexpected layout")
            return self.member(name, "depthwise", layout)
        if self.calls.get(name, 0) > 1:
            return None
        rows = mod.weight.shape[0]
        space = self.new_space(rows, origin=self.producers[name])
        self.members.append(Member(name, "layer", (Segment(0, space, 0, rows),), width=rows))
        if isinstance(mod, nn.Linear):
            ndim = None if layout is None else (2 if layout.flat else layout.ndim)
            return _Layout((Segment(0, space, 0, rows),), axis=-1, ndim=ndim)
        return _Layout((Segment(0, space, 0, rows),), axis=1, ndim=_ndim(mod))

    def read(self, name: str, mod: nn.Module, layout: _Layout) -> None:
        """``mod`` takes the channels as its input columns."""
        if name in self.tied:
            raise _Refuse(f"its channels feed {name!r}, whose weight is tied")
        if self.calls.get(name, 0) > 1:
            raise _Refuse(f"its channels feed {name!r}, which is called more than once")
        if isinstance(mod, nn.Linear):
            if not layout.at_last():
                raise _Refuse(f"its channels (dim 1) feed Linear {name!r}, which acts on the last dim")
            if mod.in_features % layout.width:
                raise _Refuse(f"Linear {name!r} takes {mod.in_features} inputs, not a multiple of its {layout.width} channels")
            channels_last = layout.flat and layout.axis != 1
            self.members.append(Member(name, "reader", layout.segments, width=layout.width, channels_last=channels_last))
            return
        if isinstance(mod, _CONVS):
            if not layout.at_dim1():
                raise _Refuse(f"its channels (last dim) feed Conv {name!r}, which acts on dim 1")
            if mod.groups > 1:
                raise _Refuse(f"its channels feed the grouped convolution {name!r} (groups={mod.groups})")
            self.members.append(Member(name, "reader", layout.segments, width=layout.width))
            return
        raise _Refuse(f"its channels feed {name!r} ({type(mod).__name__}), which structured pruning cannot shrink")

    def function_step(self, node, known, layouts) -> _Layout | None:
        target = node.target
        first = known.get(node.args[0]) if node.args and isinstance(node.args[0], torch.fx.Node) else None
        if target in _PASS_FUNCTIONS or target in _PASS_METHODS:
            return self.only(node, known)
        if target in _POOL_FUNCTIONS:
            layout = self.only(node, known)
            if layout.at_dim1():
                return layout
            raise _Refuse(f"its channels feed {target.__name__} over the channel dim")
        if target in _BINARY or (node.op == "call_method" and target in _BINARY_METHODS):
            return self.binary(node, layouts)
        if target is torch.cat:
            return self.concat(node, layouts)
        if target is torch.nn.functional.pad:
            return self.pad(node, self.only(node, known))
        if target is operator.getitem:
            return self.getitem(node, self.only(node, known))
        if target == "permute" or target is torch.permute:
            return self.permute(node, self.only(node, known))
        if target in _REDUCE:
            return self.reduce(node, self.only(node, known))
        if first is not None and _reads_other_dims(node, first):
            return None
        if (target is torch.flatten or target in _FLATTEN_METHODS) and first is not None and _flatten_from_one(node) \
                and (first.at_dim1() or first.at_last()):
            return first.moved(flat=True)
        what = {torch.cat: "a concat"}.get(target, getattr(target, "__name__", str(target)))
        raise _Refuse(f"its channels feed {'the tensor method ' + repr(target) if node.op == 'call_method' else what}")

    def only(self, node, known) -> _Layout:
        if len(known) != 1 or node.args[0] not in known:
            raise _Refuse(f"its channels feed {getattr(node.target, '__name__', node.target)} with another tensor")
        return known[node.args[0]]

    def binary(self, node, layouts) -> _Layout:
        args = list(node.args[:2])
        if len(args) < 2:
            args.append(node.kwargs.get("other"))
        sides = [layouts.get(a) if isinstance(a, torch.fx.Node) else None for a in args]
        what = "a residual sum (add)" if node.target in _SUMS else f"a product ({getattr(node.target, '__name__', node.target)})"
        if sides[0] is not None and sides[1] is not None:
            return self.align(sides[0], sides[1], what)
        known, other = (sides[0], args[1]) if sides[0] is not None else (sides[1], args[0])
        if isinstance(other, (int, float)):
            return known
        if isinstance(other, torch.fx.Node) and other.op == "get_attr" and other.target in self.params:
            return self.param_member(other.target, known, what)
        raise _Refuse(f"its channels feed {what} with a tensor whose channels cannot be pruned")

    def align(self, a: _Layout, b: _Layout, what: str) -> _Layout:
        if a.width != b.width or a.flat != b.flat or a.at_dim1() != b.at_dim1():
            raise _Refuse(f"its channels feed {what} whose two sides do not line up")
        pieces_a, pieces_b = _cut(a.segments), _cut(b.segments)
        i = j = 0
        while i < len(pieces_a) and j < len(pieces_b):
            sa, sb = pieces_a[i], pieces_b[j]
            lo, hi = max(sa.position, sb.position), min(sa.position + sa.length, sb.position + sb.length)
            if hi > lo:  # channel sa.start + (p - sa.position) of sa.space is channel sb.start + (p - sb.position) of sb.space
                self.join(sa.space, sb.space, (sb.start - sb.position) - (sa.start - sa.position))
            if sa.position + sa.length <= sb.position + sb.length:
                i += 1
            else:
                j += 1
        return a

    def param_member(self, target: str, layout: _Layout, what: str) -> _Layout:
        param = self.params[target]
        if layout.flat:
            raise _Refuse(f"its flattened channels feed {what} with {target!r}")
        if layout.ndim is None:  # channels last, rank unknown: they meet the parameter's last dim
            dim = param.dim() - 1
        else:  # broadcasting aligns trailing dims
            dim = param.dim() - (layout.ndim - layout.axis % layout.ndim)
        if param.dim() == 0 or dim < 0 or param.shape[dim] == 1:
            return layout  # broadcast along the channels: nothing to shrink
        if param.shape[dim] != layout.width:
            raise _Refuse(f"its channels feed {what} with {target!r} of shape {tuple(param.shape)}")
        self.members.append(Member(target, "param", layout.segments, width=layout.width, dim=dim))
        return layout

    def concat(self, node, layouts) -> _Layout:
        parts = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        got = [layouts.get(p) if isinstance(p, torch.fx.Node) else None for p in parts]
        if any(g is None for g in got):
            raise _Refuse("its channels feed a concat with a tensor whose channels cannot be pruned")
        first = got[0]
        on_channels = (dim == 1 and first.at_dim1()) or (dim == -1 and first.at_last() and not first.flat)
        if not on_channels or any(g.at_dim1() != first.at_dim1() or g.flat for g in got):
            raise _Refuse(f"its channels feed a concat along dim {dim}, not the channel dim")
        segments, position = [], 0
        for g in got:
            segments += [Segment(position + s.position, s.space, s.start, s.length) for s in g.segments]
            position += g.width
        return first.moved(segments=tuple(segments))

    def pad(self, node, layout: _Layout) -> _Layout:
        widths = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
        mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
        if layout.flat or layout.ndim is None or not isinstance(widths, (tuple, list)) or \
                not all(isinstance(w, int) for w in widths):
            raise _Refuse("its channels feed a pad whose widths are not constants")
        pair = layout.ndim - 1 - (layout.axis % layout.ndim)
        if 2 * pair >= len(widths):
            return layout  # pads spatial dims only
        if mode != "constant":
            raise _Refuse(f"its channels feed a {mode!r} pad over the channel dim")
        low, high = widths[2 * pair], widths[2 * pair + 1]
        if low < 0 or high < 0:
            raise _Refuse("its channels feed a pad that crops the channel dim")
        spaces = [self.new_space(n) if n > 0 else None for n in (low, high)]
        segments = [Segment(0, spaces[0], 0, low)] if low else []
        segments += [Segment(low + s.position, s.space, s.start, s.length) for s in layout.segments]
        if high:
            segments.append(Segment(low + layout.width, spaces[1], 0, high))
        self.pads.append((node.name, 2 * pair, spaces[0], spaces[1]))
        return layout.moved(segments=tuple(segments))

    def getitem(self, node, layout: _Layout) -> _Layout:
        index = node.args[1]
        index = index if isinstance(index, tuple) else (index,)
        if layout.flat or layout.ndim is None or any(i is Ellipsis for i in index):
            raise _Refuse("its channels feed an indexing the walk cannot follow")
        axis = layout.axis % layout.ndim
        if axis < len(index) and index[axis] != slice(None):
            raise _Refuse("its channels feed an indexing of the channel dim")
        if not all(isinstance(i, slice) for i in index):
            raise _Refuse("its channels feed an indexing that drops dims")
        return layout

    def permute(self, node, layout: _Layout) -> _Layout:
        dims = node.args[1:] if node.op == "call_method" else node.args[1]
        dims = tuple(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else tuple(dims)
        if layout.flat or not all(isinstance(d, int) for d in dims) or \
                (layout.ndim is not None and len(dims) != layout.ndim):
            raise _Refuse("its channels feed a permute the walk cannot follow")
        ndim = len(dims)
        dims = tuple(d % ndim for d in dims)
        return layout.moved(axis=dims.index(layout.axis % ndim), ndim=ndim)

    def reduce(self, node, layout: _Layout) -> _Layout:
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
        dims = (dims,) if isinstance(dims, int) else dims
        if layout.flat or layout.ndim is None or not isinstance(dims, (tuple, list)):
            raise _Refuse("its channels feed a reduction over every dim")
        axis = layout.axis % layout.ndim
        dims = {d % layout.ndim for d in dims}
        if axis in dims or 0 in dims:
            raise _Refuse("its channels feed a reduction over the channel dim")
        if keep:
            return layout
        return layout.moved(axis=axis - sum(d < axis for d in dims), ndim=layout.ndim - len(dims))


def _cut(segments) -> list[Segment]:
    return sorted(segments, key=lambda s: s.position)


def _ndim(mod: nn.Module) -> int | None:
    for cls, n in _NDIM.items():
        if isinstance(mod, cls):
            return n
    return None


def _reads_other_dims(node, layout: _Layout) -> bool:
    """``x.size(d)``, ``x.size()[d]`` or ``x.shape[d]`` for dims other than the channels' (the
    batch size, a spatial size), which pruning leaves alone."""
    def other(d) -> bool:
        if not isinstance(d, int):
            return False
        if layout.ndim is None:
            return d == 0
        return not layout.flat and d % layout.ndim != layout.axis % layout.ndim or (layout.flat and d == 0)

    if node.op == "call_method" and node.target == "size" and (len(node.args) > 1 or node.kwargs):
        return other(node.args[1] if len(node.args) > 1 else node.kwargs.get("dim"))
    whole = (node.op == "call_method" and node.target == "size") or \
        (node.op == "call_function" and node.target is getattr and node.args[1:] == ("shape",))
    return whole and bool(node.users) and all(
        u.op == "call_function" and u.target is operator.getitem and other(u.args[1]) for u in node.users)


def _flatten_from_one(node) -> bool:
    """flatten(x, 1), x.flatten(1), x.view(x.size(0), -1) or x.reshape(N, -1)."""
    args = list(node.args[1:])
    if node.target in ("view", "reshape"):
        return len(args) == 2 and args[1] == -1
    start = args[0] if args else node.kwargs.get("start_dim", 0)
    return start == 1


_PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Tanh, nn.Sigmoid, nn.Hardswish,
    nn.Hardsigmoid, nn.Hardtanh, nn.Mish, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity,
)
# Pooling acts on the trailing (spatial) dims: it keeps a Conv's channels (dim 1) but mixes a Linear's (last dim).
_POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
_PASS_FUNCTIONS = {
    torch.relu, torch.nn.functional.relu, torch.nn.functional.gelu, torch.nn.functional.silu,
    torch.nn.functional.dropout, torch.sigmoid, torch.tanh, torch.nn.functional.leaky_relu,
    torch.nn.functional.relu6, torch.nn.functional.hardswish, torch.nn.functional.hardsigmoid,
}
_POOL_FUNCTIONS = {
    torch.nn.functional.max_pool1d, torch.nn.functional.max_pool2d, torch.nn.functional.avg_pool1d,
    torch.nn.functional.avg_pool2d, torch.nn.functional.adaptive_avg_pool1d, torch.nn.functional.adaptive_avg_pool2d,
}


# -- from the walk to groups ----------------------------------------------------------------------------

def analyse(graph, modules: dict, producers: dict, depthwise: dict, tied: set, params: dict,
            order: Mapping[str, int] | None = None) -> tuple[dict[str, ChannelGroup], dict[str, str]]:
    """Walk ``graph`` and return (group name -> ChannelGroup, layer FQN -> refusal reason).

    ``producers`` / ``depthwise``: module FQN -> plan layer FQN of the layers that may be pruned;
    ``order``: layer FQN -> its place in the model (a group's layers, and so its name, follow it).
    """
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    walk = _Walk(modules, producers, depthwise, calls, tied, params)
    walk.run(graph)
    return _groups(walk, order or {})


def _groups(walk: _Walk, order: Mapping[str, int]) -> tuple[dict[str, ChannelGroup], dict[str, str]]:
    """One group per set of joined spaces that holds a plan layer; a refused set refuses its layers."""
    _refuse_split_depthwise(walk)
    by_root: dict[int, list[int]] = {}
    for s in range(len(walk.sizes)):
        by_root.setdefault(walk.find(s)[0], []).append(s)
    groups: dict[str, ChannelGroup] = {}
    refused: dict[str, str] = {}
    for spaces in by_root.values():
        layers = sorted(_group_layers(walk, set(spaces)), key=lambda n: order.get(n, len(order)))
        reason = next((walk.refused[s] for s in spaces if s in walk.refused), None)
        if layers and reason is not None:
            refused.update((layer, _shared_reason(walk, layer, spaces, reason)) for layer in layers)
        elif layers:
            groups[layers[0]] = _group(walk, layers, spaces)
    return groups, refused


def _group(walk: _Walk, layers: list[str], spaces: list[int]) -> ChannelGroup:
    offsets = {s: walk.find(s)[1] for s in spaces}
    low = min(offsets.values())
    placed = {s: (offsets[s] - low, walk.sizes[s]) for s in spaces}
    size = max(o + n for o, n in placed.values())
    members = tuple(_restrict(m, placed) for m in walk.members if any(s.space in placed for s in m.segments))
    pads = tuple(PadEdit(node, index, lo, hi) for node, index, lo, hi in walk.pads if lo in placed or hi in placed)
    return ChannelGroup(layers[0], size, tuple(layers), placed, members, pads)


def _refuse_split_depthwise(walk: _Walk) -> None:
    """A depthwise conv over channels of two groups (after a concat) would need two fractions."""
    for m in walk.members:
        roots = {walk.find(s.space)[0] for s in m.segments}
        if m.role == "depthwise" and len(roots) > 1:
            walk.refuse({s.space for s in m.segments},
                        f"its channels meet the channels of another group in the depthwise convolution {m.name!r}")


def _group_layers(walk: _Walk, spaces: set[int]) -> list[str]:
    """The plan layers whose output channels are in ``spaces``: producers and depthwise convs, in model order."""
    names = [walk.origin[s] for s in sorted(spaces) if s in walk.origin]
    by_module = {**walk.producers, **walk.depthwise}
    for m in walk.members:
        if m.role == "depthwise" and any(s.space in spaces for s in m.segments):
            names.append(by_module[m.name])
    return list(dict.fromkeys(names))


def _restrict(member: Member, placed) -> Member:
    """``member`` with only the segments of this group (a reader after a concat spans several)."""
    return Member(member.name, member.role, tuple(s for s in member.segments if s.space in placed),
                  width=member.width, dim=member.dim, channels_last=member.channels_last)


def _shared_reason(walk: _Walk, layer: str, spaces, reason: str) -> str:
    own = [s for s in spaces if walk.origin.get(s) == layer]
    if any(s in walk.refused for s in own) or not own:
        return reason
    culprit = next(s for s in spaces if s in walk.refused)
    other = walk.origin.get(culprit)
    via = f"{other!r}" if other else "a tensor it is summed with"
    return f"its channels are tied (by a residual sum or concat) to {via}: {reason}"
