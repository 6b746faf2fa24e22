"""The search space: the study config's ``space`` section fitted to one model."""

from __future__ import annotations

import dataclasses
import decimal
from dataclasses import dataclass
from typing import Any, Mapping

from optuna.distributions import BaseDistribution
from optuna.trial import FixedTrial
from torch import nn

from compresstune.compress import effective_shapes
from compresstune.search._schema import FloatRange, SpaceConfig, StudyConfig
from compresstune._validation import check_number
from compresstune.errors import ConfigError
from compresstune.layers import Discovery, LayerInfo, discover
from compresstune.plan import ALLOWED_BITS, CompressionPlan, LayerPlan

from ._params import CategoricalParam, Fixed, FloatParam, Knob
from ._select import assign_groups, group_knobs, resolve_knobs, select_layers

__all__ = ["Space"]

DEFAULT_TEMPERATURE = 4.0
DEFAULT_ALPHA = 0.5


@dataclass(frozen=True)
class _Unit:
    """One set of parameters: a single layer (prefix = its FQN) or a group."""

    prefix: str
    members: tuple[str, ...]
    group: str | None
    sparsity: Knob
    bits: Knob
    rank_fraction: Knob
    structured: Knob

    @property
    def knobs(self) -> tuple[Knob, Knob, Knob, Knob]:
        return self.sparsity, self.bits, self.rank_fraction, self.structured


# -- building the knobs -------------------------------------------------------------

def _float_knob(name: str, rng: FloatRange) -> Knob:
    if rng.fixed:
        return Fixed(float(rng.low))
    high, step = rng.high, rng.step
    if step is not None:
        # Same arithmetic as Optuna, so it never warns about an adjusted `high`.
        d_low, d_high, d_step = (decimal.Decimal(str(v)) for v in (rng.low, high, step))
        high = float(((d_high - d_low) // d_step) * d_step + d_low)
        if high <= rng.low:
            return Fixed(float(rng.low))
    return FloatParam(name, float(rng.low), float(high), step=step, log=rng.log)


def _choice_knob(name: str, choices) -> Knob:
    choices = tuple(choices)
    return Fixed(choices[0]) if len(choices) == 1 else CategoricalParam(name, choices)


def _can(infos: list[LayerInfo], *ops: str) -> bool:
    """True when at least one member can take every operator in ``ops``."""
    return any(all(op not in info.refused for op in ops) for info in infos)


def _fraction_choices(fractions, infos: list[LayerInfo]) -> list[float]:
    """Fractions that give distinct factorisations; those that do not make any member
    smaller collapse into 1.0 (no factorisation)."""
    by_ranks: dict[Any, float] = {}
    for fraction in sorted(fractions):
        ranks = tuple(info.rank_for_fraction(fraction) for info in infos) if fraction < 1 else None
        if ranks is not None and all(r is None for r in ranks):
            ranks = None
        by_ranks.setdefault(ranks, 1.0 if ranks is None else float(fraction))
    return sorted(set(by_ranks.values()))


def _build_unit(prefix: str, members: list[str], group: str | None, settings: dict, found: Discovery,
                leaders: dict[str, str]) -> _Unit:
    infos = [found.layers[m] for m in members]
    sparsity = _float_knob(f"{prefix}:sparsity", settings["sparsity"]) if _can(infos, "prune") else Fixed(0.0)
    bits = settings["bits"] if _can(infos, "quantize") else [32]
    never_sparse = isinstance(sparsity, Fixed) and sparsity.value == 0
    # A channel group is one unit: only its leader's knob decides whether (and how much) it is pruned.
    leads = [info for info in infos if leaders.get(info.name) == info.name]
    structured = [False] if never_sparse or not _can(leads, "prune", "structured") else settings["structured"]
    return _Unit(
        prefix=prefix,
        members=tuple(members),
        group=group,
        sparsity=sparsity,
        bits=_choice_knob(f"{prefix}:bits", bits),
        rank_fraction=_choice_knob(f"{prefix}:rank_fraction", _fraction_choices(settings["rank_fraction"], infos)),
        structured=_choice_knob(f"{prefix}:structured", structured),
    )


def _rank(info: LayerInfo, shape: tuple[int, int], fraction: float) -> int | None:
    if fraction >= 1:
        return None
    # The rank is taken on the matrix left after structured pruning (of this layer
    # or of the layer feeding it), so it never exceeds the shrunken shape.
    return dataclasses.replace(info, shape=shape).rank_for_fraction(fraction)


# -- the space ------------------------------------------------------------------------

class Space:
    """Per-layer compression knobs of one model, as Optuna parameters.

    Build it with :meth:`from_config`. ``suggest`` only calls ``trial.suggest_*``
    and is replayable with :meth:`decode`; every plan it returns is valid for
    the model (choices a layer cannot take are removed when the space is built).

    Parameter names: ``"<layer FQN>:sparsity"``, ``":bits"``, ``":rank_fraction"``,
    ``":structured"``; ``"<group>:<knob>"`` for a group; ``"distill:temperature"``
    and ``"distill:alpha"``. A fixed knob creates no parameter.

    Example:
        >>> import optuna, torch.nn as nn
        >>> model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
        >>> space = Space.from_config({"bits": [4, 8], "rank_fraction": None}, model)
        >>> space.param_names
        ['0:sparsity', '0:bits', '2:sparsity', '2:bits', 'distill:temperature', 'distill:alpha']
        >>> trial = optuna.create_study().ask()
        >>> plan = space.suggest(trial)
        >>> space.decode(trial.params) == plan
        True
    """

    def __init__(self, *, discovery: Discovery, units: list[_Unit], temperature: Knob, alpha: Knob,
                 groups: dict[str, list[str]]) -> None:
        self._found = discovery
        self._units = tuple(units)
        self._temperature = temperature
        self._alpha = alpha
        order = {name: i for i, name in enumerate(discovery.layers)}
        self._layers = sorted((m for u in units for m in u.members), key=order.__getitem__)
        self._groups = {name: tuple(members) for name, members in groups.items()}
        self._leaders = channel_leaders(discovery, self._layers)
        self._params = [k for u in self._units for k in u.knobs if not isinstance(k, Fixed)]
        self._params += [k for k in (temperature, alpha) if not isinstance(k, Fixed)]
        names = [p.name for p in self._params]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ConfigError(f"parameter names clash: {dup}; rename the group or layer involved.")

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_config(cls, space_cfg: SpaceConfig | StudyConfig | Mapping | None, model: nn.Module, *,
                    discovery: Discovery | None = None) -> "Space":
        """Fit the ``space`` section of a study config to ``model``.

        Args:
            space_cfg: a :class:`SpaceConfig`, a whole :class:`StudyConfig`, the
                plain ``space`` mapping, or None for the defaults.
            model: the (trained) model to compress.
            discovery: ``discover(model)`` when already computed.

        Raises:
            ConfigError: a selector that matches no layer (listing close names
                and the layers), conflicting group settings, a layer FQN
                containing "/".

        Example:
            >>> import torch.nn as nn
            >>> model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
            >>> Space.from_config({"types": ["conv2d"], "bits": 8, "sparsity": 0.5}, model).layers
            ['0']
        """
        cfg = _space_config(space_cfg)
        found = discover(model) if discovery is None else discovery
        selected = select_layers(found, cfg)
        slashed = [n for n in selected if "/" in n]
        if slashed:
            raise ConfigError(f"layer name {slashed[0]!r} contains '/', which cannot be used in parameter names "
                              "(Ray Tune splits on it); exclude the layer or rename the module.")
        per_layer = resolve_knobs(found, cfg, selected)
        groups = assign_groups(found, cfg, selected)
        units = _units(found, cfg, selected, per_layer, groups)
        return cls(
            discovery=found, units=units, groups=groups,
            temperature=_float_knob("distill:temperature", cfg.temperature),
            alpha=_float_knob("distill:alpha", cfg.alpha),
        )

    # -- queries ---------------------------------------------------------------------
    @property
    def layers(self) -> list[str]:
        """The searched layers' FQNs, in model order."""
        return list(self._layers)

    @property
    def groups(self) -> dict[str, tuple[str, ...]]:
        """Group name -> member FQNs."""
        return dict(self._groups)

    @property
    def param_names(self) -> list[str]:
        """Names of the parameters ``suggest`` creates, in the order it creates them."""
        return [p.name for p in self._params]

    @property
    def discovery(self) -> Discovery:
        """What :func:`~compresstune.layers.discover` found in the model."""
        return self._found

    def distributions(self) -> dict[str, BaseDistribution]:
        """Parameter name -> Optuna distribution (a static view of the same space).

        Example:
            >>> import torch.nn as nn
            >>> space = Space.from_config({"bits": [4, 8], "sparsity": 0.5, "rank_fraction": None,
            ...                            "temperature": 4, "alpha": 0.5}, nn.Linear(8, 8))
            >>> space.distributions()
            {':bits': CategoricalDistribution(choices=(4, 8))}
        """
        return {p.name: p.distribution() for p in self._params}

    # -- sampling --------------------------------------------------------------------
    def suggest(self, trial) -> "CompressionPlan":
        """Draw a plan: calls only ``trial.suggest_float`` / ``trial.suggest_categorical``.

        Example:
            >>> import torch.nn as nn
            >>> from optuna.trial import FixedTrial
            >>> space = Space.from_config({"bits": [4, 8], "sparsity": 0.5, "rank_fraction": None}, nn.Linear(8, 8))
            >>> space.suggest(FixedTrial({":bits": 4, "distill:temperature": 2.0, "distill:alpha": 0.3})).layers[""]
            LayerPlan(sparsity=0.5, bits=4, rank=None, structured=0.0)
        """
        chosen = {}
        for unit in self._units:
            values = tuple(knob.sample(trial) for knob in unit.knobs)
            chosen.update((m, values) for m in unit.members)
        temperature = self._temperature.sample(trial)
        alpha = self._alpha.sample(trial)
        return self._plan(chosen, temperature, alpha)

    def _plan(self, chosen: dict[str, tuple], temperature: float, alpha: float) -> CompressionPlan:
        plans = {}
        for name in self._layers:
            sparsity, bits, _, _ = chosen[name]
            refused = self._found.layers[name].refused
            sparsity = 0.0 if "prune" in refused else float(sparsity)
            bits = 32 if "quantize" in refused else int(bits)
            fraction = self._channel_fraction(name, chosen)
            if fraction is not None:  # the group's leader chose structured: `sparsity` is then its fraction
                leader = self._leaders[name]
                own = 0.0 if leader == name or chosen[name][3] else sparsity
                plans[name] = LayerPlan(sparsity=own, bits=bits, structured=fraction)
            else:
                plans[name] = LayerPlan(sparsity=sparsity, bits=bits)
        shapes = effective_shapes(self._found, plans)
        layers = {
            name: dataclasses.replace(lp, rank=_rank(self._found.layers[name], shapes[name], chosen[name][2]))
            for name, lp in plans.items()
        }
        return CompressionPlan(layers, temperature=float(temperature), alpha=float(alpha))

    def _channel_fraction(self, name: str, chosen: dict[str, tuple]) -> float | None:
        """The channel fraction of ``name``'s group, when its leader chose structured pruning."""
        leader = self._leaders.get(name)
        if leader is None or "structured" in self._found.layers[leader].refused:
            return None
        sparsity, _, _, structured = chosen[leader]
        if not structured or "prune" in self._found.layers[leader].refused or not sparsity:
            return None
        return float(sparsity)

    def decode(self, params: Mapping[str, Any]) -> CompressionPlan:
        """The plan ``suggest`` gives for these parameter values (e.g. ``trial.params``).

        Raises:
            ConfigError: a parameter is missing or holds a value outside its
                distribution (the study was made with a different space).

        Example:
            >>> import torch.nn as nn
            >>> space = Space.from_config({"bits": [4, 8], "sparsity": 0.5, "rank_fraction": None}, nn.Linear(8, 8))
            >>> space.decode({":bits": 8, "distill:temperature": 2.0, "distill:alpha": 0.3}).layers[""].bits
            8
        """
        if not isinstance(params, Mapping):
            raise ConfigError(f"`params` must be a mapping of parameter name -> value; got {type(params).__name__}.")
        missing = [p.name for p in self._params if p.name not in params]
        if missing:
            raise ConfigError(f"`params` lacks {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
                              f"this space needs {len(self._params)} parameters (see `param_names`).")
        fixed = {}
        for p in self._params:
            value = p.normalise(params[p.name])
            if value is None:
                raise ConfigError(f"parameter {p.name!r} = {params[p.name]!r} is outside this space "
                                  f"(allowed: {p.describe()}); was the study made with another config?")
            fixed[p.name] = value
        return self.suggest(FixedTrial(fixed))

    def uniform_params(
        self,
        sparsity: float,
        bits: int,
        rank_fraction: float | None = None,
        *,
        structured: bool = False,
        temperature: float | None = None,
        alpha: float | None = None,
    ) -> dict[str, Any]:
        """Parameters (for ``study.enqueue_trial``) that decode to one setting for every
        layer, clamped to what each layer's knobs allow: sparsity clipped to its
        range (and step grid), the nearest allowed bits (ties: the larger), the
        nearest allowed rank fraction (a fraction that does not shrink a layer
        counts as 1.0, no factorisation). ``temperature`` / ``alpha`` default to
        4.0 / 0.5, clipped to their ranges.

        Example:
            >>> import torch.nn as nn
            >>> space = Space.from_config({"bits": [4, 8], "rank_fraction": None}, nn.Linear(8, 8))
            >>> space.uniform_params(0.5, 6)
            {':sparsity': 0.5, ':bits': 8, 'distill:temperature': 4.0, 'distill:alpha': 0.5}
        """
        check_number("sparsity", sparsity, "a number in [0, 1)", lambda v: 0 <= v < 1, ConfigError)
        if isinstance(bits, bool) or bits not in ALLOWED_BITS:
            raise ConfigError(f"`bits` must be one of {list(ALLOWED_BITS)}; got {bits!r}.")
        if rank_fraction is not None:
            check_number("rank_fraction", rank_fraction, "None or a number in (0, 1]", lambda v: 0 < v <= 1, ConfigError)
        if not isinstance(structured, bool):
            raise ConfigError(f"`structured` must be True or False; got {structured!r}.")
        temperature = DEFAULT_TEMPERATURE if temperature is None else temperature
        alpha = DEFAULT_ALPHA if alpha is None else alpha
        check_number("temperature", temperature, "a number > 0", lambda v: v > 0, ConfigError)
        check_number("alpha", alpha, "a number in [0, 1]", lambda v: 0 <= v <= 1, ConfigError)
        params: dict[str, Any] = {}
        for unit in self._units:
            infos = [self._found.layers[m] for m in unit.members]
            wanted = (sparsity, bits, _fraction_target(rank_fraction, infos), structured)
            for knob, value in zip(unit.knobs, wanted):
                if not isinstance(knob, Fixed):
                    params[knob.name] = _clamp(knob, value)
        for knob, value in ((self._temperature, temperature), (self._alpha, alpha)):
            if not isinstance(knob, Fixed):
                params[knob.name] = _clamp(knob, value)
        return params

    # -- display ----------------------------------------------------------------------
    def describe(self) -> str:
        """A table of the searched layers and their knobs, for the CLI.

        Example:
            >>> import torch.nn as nn
            >>> print(Space.from_config({"bits": [4, 8]}, nn.Sequential(nn.Linear(8, 8))).describe())  # doctest: +ELLIPSIS
            Search space: 1 layer, 5 parameters
            ...
        """
        return _describe(self)

    def __repr__(self) -> str:
        return f"Space({len(self._layers)} layers, {len(self._params)} parameters)"


# -- helpers ---------------------------------------------------------------------------

def _space_config(space_cfg) -> SpaceConfig:
    if space_cfg is None:
        return SpaceConfig()
    if isinstance(space_cfg, StudyConfig):
        return space_cfg.space
    if isinstance(space_cfg, SpaceConfig):
        return space_cfg
    if isinstance(space_cfg, Mapping):
        from compresstune.search._schema import _format_errors  # one error format for every config error
        from pydantic import ValidationError

        try:
            return SpaceConfig.model_validate(dict(space_cfg))
        except ValidationError as exc:
            raise ConfigError(_format_errors(exc, SpaceConfig, "(space section)")) from None
    raise ConfigError(f"`space_cfg` must be a SpaceConfig, a StudyConfig or a mapping; got {type(space_cfg).__name__}.")


def channel_leaders(found: Discovery, selected: list[str]) -> dict[str, str]:
    """Searched layer -> the first searched layer of its channel group (whose ``structured`` knob
    and sparsity decide the whole group's channel fraction)."""
    leaders: dict[str, str] = {}
    first: dict[str, str] = {}
    for name in selected:  # model order
        group = found.layers[name].channel_group
        if group is not None:
            leaders[name] = first.setdefault(group, name)
    return leaders


def _units(found: Discovery, cfg: SpaceConfig, selected: list[str], per_layer: dict, groups: dict) -> list[_Unit]:
    leaders = channel_leaders(found, selected)
    group_of = {m: g for g, members in groups.items() for m in members}
    index = {g.name: i for i, g in enumerate(cfg.groups)}
    units, done = [], set()
    for name in selected:  # model order; a group sits where its first member is
        group = group_of.get(name)
        if group is None:
            units.append(_build_unit(name, [name], None, per_layer[name], found, leaders))
        elif group not in done:
            done.add(group)
            settings = group_knobs(index[group], cfg.groups[index[group]], groups[group], per_layer)
            units.append(_build_unit(group, groups[group], group, settings, found, leaders))
    return units


def _fraction_target(rank_fraction: float | None, infos: list[LayerInfo]) -> float:
    if rank_fraction is None or rank_fraction >= 1:
        return 1.0
    if all(info.rank_for_fraction(rank_fraction) is None for info in infos):
        return 1.0  # does not shrink any member: means "no factorisation"
    return float(rank_fraction)


def _clamp(knob: Knob, value: Any) -> Any:
    if isinstance(knob, FloatParam):
        return knob.clip(value)
    if isinstance(value, bool):
        return value if value in knob.choices else knob.choices[0]
    return knob.nearest(value)


def _describe(space: Space) -> str:
    found = space._found
    header = ("layer", "kind", "shape", "group", "sparsity", "bits", "rank_fraction", "structured", "notes")
    rows = []
    for unit in space._units:
        for name in unit.members:
            info = found.layers[name]
            knobs = [k.describe() for k in unit.knobs]
            notes = "; ".join(_short(f"no {op}: {why}") for op, why in info.refused.items())
            rows.append((name or "<root>", info.kind, "x".join(map(str, info.shape)), unit.group or "", *knobs, notes))
    order = {name or "<root>": i for i, name in enumerate(found.layers)}
    rows.sort(key=lambda r: order[r[0]])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"Search space: {len(space._layers)} layer{'s' if len(space._layers) != 1 else ''}, "
             f"{len(space._params)} parameter{'s' if len(space._params) != 1 else ''}"]
    for row in [header, *rows]:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    lines.append(f"distill: temperature {space._temperature.describe()}, alpha {space._alpha.describe()}")
    left_out = [n or "<root>" for n in found.layers if n not in set(space._layers)]
    if left_out:
        lines.append(f"not searched (left as they are): {', '.join(left_out)}")
    return "\n".join(lines)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
