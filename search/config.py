"""The study config: one YAML file, validated before any compute.

A study file names the model and data factories, the search space, the
objectives, the recovery fine-tune and the search settings::

    name: digits
    model: {factory: "studies.digits:baseline", kwargs: {}}
    data:  {factory: "studies.digits:data", kwargs: {}}
    space:
      include: ["*"]
      exclude: []
      types: null
      sparsity: {low: 0.0, high: 0.95, step: null}
      bits: [2, 3, 4, 5, 6, 8, 16, 32]
      rank_fraction: [0.25, 0.5, 1.0]
      structured: [false]
      overrides:
        - {type: conv2d, bits: [4, 8]}
        - {pattern: "features.*", sparsity: {low: 0.0, high: 0.5}}
        - {name: "classifier.2", bits: 8}
      groups:
        - {name: stage1, pattern: "layer1.*"}
      temperature: {low: 1.0, high: 8.0, log: true}
      alpha: {low: 0.0, high: 1.0}
    objectives: [accuracy, size]    # optional third: latency, bops, macs, onnx_size or onnx_latency
    finetune: {steps: 200, batch_size: 64, lr: 0.001, optimizer: adam}
    constraints: {max_accuracy_drop: 0.02}   # and max_metric_drop, max_relative_drop, max_size_bytes,
                                             # min_ratio, max_bops, max_macs, max_latency_ms,
                                             # max_onnx_bytes, max_onnx_latency_ms (null: unset)
    search: {sampler: tpe, trials: 40, seed: 0}
    sensitivity: {enabled: true, seed_ratios: [4, 8, 16, 32, 64]}
    early_stopping: {enabled: false, margin_se: 2.0, rung_slack: 0.5, grace: 0.25}
    promotion: {enabled: false, steps: 800, every: null, ranks: 1, max_trials: 5}

Knobs. ``sparsity``, ``temperature`` and ``alpha`` take a range
``{low, high, step, log}`` or a plain number (fixed: no parameter is searched).
``bits``, ``rank_fraction`` and ``structured`` take a list of choices or a
single value (fixed). ``rank_fraction: 1.0`` (or ``null``) means no
factorisation; a fraction that would not make a layer smaller also means none
for that layer. ``structured: [false, true]`` searches structured pruning per
channel group (``discover(model).channel_groups``): only the group's first
searched layer gets the parameter, and when it is true that layer's sparsity is
the fraction of the whole group's channels removed (the other layers' own
sparsity then prunes single weights of what is left).

Priority of knob settings, per layer and per knob (as torch's
``QConfigMapping``): **global < type < pattern < exact name**. An override sets
only the knobs it names; among overrides of the same priority the later one in
the list wins. A group (``groups``) gives every layer its pattern matches ONE
set of parameters named after the group; knobs set on the group itself win over
everything, and otherwise its members must resolve to the same settings.

Search efficiency. ``sensitivity`` scans each searched layer's accuracy drop
without fine-tuning (cached in the output folder, stored in the study) and
enqueues seed trials at the ``seed_ratios`` before the sampler takes over;
``early_stopping`` stops a trial at a fine-tune rung when a no-larger trial is
clearly more accurate at the same rung; ``promotion`` runs the front's trials
(and near misses) again with a longer fine-tune after the search, each
replacing its short trial on the front. None of them changes what a trial
measures, so none is part of the study's fingerprint.

Costs beside size. A third objective (``latency``, ``bops``, ``macs``,
``onnx_size``, ``onnx_latency``) is minimised. ``macs`` is
:func:`compresstune.objectives.multiply_accumulates`: dense multiply-accumulates of
one example through the squashed plan, lowered by structured pruning and ranks only
(zeros and bit-widths do not change it). ``constraints.max_macs`` (a positive
number), like ``max_bops``, is checked before training: a plan over it is scored
without fine-tuning, with a positive ``max_macs`` constraint and ``rejected: budget``.
With either, every trial records its count as ``macs`` and the study's ``baseline``
the uncompressed model's.

Patterns are ``fnmatch`` globs on the layer FQN, or ``re:<regex>`` (full
match). Every problem (unknown key, value out of range, bad import path) is a
:class:`~compresstune.errors.ConfigError` naming the field path, the value and
what is allowed.

Example:
    >>> cfg = StudyConfig.from_dict({"name": "demo",
    ...     "model": {"factory": "studies.digits:baseline"},
    ...     "data": {"factory": "studies.digits:data"},
    ...     "finetune": {"steps": 300}})
    >>> cfg.finetune.steps, cfg.search.out
    (300, 'runs/demo')
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Mapping

import yaml

from compresstune.errors import ConfigError
from compresstune.search._imports import accepts, ensure_import_paths, resolve_import
from compresstune.search._schema import *  # noqa: F403 - the schema is this module's public surface
from compresstune.search._schema import __all__ as _SCHEMA_NAMES
from compresstune.search._schema import FactorySpec, StudyConfig, _search_changes

__all__ = [*_SCHEMA_NAMES, "check_factories", "ensure_import_paths", "load_config", "resolve_import"]


# -- loading ------------------------------------------------------------------------------

def load_config(path: str | os.PathLike, *, check_imports: bool = True, **overrides: Any) -> StudyConfig:
    """Read and validate a study YAML file.

    ``name`` defaults to the file stem and ``search.out`` to ``runs/<name>``.

    Args:
        path: the study YAML file.
        check_imports: put the study's folders on ``sys.path`` (see
            :func:`ensure_import_paths`) and check that the model and data
            factories import and accept their ``kwargs``.
        **overrides: ``search.*`` fields to replace (trials=, out=, storage=,
            sampler=, seed=, workers=, address=, max_failures=); ``None``
            values are ignored, so CLI flags can be passed through as they are.

    Raises:
        ConfigError: for any problem, before any compute.

    Example:
        >>> cfg = load_config("studies/digits.yaml", trials=80)  # doctest: +SKIP
        >>> cfg.search.trials  # doctest: +SKIP
        80
    """
    path = Path(path)
    raw = _read_yaml(path)
    raw.setdefault("name", path.stem)
    changes = _search_changes(overrides)
    if changes:
        search = raw.get("search") or {}
        if not isinstance(search, Mapping):
            raise ConfigError(f"`search` must be a mapping in {path}; got {search!r}.")
        raw["search"] = {**search, **changes}
    cfg = StudyConfig.from_dict(raw, source=str(path))
    if cfg.model is None:
        raise ConfigError(f"invalid study config in {path}: `model` is required: a study file names the factory of "
                          "the trained model, e.g. `model: {factory: \"pkg.module:baseline\"}` (and `data` or `task`).")
    if check_imports:
        ensure_import_paths(path)
        check_factories(cfg)
    return cfg


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"study file not found: {path} (working directory {os.getcwd()})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read study file {path}: {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (model, data, space, ...); "
                          f"got {type(raw).__name__}.")
    return raw


def check_factories(cfg: StudyConfig) -> None:
    """Import the model and data (or task) factories and check they accept their kwargs.

    Raises:
        ConfigError: a missing module or attribute, something not callable, or
            kwargs the function does not take.
    """
    reserved = {"model": ("data", "task", "cache_dir"), "data": ("cache_dir",), "task": ("cache_dir",)}
    for section in ("model", "data", "task"):
        spec: FactorySpec | None = getattr(cfg, section)
        if spec is None:
            continue
        fn = spec.resolve()
        if not callable(fn):
            raise ConfigError(f"`{section}.factory` {spec.factory!r} is a {type(fn).__name__}, not a callable.")
        clash = sorted(set(spec.kwargs) & set(reserved[section]))
        if clash:
            raise ConfigError(f"`{section}.kwargs` must not set {clash}: compresstune passes them.")
        probe = dict(spec.kwargs)
        probe.update({k: None for k in reserved[section] if k not in probe and accepts(fn, k)})
        try:
            inspect.signature(fn).bind(**probe)
        except TypeError as exc:
            raise ConfigError(f"`{section}.factory` {spec.factory!r} cannot be called with "
                              f"{sorted(probe)}: {exc}.") from None
        except ValueError:  # no signature (a builtin): nothing to check
            pass
