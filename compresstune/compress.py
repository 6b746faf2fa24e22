"""Apply a :class:`CompressionPlan` to a model, and ``squash`` the result into a
plain ``nn.Module``.

``apply`` never touches its input: it validates the whole plan first (no
compute is spent on a bad plan), deep-copies the model, physically shrinks
structured-pruned layers, then registers one :class:`CompressedWeight`
parametrization per compressed weight so the model can be fine-tuned.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import parametrize

from compresstune.channels import Member
from compresstune.errors import PlanError
from compresstune.factored import FactoredConv, FactoredEmbedding, FactoredLinear
from compresstune.layers import (  # effective_shapes stays importable from here, as before
    Discovery,
    LayerInfo,
    _trace,
    discover,
    effective_shapes,
    group_fractions,
    is_transposed_linear,
    saves_storage,
)
from compresstune.ops import CompressedWeight
from compresstune.plan import CompressionPlan, LayerPlan

__all__ = ["apply", "squash", "resolve_plan", "compressed_slots", "plan_of"]

PLAN_ATTR = "compresstune_plan"


# -- validation ------------------------------------------------------------------

def resolve_plan(plan: CompressionPlan, found: Discovery) -> dict[str, LayerPlan]:
    """Map the plan onto canonical layer names and check every layer can take it.

    Raises:
        PlanError: unknown layer, conflicting plans for tied weights, an
            operator the layer kind does not support, or a rank too large.
    """
    if not isinstance(plan, CompressionPlan):
        raise PlanError(f"`plan` must be a CompressionPlan; got {type(plan).__name__}.")
    found.check_names(plan.layers)
    resolved: dict[str, LayerPlan] = {}
    named_as: dict[str, str] = {}
    for name, lp in plan.layers.items():
        canon = found.canonical(name)
        if canon in resolved and resolved[canon] != lp:
            raise PlanError(
                f"layers {named_as[canon]!r} and {name!r} share one (tied) weight but the plan gives them "
                f"different settings ({resolved[canon]} vs {lp}); give tied layers one plan."
            )
        resolved[canon] = lp
        named_as[canon] = name
    for canon, lp in resolved.items():
        _check_operators(found.layers[canon], lp)
    shapes = effective_shapes(found, resolved)
    for canon, lp in resolved.items():
        rows, cols = shapes[canon]
        info = found.layers[canon]
        if info.matrices and lp.rank is not None and lp.rank > info.max_rank:
            raise PlanError(
                f"`rank` of layer {canon!r} must be at most {info.max_rank} (the smallest dimension of its "
                f"{info.kind} matrices {', '.join(f'{n} {r} x {c}' for n, (r, c) in info.matrices)}); got {lp.rank}."
            )
        if lp.rank is not None and lp.rank > min(rows, cols):
            raise PlanError(
                f"`rank` of layer {canon!r} must be at most {min(rows, cols)} (its weight is a {rows} x {cols} "
                f"matrix{' after structured pruning' if (rows, cols) != _matrix(found.layers[canon]) else ''}); got {lp.rank}."
            )
    return resolved


def _matrix(info: LayerInfo) -> tuple[int, int]:
    return info.rows, info.cols


def _operators(lp: LayerPlan) -> list[str]:
    ops = []
    if lp.structured > 0:
        ops.append("structured")
    if lp.sparsity > 0:
        ops.append("prune")
    if lp.bits < 32:
        ops.append("quantize")
    if lp.rank is not None:
        ops.append("lowrank")
    return ops


def _check_operators(info: LayerInfo, lp: LayerPlan) -> None:
    for op in _operators(lp):
        if op in info.refused:
            raise PlanError(f"layer {info.name!r} ({info.kind}) cannot take {op}: {info.refused[op]}.")


# -- apply -------------------------------------------------------------------------

def apply(model: nn.Module, plan: CompressionPlan, *, inplace: bool = False) -> nn.Module:
    """Compress ``model`` as ``plan`` says; returns a new module (``model`` is untouched).

    Operators run in the order low-rank -> prune -> quantize, as
    parametrizations, so the result can be fine-tuned; masks are fixed now,
    so fine-tuning never changes the packed size.

    Example:
        >>> import torch.nn as nn
        >>> from compresstune.plan import CompressionPlan, LayerPlan
        >>> small = apply(nn.Linear(16, 8), CompressionPlan({"": LayerPlan(sparsity=0.5, bits=4)}))
        >>> int((small.weight == 0).sum())
        64
    """
    # Tracing the graph (tens of ms) is only needed to place structured pruning.
    structured = isinstance(plan, CompressionPlan) and any(lp.structured > 0 for lp in plan.layers.values())
    found = discover(model, trace=structured)
    resolved = resolve_plan(plan, found)
    out = model if inplace else _deepcopy(model)
    with torch.no_grad():
        pads = _shrink_groups(found, group_fractions(found, resolved), out)
        if pads:
            out = _rewrite_pads(out, pads)
        modules = dict(out.named_modules(remove_duplicate=False))  # a module used twice is reachable by both names
        for name, lp in resolved.items():
            _register(found, name, lp, modules)
    # Identity entries change nothing, so they are dropped: such a model packs exactly like the plain one.
    active = {name: lp for name, lp in resolved.items() if not lp.is_identity}
    canonical = CompressionPlan(active, temperature=plan.temperature, alpha=plan.alpha)
    setattr(out, PLAN_ATTR, canonical)
    return out


def plan_of(model: nn.Module) -> CompressionPlan:
    """The (canonical) plan a compressed model was built with; an empty plan for a plain model."""
    plan = getattr(model, PLAN_ATTR, None)
    return plan if isinstance(plan, CompressionPlan) else CompressionPlan({})


def _register(found: Discovery, name: str, lp: LayerPlan, modules: dict) -> None:
    info = found.layers[name]
    sparsity = lp.sparsity  # of the weights left after structured pruning
    if sparsity == 0 and lp.bits == 32 and lp.rank is None:
        return
    module = modules[info.module_name]
    for param_name in info.param_names:
        weight = getattr(module, param_name)
        rank = lp.rank
        if rank is not None and info.matrices and not saves_storage(rank, weight.shape[0], weight[0].numel()):
            rank = None  # a recurrent module's matrices are factored only where that saves storage
        param = CompressedWeight(tuple(weight.shape), sparsity=sparsity, bits=lp.bits, rank=rank,
                                 out_axis=info.out_axis, groups=info.groups)
        # unsafe=True only skips torch's shape/dtype self-check, which evaluates every weight once more;
        # CompressedWeight keeps shape and dtype by construction.
        parametrize.register_parametrization(module, param_name, param, unsafe=True)
    for alias in info.aliases:
        alias_module, alias_param = found.slots[alias]
        if modules[alias_module] is module and alias_param == info.param_name:
            continue  # the same module under two names: already compressed
        _tie(modules[alias_module], alias_param, module, info.param_name)


class TiedTo(nn.Module):
    """Parametrization that reads another module's (compressed) weight, so a tied
    weight is computed, fine-tuned and stored once."""

    def __init__(self, owner: nn.Module, param_name: str) -> None:
        super().__init__()
        # Kept out of ``_modules``: the owner must not appear twice in the module tree.
        self.__dict__["owner"] = owner
        self.param_name = param_name

    def forward(self, _placeholder: torch.Tensor) -> torch.Tensor:
        return getattr(self.owner, self.param_name)


def _tie(module: nn.Module, param_name: str, owner: nn.Module, owner_param: str) -> None:
    del module._parameters[param_name]
    module.register_buffer(param_name, torch.empty(0), persistent=False)
    parametrize.register_parametrization(module, param_name, TiedTo(owner, owner_param), unsafe=True)


# -- structured pruning --------------------------------------------------------------

def _shrink_groups(found: Discovery, fractions: dict[str, float], root: nn.Module) -> dict:
    """Remove the pruned channels of every group from every member of ``root``; returns the new
    widths of the channel pads to rewrite, ``{(node name, index in its widths): width}``."""
    modules = dict(root.named_modules())
    keep: dict[tuple[str, str], tuple[Member, torch.Tensor]] = {}  # one mask per member, over all groups
    pads: dict[tuple[str, int], int] = {}
    for group_name, fraction in fractions.items():
        group = found.channel_groups[group_name]
        weights = {m.name: modules[m.name].weight for m in group.members if m.role in ("layer", "depthwise")}
        positions = group.keep(fraction, group.importance(weights))
        for member in group.members:
            _, mask = keep.setdefault((member.name, member.role), (member, torch.ones(member.width, dtype=torch.bool)))
            mask[group.removed(member, positions)] = False
        for pad in group.pads:
            for side, space in ((0, pad.low), (1, pad.high)):
                if space in group.spaces:
                    pads[(pad.node, pad.index + side)] = group.kept_in(space, 0, group.spaces[space][1], fraction)
    for member, mask in keep.values():
        _shrink_member(root, modules, member, torch.nonzero(mask).flatten())
    return pads


def _shrink_member(root: nn.Module, modules: dict, member: Member, index: torch.Tensor) -> None:
    if member.role == "param":
        owner, _, attr = member.name.rpartition(".")
        _take(root.get_submodule(owner), attr, member.dim, index)
        return
    module = modules[member.name]
    if member.role == "reader":
        _shrink_inputs(module, member, index)
    elif member.role == "norm":
        for attr in ("weight", "bias", "running_mean", "running_var"):
            _take(module, attr, 0, index)
        if isinstance(module, nn.LayerNorm):
            module.normalized_shape = (len(index),)
        else:
            module.num_features = len(index)
    else:  # a layer's output rows; a depthwise conv's rows follow its inputs
        _take(module, "weight", 0, index)
        _take(module, "bias", 0, index)
        _set_features(module, out=len(index))
        if member.role == "depthwise":
            module.in_channels = module.groups = len(index)


def _shrink_inputs(module: nn.Module, member: Member, keep: torch.Tensor) -> None:
    in_dim = module.weight.shape[1]
    if isinstance(module, nn.Linear):
        repeat = in_dim // member.width  # inputs per channel after a flatten
        if member.channels_last:  # a flatten of channels-last data interleaves them (t * width + c)
            index = (torch.arange(repeat)[:, None] * member.width + keep[None, :]).flatten()
        else:  # channels at dim 1: each one is a contiguous run of `repeat` inputs
            index = (keep[:, None] * repeat + torch.arange(repeat)).flatten()
    else:
        index = keep
    _take(module, "weight", 1, index)
    _set_features(module, inp=len(index))


def _rewrite_pads(model: nn.Module, widths: dict) -> nn.Module:
    """``model`` as a ``torch.fx.GraphModule`` whose channel pads take their new ``widths``:
    the pad widths are constants of the forward code, which only a rewritten graph can change."""
    from torch import fx

    graph = _trace(model)
    for node in graph.nodes:
        edits = {index: w for (name, index), w in widths.items() if name == node.name}
        if not edits:
            continue
        args = list(node.args)
        if len(args) > 1:
            args[1] = tuple(edits.get(i, w) for i, w in enumerate(args[1]))
            node.args = tuple(args)
        else:
            node.kwargs = {**node.kwargs, "pad": tuple(edits.get(i, w) for i, w in enumerate(node.kwargs["pad"]))}
    return fx.GraphModule(model, graph, class_name=type(model).__name__)


def _take(module: nn.Module, attr: str, dim: int, index: torch.Tensor) -> None:
    tensor = getattr(module, attr, None)
    if tensor is None:
        return
    new = tensor.detach().index_select(dim, index.to(tensor.device)).clone()
    if isinstance(tensor, nn.Parameter):
        setattr(module, attr, nn.Parameter(new, requires_grad=tensor.requires_grad))
    else:
        setattr(module, attr, new)


def _set_features(module: nn.Module, *, out: int | None = None, inp: int | None = None) -> None:
    if isinstance(module, nn.Linear):
        module.out_features = out if out is not None else module.out_features
        module.in_features = inp if inp is not None else module.in_features
    else:
        module.out_channels = out if out is not None else module.out_channels
        module.in_channels = inp if inp is not None else module.in_channels


# -- squash ------------------------------------------------------------------------------

def compressed_slots(model: nn.Module):
    """Yield ``(module_name, module, param_name, parametrization)`` for each compressed weight."""
    for mod_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for param_name, plist in module.parametrizations.items():
            yield mod_name, module, param_name, plist[0]


def squash(model: nn.Module) -> nn.Module:
    """A plain ``nn.Module`` computing what the compressed ``model`` computes.

    Low-rank Linear / Conv1D / Conv / transposed Conv / Embedding layers become
    a :mod:`compresstune.factored` module of two small layers (Conv: a k x k conv
    to ``rank`` channels then a 1 x 1 conv) that keeps the replaced layer's
    attributes and a read-only, cached ``.weight``; weights are dequantized and
    masked; structured pruning is already physical. Factored weights that are
    tied, belong to a recurrent module, or live inside ``nn.MultiheadAttention``
    or a Transformer layer (which read their weights directly), are
    materialised as one matrix. The result holds no parametrization, works with
    ``torch.export``, and needs nothing of compresstune but the torch-only
    ``compresstune.factored`` classes (none at all when nothing is factored).

    Example:
        >>> import torch, torch.nn as nn
        >>> from compresstune.plan import CompressionPlan, LayerPlan
        >>> small = apply(nn.Linear(16, 8), CompressionPlan({"": LayerPlan(rank=2, bits=8)}))
        >>> plain = squash(nn.Sequential(small))
        >>> type(plain[0]).__name__, plain[0].weight.shape
        ('FactoredLinear', torch.Size([8, 16]))
    """
    out = _deepcopy(model)
    for module in out.modules():
        if parametrize.is_parametrized(module):
            _own_class(module)
    slots = list(compressed_slots(out))
    tied = [(n, m, p, par) for n, m, p, par in slots if isinstance(par, TiedTo)]
    owners_tied = {id(par.owner) for _, _, _, par in tied}
    names_of: dict[int, list[str]] = {}
    parents = set()
    for name, module in out.named_modules(remove_duplicate=False):
        names_of.setdefault(id(module), []).append(name)
        if isinstance(module, _READS_CHILD_WEIGHTS):
            parents.update(id(child) for child in module.children())
    with torch.no_grad():
        for mod_name, module, param_name, par in slots:
            if isinstance(par, TiedTo):
                continue
            splittable = (par.factored and param_name == "weight" and id(module) not in owners_tied
                          and id(module) not in parents)
            split = _split_factored(module, par) if splittable else None
            if split is not None:
                for name in names_of[id(module)]:  # a module used twice stays shared
                    if name:
                        _set_submodule(out, name, split)
                    else:
                        out = split  # the model is itself one factored layer
            else:
                parametrize.remove_parametrizations(module, param_name, leave_parametrized=True)
                if param_name in module._buffers:  # a factored weight comes back as a buffer under no_grad
                    module.register_parameter(param_name, nn.Parameter(module._buffers.pop(param_name)))
        for _, module, param_name, par in tied:
            parametrize.remove_parametrizations(module, param_name, leave_parametrized=False)
            delattr(module, param_name)
            setattr(module, param_name, getattr(par.owner, par.param_name))
    if hasattr(out, PLAN_ATTR):
        delattr(out, PLAN_ATTR)
    return out


def _deepcopy(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also copies a compressed recurrent module after a backward pass.

    ``nn.LSTM``/``nn.GRU`` cache their weights in ``_flat_weights``; with a parametrized
    weight, a forward under autograd caches non-leaf tensors, which deepcopy refuses.
    Recomputing the cache under ``no_grad`` gives leaves (the next forward refreshes it anyway).
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.RNNBase) and parametrize.is_parametrized(module):
                module._init_flat_weights()
    return copy.deepcopy(model)


def _own_class(module: nn.Module) -> None:
    """Give a deep-copied parametrized module a class of its own: the copy shares the generated
    ``Parametrized<Cls>`` class with the original, and removing a parametrization deletes the
    weight's property from that class, which would break the original model."""
    cls = type(module)
    module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))


# Built-in modules that read their children's ``.weight`` directly (attention, and the
# fast path of the Transformer layers) instead of calling them: a factored child stays one matrix.
_READS_CHILD_WEIGHTS = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def _stored_parts(module: nn.Module, par: CompressedWeight) -> list[torch.Tensor]:
    plist = module.parametrizations["weight"]
    originals = [plist.original0, plist.original1]
    return [par.stored_part(p, i).detach().clone() for i, p in enumerate(originals)]


def _split_factored(module: nn.Module, par: CompressedWeight) -> nn.Module | None:
    a, b = _stored_parts(module, par)  # rows first: a is (out x rank), b is (rank x in*k)
    rank = par.rank
    kind = parametrize.type_before_parametrizations(module)
    if isinstance(module, nn.Linear) or is_transposed_linear(module):
        out_features, in_features = a.shape[0], b.shape[1]
        split = FactoredLinear(in_features, out_features, rank, bias=module.bias is not None,
                               transposed=not isinstance(module, nn.Linear))
        split.first.weight.copy_(b)
        split.second.weight.copy_(a)
        if module.bias is not None:
            split.second.bias.copy_(module.bias)
        return split.to(a.device)
    if issubclass(kind, nn.modules.conv._ConvNd) and module.groups == 1:
        return _split_conv(module, kind, a, b, rank)
    if kind is nn.Embedding and module.max_norm is None:
        split = FactoredEmbedding(module.num_embeddings, module.embedding_dim, rank, padding_idx=module.padding_idx)
        split.first.weight.copy_(a)
        split.second.weight.copy_(b.t())
        return split.to(a.device)
    return None


_POINTWISE = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def _split_conv(module: nn.Module, kind: type, a: torch.Tensor, b: torch.Tensor, rank: int) -> nn.Module:
    dims = len(module.kernel_size)
    common = dict(stride=module.stride, padding=module.padding, dilation=module.dilation, bias=False)
    if module.transposed:
        first = kind(module.in_channels, rank, module.kernel_size, output_padding=module.output_padding, **common)
        first.weight.copy_(b.reshape(rank, module.in_channels, *module.kernel_size).transpose(0, 1))
    else:
        first = kind(module.in_channels, rank, module.kernel_size, padding_mode=module.padding_mode, **common)
        first.weight.copy_(b.reshape(first.weight.shape))
    second = _POINTWISE[dims](rank, module.out_channels, 1, bias=module.bias is not None)
    second.weight.copy_(a.reshape(second.weight.shape))
    if module.bias is not None:
        second.bias.copy_(module.bias)
    return FactoredConv(first, second).to(a.device)


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name), child, new)
