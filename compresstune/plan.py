"""The compression plan: what to do to each layer, and how to distil afterwards.

A :class:`CompressionPlan` maps layer FQNs (as reported by
:func:`compresstune.layers.discover`) to a :class:`LayerPlan`. Plans are frozen,
validated when built, and round-trip through JSON with a schema version.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from compresstune._validation import check_number, check_one_of, invalid
from compresstune.errors import PlanError

SCHEMA_VERSION = 2  # 2: `structured` is a fraction of the channel group; 1 (a bool) is still read
ALLOWED_BITS = (2, 3, 4, 5, 6, 7, 8, 16, 32)

__all__ = ["ALLOWED_BITS", "SCHEMA_VERSION", "CompressionPlan", "LayerPlan"]


@dataclass(frozen=True)
class LayerPlan:
    """How one layer is compressed.

    Args:
        sparsity: fraction of the (remaining) weights set to zero, in [0, 1).
        bits: weight bit-width; 2..8 are integer codes (symmetric, per output
            channel), 16 stores float16 and 32 leaves float32.
        rank: rank of the factorisation ``W = A @ B``; ``None`` means none.
        structured: fraction of output channels removed, in [0, 1). It applies
            to the layer's whole channel group (the layers a residual sum,
            concat or depthwise conv ties to it, see
            :attr:`Discovery.channel_groups <compresstune.layers.Discovery>`);
            layers of one group that ask for different fractions are an error.
            ``True`` is the schema-1 form: ``LayerPlan(sparsity=s,
            structured=True)`` means ``LayerPlan(structured=s)``.

    Example:
        >>> LayerPlan(sparsity=0.5, bits=4)
        LayerPlan(sparsity=0.5, bits=4, rank=None, structured=0.0)
        >>> LayerPlan(sparsity=0.25, structured=True)  # schema 1
        LayerPlan(sparsity=0.0, bits=32, rank=None, structured=0.25)
    """

    sparsity: float = 0.0
    bits: int = 32
    rank: int | None = None
    structured: float = 0.0

    def __post_init__(self) -> None:
        if self.structured is True:  # schema 1: whole channels, `sparsity` of them
            object.__setattr__(self, "structured", self.sparsity)
            object.__setattr__(self, "sparsity", 0.0)
        elif self.structured is False:
            object.__setattr__(self, "structured", 0.0)
        check_number("sparsity", self.sparsity, "a number in [0, 1)", lambda v: 0 <= v < 1, PlanError)
        check_number("structured", self.structured, "a fraction of channels in [0, 1) (or True/False, schema 1)",
                     lambda v: 0 <= v < 1, PlanError)
        check_one_of("bits", self.bits, ALLOWED_BITS, PlanError)
        if self.rank is not None:
            if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
                raise invalid("rank", "None or an integer >= 1", self.rank, PlanError)
        object.__setattr__(self, "sparsity", float(self.sparsity))
        object.__setattr__(self, "structured", float(self.structured))

    @property
    def is_identity(self) -> bool:
        """True when the plan leaves the layer exactly as it is."""
        return self.sparsity == 0 and self.structured == 0 and self.bits == 32 and self.rank is None

    def to_dict(self) -> dict[str, Any]:
        return {"sparsity": self.sparsity, "bits": self.bits, "rank": self.rank, "structured": self.structured}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "layer") -> "LayerPlan":
        if not isinstance(data, Mapping):
            raise PlanError(f"{where} must be a mapping with fields sparsity, bits, rank, structured; got {data!r}.")
        unknown = set(data) - {"sparsity", "bits", "rank", "structured"}
        if unknown:
            raise PlanError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: sparsity, bits, rank, structured.")
        try:
            return cls(**data)
        except PlanError as exc:
            raise PlanError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class CompressionPlan:
    """A per-layer plan plus the distillation settings of the recovery fine-tune.

    Args:
        layers: layer FQN -> :class:`LayerPlan`. Layers not named are left alone.
        temperature: distillation temperature ``T`` (> 0).
        alpha: weight of the distillation term, in [0, 1]; ``1 - alpha`` goes
            to the cross-entropy with the labels.

    Example:
        >>> plan = CompressionPlan({"fc": LayerPlan(sparsity=0.9, bits=4)})
        >>> CompressionPlan.from_json(plan.to_json()) == plan
        True
    """

    layers: Mapping[str, LayerPlan] = field(default_factory=dict)
    temperature: float = 4.0
    alpha: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.layers, Mapping):
            raise PlanError(f"`layers` must be a mapping of layer name -> LayerPlan; got {type(self.layers).__name__}.")
        for name, lp in self.layers.items():
            if not isinstance(name, str):  # "" is valid: the root module (e.g. a bare nn.Linear)
                raise PlanError(f"layer names must be strings (module FQNs); got {name!r}.")
            if not isinstance(lp, LayerPlan):
                raise PlanError(f"`layers[{name!r}]` must be a LayerPlan; got {type(lp).__name__}.")
        check_number("temperature", self.temperature, "a number > 0", lambda v: v > 0, PlanError)
        check_number("alpha", self.alpha, "a number in [0, 1]", lambda v: 0 <= v <= 1, PlanError)
        object.__setattr__(self, "layers", MappingProxyType(dict(self.layers)))
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "alpha", float(self.alpha))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompressionPlan):
            return NotImplemented
        return (dict(self.layers), self.temperature, self.alpha) == (dict(other.layers), other.temperature, other.alpha)

    def __hash__(self) -> int:
        return hash(self.to_json())

    def __reduce__(self):
        # MappingProxyType does not pickle; plans cross process boundaries (Ray) and deepcopy.
        return (CompressionPlan.from_dict, (self.to_dict(),))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k!r}: {v}" for k, v in self.layers.items())
        return f"CompressionPlan({{{inner}}}, temperature={self.temperature}, alpha={self.alpha})"

    # -- construction -----------------------------------------------------
    @classmethod
    def uniform(
        cls,
        model,
        *,
        sparsity: float = 0.0,
        bits: int = 32,
        rank_fraction: float | None = None,
        structured: float | bool = 0.0,
        temperature: float = 4.0,
        alpha: float = 0.5,
        layers: Iterable[str] | None = None,
    ) -> "CompressionPlan":
        """The same settings for every compressible layer of ``model``.

        ``rank_fraction`` is a fraction of each layer's full rank; a layer where
        the factorisation would not save storage gets no factorisation.
        ``structured`` is the fraction of every channel group's channels
        removed (``True``, as in schema 1, means ``sparsity`` of them and no
        unstructured sparsity); layers that cannot take it get ``sparsity``
        unstructured instead.

        Example:
            >>> import torch.nn as nn
            >>> plan = CompressionPlan.uniform(nn.Linear(8, 4), sparsity=0.5, bits=4)
            >>> plan.layers[""].bits
            4
        """
        from compresstune.layers import discover, effective_shapes  # layers imports torch; plan alone does not

        found = discover(model, trace=bool(structured))  # the graph only matters for structured pruning
        names = list(found.layers) if layers is None else list(layers)
        found.check_names(names)
        names = list(dict.fromkeys(found.canonical(n) for n in names))  # a tied weight gets one plan
        fraction, rest = (sparsity, 0.0) if structured is True else (float(structured), sparsity)
        per_layer = {}
        for name in names:
            if fraction and found.layers[name].structured_ok is None:
                per_layer[name] = LayerPlan(sparsity=rest, bits=bits, structured=fraction)
            else:
                per_layer[name] = LayerPlan(sparsity=sparsity if structured is True else rest, bits=bits)
        if rank_fraction is not None:
            # Ranks are fractions of the shapes left after structured pruning, which shrinks consumers too.
            shapes = effective_shapes(found, per_layer)
            for name in names:
                rank = found.layers[name].rank_for_fraction(rank_fraction, shape=shapes[name])
                per_layer[name] = dataclasses.replace(per_layer[name], rank=rank)
        return cls(per_layer, temperature=temperature, alpha=alpha)

    # -- serialisation -----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "temperature": self.temperature,
            "alpha": self.alpha,
            "layers": {name: lp.to_dict() for name, lp in self.layers.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CompressionPlan":
        if not isinstance(data, Mapping):
            raise PlanError(f"a plan must be a mapping; got {type(data).__name__}.")
        version = data.get("schema_version")
        if version not in (1, SCHEMA_VERSION):
            raise PlanError(f"`schema_version` must be 1 or {SCHEMA_VERSION}; got {version!r}.")
        unknown = set(data) - {"schema_version", "temperature", "alpha", "layers"}
        if unknown:
            raise PlanError(f"unknown plan field(s) {sorted(unknown)}; allowed: schema_version, temperature, alpha, layers.")
        raw_layers = data.get("layers", {})
        if not isinstance(raw_layers, Mapping):
            raise PlanError(f"`layers` must be a mapping; got {type(raw_layers).__name__}.")
        layers = {name: LayerPlan.from_dict(v, where=f"layers[{name!r}]") for name, v in raw_layers.items()}
        return cls(layers, temperature=data.get("temperature", 4.0), alpha=data.get("alpha", 0.5))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "CompressionPlan":
        try:
            data = json.loads(text)
        except (TypeError, json.JSONDecodeError) as exc:
            raise PlanError(f"plan JSON could not be parsed: {exc}") from None
        return cls.from_dict(data)

    # -- queries -----------------------------------------------------------
    @property
    def active(self) -> dict[str, LayerPlan]:
        """The layers whose plan changes something."""
        return {k: v for k, v in self.layers.items() if not v.is_identity}
