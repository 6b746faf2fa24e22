"""Per-layer sensitivity scan: the drop of the task's metric, without fine-tuning,
of compressing one searched layer (or group) alone at a few sparsity levels,
bit-widths and rank fractions, everything else untouched.

It is cheap by design: one ``apply`` and one batched evaluation under
``parametrize.cached()`` per cell, on a fixed validation subset of
``sensitivity.examples`` examples (512 by default: a binomial standard error of
about 2 points at 80 % accuracy, enough to rank layers, at a few hundred
forward passes per scan). For a preset whose validation data can be indexed
(in-memory tensors, every study file's ``Splits``, a map-style Dataset or a
DataLoader over one) the subset is a seeded random sample, stratified by label
when the labels are known without reading the data (tensors, or a dataset's
``targets``/``labels``), so that a split stored in class order is not scanned on
one class; the table stores the sample's baseline beside the whole split's
(``baseline_whole``) and the run warns when they differ by more than two standard
errors. Over an iterable that cannot be indexed the subset is its first examples
(its own order); a task that overrides ``evaluate`` is scanned on the whole split.
A drop is how much worse the metric gets: ``baseline - value`` for accuracy,
and, for any other metric, that change for the worse as a fraction of the
baseline (``"drop_unit": "relative"``), so that ``sensitivity.cliff`` reads the
same for a perplexity as for an F1. The result is plain JSON, cached in
``OUT/sensitivity.json`` (keyed by the config fingerprint, the baseline and the
scan settings) and stored in the study's user attrs as ``"sensitivity"``::

    {"version": 1, "key": "<sha256>", "fingerprint": "<config fingerprint>",
     "examples": 360, "baseline_accuracy": 0.978,        # on that subset
     "layers": ["conv1", "conv2", "fc1", "fc2"],         # searched units, model order
     "members": {"conv1": ["conv1"], ...},               # a group lists its layers
     "settings": ["sparsity 0.5", ..., "bits 2", ..., "rank 0.25", ..., "channels 0.25", ...],
     "knobs": [["sparsity", 0.5], ..., ["bits", 2], ..., ["rank_fraction", 0.25], ...],
     "accuracy": [[...], ...],                           # len(layers) x len(settings)
     "drop": [[...], ...],                               # baseline_accuracy - accuracy
     "metric": "accuracy", "drop_unit": "absolute",       # absent in older tables: accuracy
     "seconds": 1.3}

When the space searches structured pruning, ``channels`` cells prune a unit's
channel groups (through their first layers, as the space does) by 0.25, 0.5 and
0.75 of their channels: one cell per group-leading unit, the group as one unit.
The seed planner and the allocator read the sparsity, bits and rank cells only.
A cell is ``null`` where the layer cannot take that setting (an operator it
refuses, a rank that would not make it smaller, a unit that leads no group). ``drop`` may be slightly
negative (noise). :func:`~compresstune.search._seeds.before_search` is the controller's hook: it runs (or
reuses) the scan, narrows the space if asked, and enqueues the seed trials.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

from torch import nn

from compresstune.artifact import to_bytes
from compresstune.compress import apply
from compresstune.plan import CompressionPlan, LayerPlan
from compresstune.spaces._space import channel_leaders
from compresstune.task import Task, measure

__all__ = ["SCHEMA_VERSION", "cache_key", "format_table", "load_or_scan", "scan", "scan_study",
           "units"]

SCHEMA_VERSION = 2  # 2: a stratified random sample of the validation split, not its first rows
CACHE_FILE = "sensitivity.json"
_LABEL = {"sparsity": "sparsity", "bits": "bits", "rank_fraction": "rank", "structured": "channels"}
# Fractions of a channel group's channels scanned, for units that search structured pruning.
CHANNEL_LEVELS = (0.25, 0.5, 0.75)


def units(space) -> list[tuple[str, tuple[str, ...]]]:
    """The searched units of a space, in model order: ``(prefix, member layers)``.

    A unit is a layer with at least one searched knob, or a group; its prefix
    names its parameters (``"<prefix>:bits"``).
    """
    groups = space.groups
    seen: list[str] = []
    for name in space.param_names:
        prefix = name.rsplit(":", 1)[0]
        if prefix != "distill" and prefix not in seen:
            seen.append(prefix)
    return [(p, tuple(groups.get(p, (p,)))) for p in seen]


def _settings(cfg) -> list[tuple[str, Any]]:
    return ([("sparsity", float(s)) for s in cfg.sparsity] + [("bits", int(b)) for b in cfg.bits]
            + [("rank_fraction", float(r)) for r in cfg.rank_fraction])


def _label(knob: str, value: Any) -> str:
    return f"{_LABEL[knob]} {value:g}"


def _channel_settings(space) -> list[tuple[str, Any]]:
    """``("structured", f)`` cells when the space searches structured pruning (of any group)."""
    searched = any(name.endswith(":structured") for name in space.param_names)
    return [("structured", f) for f in CHANNEL_LEVELS] if searched else []


def _unit_plans(found, members, leaders: dict, knob: str, value: Any, structured: bool) -> dict[str, LayerPlan]:
    """One cell's plan. A channel fraction goes to the unit's channel-group leaders, as the space
    gives it (each then prunes its whole group)."""
    if knob == "structured":
        if not structured:
            return {}
        return {m: LayerPlan(structured=value) for m in members
                if leaders.get(m) == m and "structured" not in found.layers[m].refused}
    layers = {}
    for m in members:
        lp = _layer_plan(found.layers[m], knob, value)
        if lp is not None:
            layers[m] = lp
    return layers


def _layer_plan(info, knob: str, value: Any) -> LayerPlan | None:
    """The plan compressing one layer with one knob, or None when the layer cannot take it."""
    if knob == "sparsity":
        return None if "prune" in info.refused else LayerPlan(sparsity=value)
    if knob == "bits":
        return None if "quantize" in info.refused else LayerPlan(bits=value)
    rank = info.rank_for_fraction(value)
    return None if rank is None else LayerPlan(rank=rank)


def cache_key(fingerprint: str, baseline: dict, cfg, layers: list[str], *, channels: bool = False) -> str:
    """sha256 of what the scan depends on: the study fingerprint (model, data,
    space, ...), the baseline's accuracy and packed size, the scanned levels and
    subset size, and the scanned units (``channels``: the channel cells too)."""
    levels = _settings(cfg) + ([("structured", f) for f in CHANNEL_LEVELS] if channels else [])
    data = {"version": SCHEMA_VERSION, "fingerprint": fingerprint,
            "baseline": {k: baseline.get(k) for k in ("val_accuracy", "packed_bytes", "reference_bytes")},
            "levels": [[k, v] for k, v in levels], "examples": int(cfg.examples), "layers": list(layers)}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _drop_of(task: Task, base: float, value: float) -> float:
    worse = (base - value) if task.direction == "maximize" else (value - base)
    return worse if task.metric == "accuracy" else worse / max(abs(base), 1e-12)


SAMPLE_SEED = 0


def _sampled(task: Task, examples: int) -> Task | None:
    """The task over a seeded, stratified random sample of its validation split, when the preset
    can cut one (in-memory tensors); else None (the first ``examples`` examples are read)."""
    cut = getattr(task, "val_sample", None)
    return cut(examples, SAMPLE_SEED) if callable(cut) else None


def _representative(task: Task, sample: float, sums, whole: float | None, log) -> dict[str, Any]:
    """The sample's baseline beside the whole split's; a warning when they differ by more than two
    standard errors (the task's, when it gives one)."""
    out: dict[str, Any] = {"baseline_whole": whole}
    se = task.standard_error(sums) if sums else None
    if whole is None or se is None:
        return out
    out["differs"] = bool(abs(sample - whole) > 2 * se + 1e-12)
    if out["differs"] and log:
        log(f"sensitivity: warning: the scan's {task.metric} on its sample ({sample:.4f}) differs from the whole "
            f"validation split's ({whole:.4f}) by more than two standard errors ({se:.4f}); its drops may not "
            "represent the split. Raise `sensitivity.examples`.")
    return out


def scan(model: nn.Module, task: Task, space, cfg, *, key: str = "", fingerprint: str = "",
         log: Callable[[str], None] | None = None, whole: float | None = None) -> dict[str, Any]:
    """Measure the sensitivity table (see the module docstring for its shape).

    Args:
        model: the trained baseline (left untouched).
        task: the study's task; its first ``cfg.examples`` validation examples are used.
        space: the study's :class:`~compresstune.spaces.Space` (which units to scan).
        cfg: the ``sensitivity`` section of the study config.

    Example:
        >>> table = scan(model, task, space, config.sensitivity)  # doctest: +SKIP
        >>> table["layers"], table["settings"][:2]  # doctest: +SKIP
        (['conv1', 'conv2', 'fc1', 'fc2'], ['sparsity 0.5', 'sparsity 0.7'])
    """
    t0 = time.perf_counter()
    limit = int(cfg.examples)
    sample = _sampled(task, limit)
    task = sample or task
    base_acc, sums = measure(task, model, "val", examples=None if sample else limit)
    n = int(sums["n"]) if sums and "n" in sums else (limit if sums is not None else None)
    check = _representative(task, base_acc, sums, whole, log)
    found = space.discovery
    settings = _settings(cfg) + _channel_settings(space)
    unit_list = units(space)
    leaders = channel_leaders(found, space.layers)
    params = set(space.param_names)
    acc_rows, drop_rows = [], []
    for prefix, members in unit_list:
        acc_row, drop_row = [], []
        for knob, value in settings:
            layers = _unit_plans(found, members, leaders, knob, value, f"{prefix}:structured" in params)
            acc = None
            if layers:
                try:
                    acc = measure(task, apply(model, CompressionPlan(layers)), "val", examples=limit)[0]
                except Exception as exc:  # noqa: BLE001 - a cell that cannot be built stays empty
                    if log:
                        log(f"sensitivity: {prefix} {_label(knob, value)} skipped ({type(exc).__name__}: {exc})")
            acc_row.append(None if acc is None or not math.isfinite(acc) else float(acc))
            drop_row.append(None if acc_row[-1] is None else float(_drop_of(task, base_acc, acc_row[-1])))
        acc_rows.append(acc_row)
        drop_rows.append(drop_row)
    return {
        "version": SCHEMA_VERSION, "key": key, "fingerprint": fingerprint, "examples": n,
        "baseline_accuracy": float(base_acc), "layers": [p for p, _ in unit_list],
        "members": {p: list(m) for p, m in unit_list}, "settings": [_label(k, v) for k, v in settings],
        "knobs": [[k, v] for k, v in settings], "accuracy": acc_rows, "drop": drop_rows,
        "metric": task.metric, "drop_unit": "absolute" if task.metric == "accuracy" else "relative",
        "sample": f"{getattr(sample, 'sample_kind', 'stratified random')} (seed 0)" if sample else "first examples",
        **check,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _read_cache(path: Path, key: str) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("key") == key else None


def _write_cache(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def load_or_scan(config, out: Path, model: nn.Module, task: Task, space, baseline: dict, *,
                 force: bool = False, log: Callable[[str], None] | None = None) -> tuple[dict, bool]:
    """The scan from ``OUT/sensitivity.json`` when its key matches, else measured
    and cached. Returns ``(scan, from_cache)``."""
    cfg = config.sensitivity
    key = cache_key(config.fingerprint(), baseline, cfg, [p for p, _ in units(space)],
                    channels=bool(_channel_settings(space)))
    path = Path(out) / CACHE_FILE
    if not force:
        cached = _read_cache(path, key)
        if cached is not None:
            return cached, True
    data = scan(model, task, space, cfg, key=key, fingerprint=config.fingerprint(), log=log,
                whole=baseline.get("val_accuracy"))
    _write_cache(path, data)
    return data, False


# -- `compresstune sensitivity STUDY` ------------------------------------------------------------------------

def scan_study(config, *, force: bool = False, log: Callable[[str], None] = print) -> tuple[dict, Path, bool]:
    """The scan of a study config without running it: loads data and baseline
    (cached as ``run`` does), scans (or reads ``OUT/sensitivity.json``), and stores
    it in the study's user attrs when the study already exists with the same
    config. Returns ``(scan, path of the JSON, from_cache)``.

    Example:
        >>> table, path, cached = scan_study(load_config("studies/digits.yaml"))  # doctest: +SKIP
    """
    from compresstune.artifact import reference_size
    from compresstune.search._session import load_model_and_task
    from compresstune.spaces import Space

    out = Path(config.search.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    model, task = load_model_and_task(config, out)
    space = Space.from_config(config.space, model)
    baseline = {"val_accuracy": measure(task, model, "val")[0],
                "packed_bytes": len(to_bytes(model)), "reference_bytes": reference_size(model)}
    study = _existing_study(config, out)
    if study is not None and isinstance(study.user_attrs.get("baseline"), dict):
        baseline = study.user_attrs["baseline"]  # the key `run` computes on resume
    table, cached = load_or_scan(config, out, model, task, space, baseline, force=force, log=log)
    if study is not None and study.user_attrs.get("sensitivity", {}).get("key") != table["key"]:
        study.set_user_attr("sensitivity", table)
        log(f"stored in study {study.study_name!r}")
    return table, out / CACHE_FILE, cached


def _existing_study(config, out: Path):
    """The study in OUT when it exists and has the same config fingerprint, else None."""
    from compresstune.search._storage import load_study

    try:
        study = load_study(out)
    except Exception:  # noqa: BLE001 - no study yet: the scan is only cached
        return None
    return study if study.user_attrs.get("fingerprint") == config.fingerprint() else None


def format_table(table: dict) -> str:
    """The drops as a text table: one row per layer, one column per setting.

    Example:
        >>> print(format_table({"layers": ["fc"], "settings": ["bits 2"], "drop": [[0.1234]],
        ...                     "examples": 100, "baseline_accuracy": 0.9}))
        accuracy drop without fine-tuning (100 validation examples, baseline 0.9000)
        layer  bits 2
        fc     0.123
    """
    head = ["layer", *table["settings"]]
    rows = [[layer, *("-" if v is None else f"{v:.3f}" for v in drops)]
            for layer, drops in zip(table["layers"], table["drop"])]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows]]
    metric = table.get("metric", "accuracy")
    unit = " (relative)" if table.get("drop_unit") == "relative" else ""
    whole = f", {table['baseline_whole']:.4f} on the whole split" if table.get("baseline_whole") is not None else ""
    title = (f"{metric} drop{unit} without fine-tuning ({table['examples']} validation examples, "
             f"baseline {table['baseline_accuracy']:.4f}{whole})")
    return "\n".join([title, *lines])
