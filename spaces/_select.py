"""Layer selection and knob resolution: config selectors -> per-layer settings.

Priority per layer and knob: global < type < pattern < exact name; later
overrides of the same priority win. Every selector must match something.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from typing import Any, Iterable

from compresstune.search._schema import Override, SpaceConfig
from compresstune.errors import ConfigError
from compresstune.layers import Discovery

PRIORITY = ("type", "pattern", "name")
KNOBS = ("sparsity", "bits", "rank_fraction", "structured")


def pattern_hits(pattern: str, name: str) -> bool:
    """fnmatch glob (case-sensitive) or ``re:<regex>`` (full match) against one name."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def _names_of(found: Discovery, layer: str) -> tuple[str, ...]:
    return (layer,) + found.layers[layer].aliases


def _matching(found: Discovery, pattern: str, pool: Iterable[str]) -> list[str]:
    return [n for n in pool if any(pattern_hits(pattern, a) for a in _names_of(found, n))]


def _preview(names: list[str], found: Discovery, limit: int = 20) -> str:
    shown = ", ".join(f"{n or '<root>'} ({found.layers[n].kind})" for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _candidates(names: Iterable[str]) -> list[str]:
    """Names plus every dotted prefix as ``prefix.*``, for did-you-mean hints."""
    out = []
    for name in names:
        out.append(name)
        parts = name.split(".")
        out.extend(".".join(parts[:i]) + ".*" for i in range(1, len(parts)))
    return list(dict.fromkeys(out))


def no_match(field: str, what: str, value: str, found: Discovery, pool: list[str], note: str = "") -> ConfigError:
    """The error for a selector that matches nothing, with close names and the layers."""
    known = _candidates(list(pool) + [a for n in pool for a in found.layers[n].aliases])
    probe = value[3:] if value.startswith("re:") else value
    close = difflib.get_close_matches(probe, known, n=3, cutoff=0.5)
    skipped = [f"{m!r} ({why})" for m, why in found.skipped.items() if m and pattern_hits(value, m)]
    parts = [f"`{field}` {what} {value!r} matches no {'selected' if note else 'compressible'} layer{note}."]
    if skipped:
        parts.append(f"It matches modules that are not compressed: {'; '.join(skipped[:3])}.")
    if close:
        parts.append(f"Close names: {', '.join(close)}.")
    parts.append(f"Available layers: {_preview(pool, found)}.")
    return ConfigError(" ".join(parts))


def select_layers(found: Discovery, cfg: SpaceConfig) -> list[str]:
    """The layers the space searches, in model order (include, then exclude, then types)."""
    everything = list(found.layers)
    if not everything:
        skipped = "; ".join(f"{m or '<root>'}: {why}" for m, why in list(found.skipped.items())[:5])
        raise ConfigError(f"the model has no compressible layer{f' (skipped: {skipped})' if skipped else ''}.")
    included: set[str] = set()
    for i, pattern in enumerate(cfg.include):
        hits = _matching(found, pattern, everything)
        if not hits:
            raise no_match(f"space.include[{i}]", "pattern", pattern, found, everything)
        included.update(hits)
    excluded: set[str] = set()
    for i, pattern in enumerate(cfg.exclude):
        hits = _matching(found, pattern, everything)
        if not hits:
            raise no_match(f"space.exclude[{i}]", "pattern", pattern, found, everything)
        excluded.update(hits)
    selected = [n for n in everything if n in included and n not in excluded]
    if cfg.types is not None:
        kinds = sorted({found.layers[n].kind for n in everything})
        for i, kind in enumerate(cfg.types):
            if kind not in kinds:
                raise ConfigError(f"`space.types[{i}]` {kind!r} matches no compressible layer; "
                                  f"the model has layers of kind {', '.join(kinds)}.")
        selected = [n for n in selected if found.layers[n].kind in cfg.types]
    if not selected:
        raise ConfigError(f"no layer is left to search after include={cfg.include}, exclude={cfg.exclude}, "
                          f"types={cfg.types}. Available layers: {_preview(everything, found)}.")
    return selected


def _override_hits(found: Discovery, override: Override, pool: list[str]) -> list[str]:
    key, value = override.selector
    if key == "type":
        return [n for n in pool if found.layers[n].kind == value]
    if key == "pattern":
        return _matching(found, value, pool)
    canon = found.canonical(value)
    return [canon] if canon in pool else []


def _left_out_note(found: Discovery, hits_all: list[str]) -> str:
    if not hits_all:
        return ""
    return f" (it only matches layers left out by include/exclude/types: {', '.join(hits_all[:5])})"


def _check_override(found: Discovery, i: int, override: Override, selected: list[str]) -> list[str]:
    hits = _override_hits(found, override, selected)
    if hits:
        return hits
    key, value = override.selector
    field = f"space.overrides[{i}].{key}"
    everything = list(found.layers)
    note = _left_out_note(found, _override_hits(found, override, everything)) or " "
    if key == "type":
        kinds = sorted({found.layers[n].kind for n in selected})
        raise ConfigError(f"`{field}` {value!r} matches no selected layer{note.rstrip()}; "
                          f"the selected layers are of kind {', '.join(kinds)}.")
    raise no_match(field, key, value, found, selected, note.rstrip())


def resolve_knobs(found: Discovery, cfg: SpaceConfig, selected: list[str]) -> dict[str, dict[str, Any]]:
    """Per selected layer, the knob settings after applying overrides by priority."""
    hits = [_check_override(found, i, o, selected) for i, o in enumerate(cfg.overrides)]
    knobs = {name: dict(cfg.global_knobs()) for name in selected}
    for level in PRIORITY:
        for override, layers in zip(cfg.overrides, hits):
            if override.selector[0] != level:
                continue
            for name in layers:
                knobs[name].update(override.knobs_set())
    return knobs


def assign_groups(found: Discovery, cfg: SpaceConfig, selected: list[str]) -> dict[str, list[str]]:
    """Group name -> member layers (model order). A layer belongs to at most one group."""
    owner: dict[str, str] = {}
    groups: dict[str, list[str]] = {}
    for i, group in enumerate(cfg.groups):
        if group.name in found.layers or group.name in found.alias_of:
            raise ConfigError(f"`space.groups[{i}].name` {group.name!r} is also a layer name; "
                              "parameter names would clash. Pick another group name.")
        members = _matching(found, group.pattern, selected)
        if not members:
            note = _left_out_note(found, _matching(found, group.pattern, list(found.layers)))
            raise no_match(f"space.groups[{i}].pattern", "pattern", group.pattern, found, selected, note)
        for name in members:
            if name in owner:
                raise ConfigError(f"layer {name!r} matches both group {owner[name]!r} and group {group.name!r} "
                                  f"(`space.groups[{i}].pattern` {group.pattern!r}); a layer can be in one group.")
            owner[name] = group.name
        groups[group.name] = members
    return groups


def group_knobs(index: int, group, members: list[str], per_layer: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One set of knob settings for a group: the group's own, else the members' common ones."""
    out = {}
    own = group.knobs_set()
    for knob in KNOBS:
        if knob in own:
            out[knob] = own[knob]
            continue
        values = {name: per_layer[name][knob] for name in members}
        first = values[members[0]]
        differ = [n for n in members if values[n] != first]
        if differ:
            raise ConfigError(
                f"group {group.name!r} (`space.groups[{index}]`) shares one `{knob}` parameter, but overrides give "
                f"its layers different settings ({members[0]!r}: {_plain(first)}, {differ[0]!r}: "
                f"{_plain(values[differ[0]])}). Set `{knob}` on the group to say which to use.")
        out[knob] = first
    return out


def _plain(value: Any) -> str:
    if hasattr(value, "model_dump"):
        return str({k: v for k, v in value.model_dump().items() if v is not None and v is not False})
    return str(value)
