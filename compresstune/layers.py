"""Discovery of compressible layers by fully-qualified name (FQN).

:func:`discover` walks a model and returns every weight compresstune can
compress, keyed by the name plans use, plus the modules it cannot handle with
the reason. Operator support by layer kind:

=========================  =================  ======  ========  ========  ==========
module                     kind               prune   quantize  low-rank  structured
=========================  =================  ======  ========  ========  ==========
nn.Linear                  linear             yes     yes       yes       by group
transformers Conv1D        transposed_linear  yes     yes       yes       no
nn.Conv1d / 2d / 3d        conv1d/2d/3d       yes     yes       yes       by group
depthwise conv             conv1d/2d/3d       yes     yes       no        by group
other grouped conv         conv1d/2d/3d       yes     yes       no        no
nn.ConvTranspose1d/2d/3d   conv_transpose1d.. yes     yes       groups=1  no
nn.Embedding               embedding          yes     yes       yes       no
attention projection       attention          yes     yes       yes       no
nn.LSTM / nn.GRU / nn.RNN  lstm / gru / rnn   yes     yes       yes       no
=========================  =================  ======  ========  ========  ==========

Every operator works on the weight with its output channels first: the
transposed layouts (Conv1D's ``(in, out)``, a transposed convolution's
``(in, out/groups, *k)``) are turned round for it (:mod:`compresstune.ops.layout`),
so quantization scales are per output channel for every kind.

A recurrent module is one layer in the plan (its FQN is the module's): every
weight matrix (``weight_ih_l*``, ``weight_hh_l*``, ``*_reverse``, ``weight_hr_l*``)
takes the layer's sparsity and bits, and its rank where that factorisation saves
storage on the matrix; the biases stay float32. ``LayerInfo.matrices`` lists the
matrices, and the artifact holds one record per matrix.

"by group": structured (output-channel) pruning removes the channels of a
:class:`~compresstune.channels.ChannelGroup` together, found by one torch.fx walk
(residual sums, concats, channel pads, depthwise convs, norms and per-channel
scales; see :mod:`compresstune.channels`). It is refused, with the reason, when
tracing fails or the group's channels reach something the walk cannot follow
(an attention block, a reshape that mixes channels, the model output).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Mapping

import torch
from torch import nn

from compresstune.channels import _PASS_MODULES, _POOL_MODULES, ChannelGroup, analyse
from compresstune.errors import PlanError

if TYPE_CHECKING:  # annotations only: the plan module does not import this one at import time
    from compresstune.plan import LayerPlan

__all__ = ["KINDS", "ChannelGroup", "Discovery", "LayerInfo", "discover"]

# Every kind discovery reports; a study's `space.types` selects among these.
KINDS = (
    "linear", "transposed_linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
    "conv_transpose3d", "embedding", "attention", "lstm", "gru", "rnn",
)
RNN_KINDS = ("lstm", "gru", "rnn")


@dataclass(frozen=True)
class LayerInfo:
    """One compressible weight.

    Attributes:
        name: the FQN plans use. For ``nn.MultiheadAttention`` the packed
            projection is ``<attn>.in_proj`` (or ``<attn>.q_proj`` etc. when
            key/value dims differ) and the output projection ``<attn>.out_proj``.
        kind: one of :data:`KINDS`.
        module_name / param_name: where the weight lives (for a recurrent
            module, ``param_name`` is its first matrix).
        shape: the weight's shape with the output channels first; the matrix
            view is ``rows x cols`` with ``rows`` the output channels. For a
            recurrent module: its matrices side by side (``gate rows x sum of
            their columns``).
        weight_shape: the weight's shape as the module stores it.
        out_axis: the dim of ``weight_shape`` holding the output channels (1
            for transformers' Conv1D and transposed convolutions, else 0).
        matrices: for a recurrent module, ``(param_name, (rows, cols))`` of
            each weight matrix; empty for the other kinds.
        aliases: other FQNs tied to the same tensor (stored and compressed once).
        refused: operator -> reason, for operators this layer cannot take.
        channel_group: the :class:`~compresstune.channels.ChannelGroup` its output channels
            belong to (``Discovery.channel_groups``), when it can take structured pruning.
    """

    name: str
    kind: str
    module_name: str
    param_name: str
    shape: tuple[int, ...]
    groups: int = 1
    aliases: tuple[str, ...] = ()
    refused: dict = field(default_factory=dict)
    channel_group: str | None = None
    weight_shape: tuple[int, ...] = ()
    out_axis: int = 0
    matrices: tuple[tuple[str, tuple[int, int]], ...] = ()

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def cols(self) -> int:
        n = 1
        for d in self.shape[1:]:
            n *= d
        return n

    @property
    def numel(self) -> int:
        if self.matrices:
            return sum(r * c for _, (r, c) in self.matrices)
        return self.rows * self.cols

    @property
    def max_rank(self) -> int:
        if self.matrices:
            return min(min(r, c) for _, (r, c) in self.matrices)
        return min(self.rows, self.cols)

    @property
    def param_names(self) -> tuple[str, ...]:
        """Every weight this layer compresses (several for a recurrent module)."""
        return tuple(name for name, _ in self.matrices) or (self.param_name,)

    @property
    def structured_ok(self) -> str | None:
        """None when structured pruning is possible, else the reason."""
        return self.refused.get("structured")

    def rank_for_fraction(self, fraction: float, *, shape: tuple[int, int] | None = None) -> int | None:
        """Rank for a fraction of full rank, or None when factoring would not save storage.

        ``shape`` is the matrix shape (rows, cols) to use instead of the weight's,
        e.g. after structured pruning.
        """
        if not 0 < fraction <= 1:
            raise PlanError(f"`rank_fraction` must be in (0, 1]; got {fraction!r}.")
        if "lowrank" in self.refused:
            return None
        if self.matrices:  # one rank for every matrix, used where it saves storage
            rank = max(1, round(fraction * self.max_rank))
            return rank if any(saves_storage(rank, r, c) for _, (r, c) in self.matrices) else None
        rows, cols = shape if shape is not None else (self.rows, self.cols)
        rank = max(1, round(fraction * min(rows, cols)))
        return rank if saves_storage(rank, rows, cols) else None


_OPERATORS = ("prune", "quantize", "lowrank", "structured")


def saves_storage(rank: int, rows: int, cols: int) -> bool:
    """True when factors ``rows x rank`` and ``rank x cols`` hold fewer numbers than the matrix."""
    return rank * (rows + cols) < rows * cols


@dataclass
class Discovery:
    """What :func:`discover` found: ``layers`` (FQN -> LayerInfo, model order),
    ``skipped`` (module FQN -> reason it is not compressed) and ``channel_groups``
    (name -> the layers whose output channels structured pruning removes together)."""

    layers: dict[str, LayerInfo]
    skipped: dict[str, str]
    alias_of: dict[str, str]
    slots: dict[str, tuple[str, str]] = field(default_factory=dict)  # FQN (aliases too) -> (module, param)
    channel_groups: dict[str, ChannelGroup] = field(default_factory=dict)

    def group_of(self, name: str) -> ChannelGroup | None:
        """The channel group of layer ``name`` (None when it cannot take structured pruning)."""
        group = self.layers[self.canonical(name)].channel_group
        return None if group is None else self.channel_groups[group]

    def canonical(self, name: str) -> str:
        return self.alias_of.get(name, name)

    def table(self) -> str:
        """The layers as a text table (layer, kind, shape, operators it takes, its channel
        group, refusals), then the modules skipped with their reasons.

        Example:
            >>> import torch.nn as nn
            >>> print(discover(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))).table())
            layer  kind    shape  operators                          group  refused
            0      linear  3x4    prune quantize lowrank structured  0      -
            2      linear  2x3    prune quantize lowrank             -      structured: its channels are the model output
        """
        head = ("layer", "kind", "shape", "operators", "group", "refused")
        rows = [(name, info.kind, "x".join(map(str, info.shape)),
                 " ".join(op for op in _OPERATORS if op not in info.refused), info.channel_group or "-",
                 "; ".join(f"{op}: {why}" for op, why in info.refused.items()) or "-")
                for name, info in self.layers.items()]
        widths = [max(len(str(r[i])) for r in (head, *rows)) for i in range(5)]
        lines = ["  ".join([*(str(c).ljust(w) for c, w in zip(r[:5], widths)), r[5]]).rstrip() for r in (head, *rows)]
        if self.skipped:
            lines += ["", "skipped:"] + [f"  {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Discovery of {len(self.layers)} layers\n{self.table()}"

    def check_names(self, names: Iterable[str], *, field_name: str = "layers") -> None:
        """Raise PlanError for names that are not compressible layers, listing close matches."""
        known = list(self.layers) + list(self.alias_of)
        for name in names:
            if name in self.layers or name in self.alias_of:
                continue
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            why = f" It is not compressed: {self.skipped[name]}." if name in self.skipped else ""
            raise PlanError(
                f"`{field_name}` names {name!r}, which is not a compressible layer of this model.{why}{hint} "
                f"Compressible layers: {_preview(self.layers)}."
            )


def kept_rows(rows: int, sparsity: float) -> int:
    """Output channels left when structured pruning removes ``sparsity`` of ``rows`` (at least one)."""
    return max(1, rows - int(round(sparsity * rows)))


def group_fractions(found: Discovery, resolved: Mapping[str, "LayerPlan"]) -> dict[str, float]:
    """The fraction of channels each channel group loses under ``resolved``.

    A layer's ``structured`` request applies to its whole group; layers of one group that ask
    for different (non-zero) fractions are an error naming both.
    """
    fractions: dict[str, float] = {}
    asked_by: dict[str, str] = {}
    for name, lp in resolved.items():
        if not lp.structured:
            continue
        group = found.layers[name].channel_group
        if group is None:
            continue  # resolve_plan reports the refusal
        if group in fractions and fractions[group] != lp.structured:
            raise PlanError(
                f"layers {asked_by[group]!r} (structured={fractions[group]}) and {name!r} "
                f"(structured={lp.structured}) share one channel group ({', '.join(found.channel_groups[group].layers)}: "
                "a residual sum, concat or depthwise conv ties their channels) but ask for different fractions; "
                "give the group's layers one `structured` fraction."
            )
        fractions[group] = lp.structured
        asked_by.setdefault(group, name)
    return fractions


def effective_shapes(found: Discovery, resolved: Mapping[str, "LayerPlan"]) -> dict[str, tuple[int, int]]:
    """Matrix shape (rows, cols) of each layer once structured pruning has shrunk the model."""
    by_module = {info.module_name: name for name, info in found.layers.items()}
    shapes = {name: (info.rows, info.cols) for name, info in found.layers.items()}
    for group_name, fraction in group_fractions(found, resolved).items():
        group = found.channel_groups[group_name]
        for member in group.members:
            name = by_module.get(member.name)
            if name is None or member.role not in ("layer", "depthwise", "reader"):
                continue
            before, after = group.member_width(member, fraction)
            rows, cols = shapes[name]
            if member.role == "reader":
                per_channel = found.layers[name].cols // member.width  # columns fed by one channel
                shapes[name] = (rows, cols - (before - after) * per_channel)
            else:
                shapes[name] = (rows - (before - after), cols)
    return shapes


def _preview(names, limit: int = 12) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


_NORM_TYPES = tuple(t for t in (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
                                 getattr(nn, "RMSNorm", None)) if t is not None)
_CONV_KINDS = {
    nn.Conv1d: "conv1d", nn.Conv2d: "conv2d", nn.Conv3d: "conv3d", nn.ConvTranspose1d: "conv_transpose1d",
    nn.ConvTranspose2d: "conv_transpose2d", nn.ConvTranspose3d: "conv_transpose3d",
}
_RNN_KINDS = {nn.LSTM: "lstm", nn.GRU: "gru", nn.RNN: "rnn"}


def is_transposed_linear(module: nn.Module) -> bool:
    """True for transformers' ``Conv1D`` (a Linear whose weight is stored ``(in, out)``),
    matched by class name and module so that transformers is never imported."""
    return any(cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")
               for cls in type(module).__mro__)


def _layer_kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.Linear):
        return "linear"
    if type(module) in _CONV_KINDS:
        return _CONV_KINDS[type(module)]
    if type(module) is nn.Embedding:
        return "embedding"
    if type(module) in _RNN_KINDS:
        return _RNN_KINDS[type(module)]
    if is_transposed_linear(module):
        return "transposed_linear"
    return None


def _out_axis(kind: str) -> int:
    return 1 if kind == "transposed_linear" or kind.startswith("conv_transpose") else 0


def _attention_weights(prefix: str, mha: nn.MultiheadAttention):
    if mha.in_proj_weight is not None:
        yield f"{prefix}in_proj", "in_proj_weight"
    else:
        for short in ("q", "k", "v"):
            yield f"{prefix}{short}_proj", f"{short}_proj_weight"


def _candidates(model: nn.Module):
    """Yield (fqn, kind, module_name, param_name, module) for every compressible weight."""
    attention_children = set()
    for mod_name, module in model.named_modules(remove_duplicate=False):
        prefix = f"{mod_name}." if mod_name else ""
        if isinstance(module, nn.MultiheadAttention):
            for fqn, pname in _attention_weights(prefix, module):
                yield fqn, "attention", mod_name, pname, module
            attention_children.add(f"{prefix}out_proj")
            continue
        kind = _layer_kind(module)
        if kind is None:
            continue
        if mod_name in attention_children:
            kind = "attention"
        pname = _rnn_matrices(module)[0] if kind in RNN_KINDS else "weight"
        yield mod_name, kind, mod_name, pname, module


def _rnn_matrices(module: nn.RNNBase) -> list[str]:
    """The weight matrices of a recurrent module, in its own order (biases excluded)."""
    return [n for n in module._flat_weights_names if n.startswith("weight_")]


def _static_refusals(kind: str, module: nn.Module, weight: torch.Tensor) -> dict:
    refused = {}
    groups = getattr(module, "groups", 1)
    if groups > 1:
        refused["lowrank"] = f"grouped convolution (groups={groups}): a factorisation would mix groups"
        if not _is_depthwise(module):
            refused["structured"] = f"grouped convolution (groups={groups}) ties output to input channels"
    if kind == "transposed_linear":
        refused["structured"] = ("structured pruning of transformers' Conv1D is not supported "
                                 "(torch.fx traces through it, so its consumers cannot be proven)")
    if kind.startswith("conv_transpose"):
        refused.setdefault("structured", "structured pruning of a transposed convolution is not supported")
    if kind in RNN_KINDS:
        refused["structured"] = "a recurrent layer's rows are gates that feed back into the layer itself"
    if kind == "embedding":
        refused["structured"] = "an embedding's rows are tokens, not channels"
        if module.max_norm is not None or module.sparse:
            refused["lowrank"] = "embedding with max_norm or sparse gradients"
    if kind == "attention":
        refused["structured"] = "the channels feed an attention block"
    if weight.dim() < 2:
        refused["lowrank"] = "weight has fewer than 2 dimensions"
    return refused


def _is_depthwise(module: nn.Module) -> bool:
    """A depthwise convolution: one filter per input channel, so its output channels follow its input's."""
    return (isinstance(module, nn.modules.conv._ConvNd) and not module.transposed
            and module.groups == module.in_channels == module.out_channels)


def discover(model: nn.Module, *, trace: bool = True) -> Discovery:
    """Find every compressible layer of ``model``.

    Args:
        model: any ``nn.Module``.
        trace: analyse the graph with torch.fx to decide where structured
            pruning is possible (otherwise it is refused everywhere).

    Returns:
        A :class:`Discovery` with layers in model order, tied aliases and the
        modules that are skipped with the reason.

    Example:
        >>> import torch.nn as nn
        >>> found = discover(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
        >>> list(found.layers)
        ['0', '2']
    """
    if not isinstance(model, nn.Module):
        raise PlanError(f"`model` must be a torch.nn.Module; got {type(model).__name__}.")
    layers: dict[str, LayerInfo] = {}
    alias_of: dict[str, str] = {}
    owner_by_tensor: dict[int, str] = {}
    slots: dict[str, tuple[str, str]] = {}
    for fqn, kind, mod_name, pname, module in _candidates(model):
        slots.setdefault(fqn, (mod_name, pname))
        weight = getattr(module, pname)
        if not isinstance(weight, torch.Tensor) or isinstance(weight, nn.parameter.UninitializedParameter):
            continue
        key = id(module.parametrizations[pname].original if _is_parametrized(module, pname) else weight)
        if key in owner_by_tensor:
            owner = owner_by_tensor[key]
            if fqn != owner and fqn not in alias_of:
                alias_of[fqn] = owner
            continue
        owner_by_tensor[key] = fqn
        layers[fqn] = _layer_info(fqn, kind, mod_name, pname, module, weight)
    _attach_aliases(layers, alias_of)
    skipped = _skipped_modules(model, layers, alias_of)
    groups: dict[str, ChannelGroup] = {}
    if trace:
        groups = _analyse_structured(model, layers, alias_of)
    else:
        _refuse_all_structured(layers, "graph analysis was disabled (trace=False)")
    return Discovery(layers=layers, skipped=skipped, alias_of=alias_of, slots=slots, channel_groups=groups)


def _layer_info(fqn: str, kind: str, mod_name: str, pname: str, module: nn.Module, weight: torch.Tensor) -> LayerInfo:
    groups = getattr(module, "groups", 1)
    out_axis = _out_axis(kind)
    native = tuple(weight.shape)
    shape = native if out_axis == 0 else (native[1] * groups, native[0] // groups, *native[2:])
    matrices: tuple = ()
    if kind in RNN_KINDS:
        matrices = tuple((n, tuple(getattr(module, n).shape)) for n in _rnn_matrices(module))
        total = sum(r * c for _, (r, c) in matrices)
        shape = (native[0], -(-total // native[0]))  # side by side (exact unless LSTM proj_size)
    return LayerInfo(
        name=fqn, kind=kind, module_name=mod_name, param_name=pname, shape=shape, groups=groups,
        refused=_static_refusals(kind, module, weight), weight_shape=native, out_axis=out_axis, matrices=matrices,
    )


def _is_parametrized(module: nn.Module, name: str) -> bool:
    return hasattr(module, "parametrizations") and name in module.parametrizations


def _attach_aliases(layers: dict, alias_of: dict) -> None:
    for alias, owner in alias_of.items():
        info = layers[owner]
        refused = dict(info.refused)
        refused["structured"] = f"the weight is tied to {alias!r}"
        layers[owner] = _replace(info, aliases=info.aliases + (alias,), refused=refused)


def _replace(info: LayerInfo, **changes) -> LayerInfo:
    data = {f: getattr(info, f) for f in LayerInfo.__dataclass_fields__}
    data.update(changes)
    return LayerInfo(**data)


def _skipped_modules(model: nn.Module, layers: dict, alias_of: dict) -> dict[str, str]:
    handled = {info.module_name for info in layers.values()} | set(alias_of)
    skipped = {}
    for mod_name, module in model.named_modules():
        own = [n for n, _ in module.named_parameters(recurse=False)]
        if not own or mod_name in handled or isinstance(module, nn.MultiheadAttention):
            continue
        if isinstance(module, _NORM_TYPES) or (_only_1d_weight(module) and "norm" in type(module).__name__.lower()):
            skipped[mod_name] = "normalisation layer: kept in float32"
        elif _only_1d_weight(module):
            skipped[mod_name] = f"{type(module).__name__} has only a 1-D weight (a normalisation or per-channel scale): kept in float32"
        elif _layer_kind(module) is not None or isinstance(module, tuple(_CONV_KINDS)):
            skipped[mod_name] = "weight is not initialised (lazy module)"
        else:
            skipped[mod_name] = f"{type(module).__name__} is not a supported layer kind; its parameters ({', '.join(own)}) are kept in float32"
    return skipped


def _only_1d_weight(module: nn.Module) -> bool:
    """A custom normalisation layer (LlamaRMSNorm, T5LayerNorm, ...): a 1-D ``weight``
    and at most a 1-D ``bias`` besides."""
    own = dict(module.named_parameters(recurse=False))
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in own.values()):
        return False
    return "weight" in own and set(own) <= {"weight", "bias"} and all(p.dim() == 1 for p in own.values())


# -- structured-pruning graph analysis ------------------------------------------

def _refuse_all_structured(layers: dict, reason: str) -> None:
    for name, info in list(layers.items()):
        if "structured" not in info.refused:
            layers[name] = _replace(info, refused={**info.refused, "structured": reason})


def _analyse_structured(model: nn.Module, layers: dict, alias_of: dict) -> dict[str, ChannelGroup]:
    """Place every layer that may take structured pruning in its channel group (or refuse it, with
    the reason); returns the groups by name."""
    todo = [n for n, i in layers.items() if "structured" not in i.refused]
    if not todo:
        return {}
    try:
        graph = _trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means "cannot prove it safe"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        _refuse_all_structured(layers, f"torch.fx could not trace the model ({first[:120]})")
        return {}
    modules = dict(model.named_modules())
    tied = {layers[o].module_name for o in alias_of.values()} | set(alias_of)
    depthwise = {layers[n].module_name: n for n in todo if layers[n].groups > 1}
    producers = {layers[n].module_name: n for n in todo if layers[n].groups == 1}
    params = {**dict(model.named_buffers()), **dict(model.named_parameters())}
    groups, refused = analyse(graph, modules, producers, depthwise, tied, params,
                              order={name: i for i, name in enumerate(layers)})
    calls = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    member_of = {layer: g.name for g in groups.values() for layer in g.layers}
    for name in todo:
        info = layers[name]
        if name in member_of:
            layers[name] = _replace(info, channel_group=member_of[name])
            continue
        why = refused.get(name) or _unplaced_reason(info, calls, modules)
        layers[name] = _replace(info, refused={**info.refused, "structured": why})
    return groups


def _unplaced_reason(info: LayerInfo, calls: dict, modules: dict) -> str:
    n = calls.get(info.module_name, 0)
    if n > 1:
        return f"the module is called {n} times (structured pruning needs exactly 1 call)"
    if n == 0:
        return _opaque_reason(info.module_name, calls, modules)
    return "its input channels cannot be pruned (they come from the model input or an op the walk cannot follow)"


# Module types torch.fx must not trace into, subclasses included: a user's ``class B(nn.BatchNorm2d)``
# that applies an activation in ``forward`` is still a normalisation layer of its channels, and
# tracing into it fails on BatchNorm's ``if self.training`` (a traced value in control flow).
_LEAF_TYPES = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.Embedding, nn.RNNBase, nn.MultiheadAttention,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.LayerNorm, nn.GroupNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
) + _PASS_MODULES + _POOL_MODULES


_MAX_OPAQUE = 32  # submodules _trace may keep opaque before it gives up on a model


def _make_tracer(opaque: frozenset = frozenset()):
    from torch import fx

    class _LeafTracer(fx.Tracer):
        """torch.fx's tracer, with subclasses of the known layer, normalisation, activation and
        pooling types kept as leaves (the default keeps only classes defined inside ``torch.nn``),
        and the ``opaque`` submodules too. ``failed``: the innermost submodule whose forward raised."""

        failed: str | None = None

        def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
            return (module_qualified_name in opaque or isinstance(m, _LEAF_TYPES)
                    or super().is_leaf_module(m, module_qualified_name))

        def call_module(self, m, forward, args, kwargs):
            try:
                return super().call_module(m, forward, args, kwargs)
            except Exception:
                if self.failed is None:
                    self.failed = self.path_of_module(m)
                raise

    return _LeafTracer()


def _trace(model: nn.Module):
    """The torch.fx graph of ``model``, traced with the leaf rules above. Where that fails, as on
    Hugging Face models (control flow on input shapes and on ``return_dict``), two retries keep
    the rest of the model analysable: a submodule whose forward cannot be traced becomes one
    opaque call, and ``forward``'s arguments after the first take their defaults. The same model
    always gives the same graph."""
    opaque: set[str] = set()
    concrete = None
    while True:
        tracer = _make_tracer(frozenset(opaque))
        try:
            return tracer.trace(model, concrete_args=concrete)
        except Exception:
            if concrete is None and _default_args(model):  # first: the default path of forward
                concrete = _default_args(model)
            elif tracer.failed and tracer.failed not in opaque and len(opaque) < _MAX_OPAQUE:
                opaque.add(tracer.failed)
            else:
                raise


def _default_args(model: nn.Module) -> dict:
    """``forward``'s arguments after the first that have defaults, with them."""
    import inspect

    params = list(inspect.signature(model.forward).parameters.values())[1:]
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _opaque_reason(module_name: str, calls: dict, modules: dict) -> str:
    parts = module_name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:cut])
        if parent in calls:
            return f"it sits inside {type(modules[parent]).__name__} {parent!r}, which torch.fx traces as one opaque call"
    return "torch.fx never calls it (it is used outside forward, or inside an opaque module)"
