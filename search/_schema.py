"""The study schema: every section of a study file as a validated, frozen model,
the fingerprint of the fields that change results, the diff shown on a resume,
and one format for every config error. Loading the YAML file lives in
:mod:`compresstune.search.config`; importing the factories in ``_imports.py``."""


from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
import typing
from typing import Annotated, Any, Callable, Literal, Mapping

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from compresstune._validation import message
from compresstune.errors import ConfigError
from compresstune.plan import ALLOWED_BITS
from compresstune.search._imports import FACTORY_PATTERN as _FACTORY
from compresstune.search._imports import accepts as _accepts
from compresstune.search._imports import resolve_import

__all__ = [
    "KINDS",
    "OBJECTIVES",
    "ConstraintsConfig",
    "EarlyStoppingConfig",
    "FactorySpec",
    "FinetuneConfig",
    "PromotionConfig",
    "FloatRange",
    "GroupConfig",
    "LatencyConfig",
    "Override",
    "ResourcesConfig",
    "SearchConfig",
    "SensitivityConfig",
    "SpaceConfig",
    "StudyConfig",
    "config_diff",
]

from compresstune.layers import KINDS  # noqa: E402 - every kind discovery reports
OBJECTIVES = ("accuracy", "size", "latency", "bops", "macs", "onnx_size", "onnx_latency")
THIRD_OBJECTIVES = ("latency", "bops", "macs", "onnx_size", "onnx_latency")
# The parts of a config that define what a study measures; the rest (trials,
# out, storage, workers, address, ...) may change when a study is resumed.
FINGERPRINT_FIELDS = ("model", "data", "task", "space", "objectives", "finetune", "constraints", "activation_bits")
# Fields added after studies existed: omitted from the fingerprint while unset, so those studies resume.
_LATER_FIELDS = {"constraints": ("max_bops", "max_macs", "max_latency_ms", "max_onnx_bytes", "max_onnx_latency_ms",
                                 "max_metric_drop", "max_relative_drop")}
# Fields added later with a default that leaves the fingerprint of older studies as it was.
_OMITTED_DEFAULTS = {"finetune": {"batchnorm": "frozen"}}
_GROUP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_STUDY_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


# -- scalar types ------------------------------------------------------------------

def _no_bool(value: Any) -> Any:
    # YAML `true` must not silently become 1 / 1.0.
    if isinstance(value, bool):
        raise ValueError(f"must be a number, not a boolean; got {value!r}")
    return value


Num = Annotated[float, BeforeValidator(_no_bool), Field(allow_inf_nan=False)]
Int = Annotated[int, BeforeValidator(_no_bool)]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FloatRange(_Frozen):
    """A float knob: searched in ``[low, high]`` (optionally on a ``step`` grid or a
    log scale), fixed when ``low == high``. A plain number in YAML is a fixed range.

    Example:
        >>> FloatRange(low=0.0, high=0.5).fixed
        False
        >>> FloatRange(low=0.3, high=0.3).fixed
        True
    """

    low: Num
    high: Num
    step: Num | None = None
    log: StrictBool = False

    @model_validator(mode="after")
    def _check(self) -> "FloatRange":
        if self.low > self.high:
            raise ValueError(f"`low` must be <= `high`; got low={self.low}, high={self.high}")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"`step` must be > 0 or null; got {self.step}")
        if self.log and self.step is not None:
            raise ValueError("`log` and `step` cannot be used together")
        if self.log and self.low <= 0:
            raise ValueError(f"`log: true` needs `low` > 0; got low={self.low}")
        return self

    @property
    def fixed(self) -> bool:
        """True when the range holds one value (no parameter is searched)."""
        return self.low == self.high


def _as_range(value: Any) -> Any:
    _no_bool(value)
    if isinstance(value, (int, float)):
        return {"low": value, "high": value}
    return value


def _as_list(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("must list at least one choice")
        return list(value)
    return [value]


def _as_fractions(value: Any) -> Any:
    # null means "never factorised", which is the fixed choice 1.0.
    return [1.0] if value is None else _as_list(value)


def _sorted_unique(values: list) -> list:
    return sorted(set(values))


def _check_bounds(name: str, rng: FloatRange | None, lo: float, hi: float, *, lo_open=False, hi_open=False):
    if rng is None:
        return rng
    for end in ("low", "high"):
        v = getattr(rng, end)
        if v < lo or (lo_open and v == lo) or v > hi or (hi_open and v == hi):
            interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
            raise ValueError(f"{name} `{end}` must be in {interval}; got {v:g}")
    return rng


def _check_bits(values: list | None) -> list | None:
    if values is None:
        return values
    bad = [b for b in values if b not in ALLOWED_BITS]
    if bad:
        raise ValueError(message("bits", f"one of {list(ALLOWED_BITS)}", bad[0]))
    return _sorted_unique(values)


def _check_fractions(values: list | None) -> list | None:
    if values is None:
        return values
    bad = [f for f in values if not 0 < f <= 1]
    if bad:
        raise ValueError(message("rank_fraction", "in (0, 1]", bad[0]))
    return _sorted_unique(values)


def _check_pattern(pattern: str) -> str:
    if not pattern:
        raise ValueError("a pattern must not be empty")
    if pattern.startswith("re:"):
        try:
            re.compile(pattern[3:])
        except re.error as exc:
            raise ValueError(f"invalid regular expression {pattern[3:]!r}: {exc}") from None
    return pattern


Patterns = Annotated[list[StrictStr], BeforeValidator(lambda v: [v] if isinstance(v, str) else v)]
RangeKnob = Annotated[FloatRange, BeforeValidator(_as_range)]
BitsKnob = Annotated[list[Int], BeforeValidator(_as_list)]
FractionKnob = Annotated[list[Num], BeforeValidator(_as_fractions)]
BoolKnob = Annotated[list[StrictBool], BeforeValidator(_as_list)]
Kind = Literal[KINDS]


# -- space -------------------------------------------------------------------------

class _LayerKnobs(_Frozen):
    """The per-layer knobs an override or a group may set (None: inherit)."""

    sparsity: RangeKnob | None = None
    bits: BitsKnob | None = None
    rank_fraction: FractionKnob | None = None
    structured: BoolKnob | None = None

    @model_validator(mode="before")
    @classmethod
    def _explicit_null_rank(cls, data: Any) -> Any:
        # In an override, an absent rank_fraction inherits; an explicit null means
        # "never factorised", i.e. the fixed choice 1.0.
        if isinstance(data, Mapping) and "rank_fraction" in data and data["rank_fraction"] is None:
            data = {**data, "rank_fraction": [1.0]}
        return data

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler) -> dict[str, Any]:
        # An unset knob (None) must not come back as an explicit `rank_fraction: null`
        # ("never factorised") when the dump is read again.
        return {k: v for k, v in handler(self).items() if v is not None}

    @field_validator("sparsity")
    @classmethod
    def _sparsity(cls, v):
        return _check_bounds("sparsity", v, 0.0, 1.0, hi_open=True)

    _bits = field_validator("bits")(classmethod(lambda cls, v: _check_bits(v)))
    _fractions = field_validator("rank_fraction")(classmethod(lambda cls, v: _check_fractions(v)))
    _structured = field_validator("structured")(classmethod(lambda cls, v: None if v is None else _sorted_unique(v)))

    def knobs_set(self) -> dict[str, Any]:
        """The knobs this entry sets, by name."""
        return {k: getattr(self, k) for k in ("sparsity", "bits", "rank_fraction", "structured")
                if getattr(self, k) is not None}


class Override(_LayerKnobs):
    """Knob settings for the layers one selector picks: ``type`` (a layer kind),
    ``pattern`` (glob or ``re:``) or ``name`` (an exact FQN) — exactly one.

    Example:
        >>> Override(type="conv2d", bits=[4, 8]).selector
        ('type', 'conv2d')
    """

    type: Kind | None = None
    pattern: StrictStr | None = None
    name: StrictStr | None = None

    _pattern = field_validator("pattern")(classmethod(lambda cls, v: v if v is None else _check_pattern(v)))

    @model_validator(mode="after")
    def _one_selector(self) -> "Override":
        given = [k for k in ("type", "pattern", "name") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"an override needs exactly one selector out of type, pattern, name; got {given or 'none'}")
        if not self.knobs_set():
            raise ValueError(f"the override for {self.selector[0]} {self.selector[1]!r} sets no knob; "
                             f"set any of sparsity, bits, rank_fraction, structured")
        return self

    @property
    def selector(self) -> tuple[str, str]:
        """``(kind of selector, value)``."""
        for key in ("type", "pattern", "name"):
            if getattr(self, key) is not None:
                return key, getattr(self, key)
        raise AssertionError("unreachable: validated at construction")


class GroupConfig(_LayerKnobs):
    """Layers matched by ``pattern`` share one set of parameters named ``<name>:<knob>``.

    Example:
        >>> GroupConfig(name="stage1", pattern="layer1.*").name
        'stage1'
    """

    name: StrictStr
    pattern: StrictStr

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _GROUP_NAME.match(v) or v == "distill":
            raise ValueError(f"a group name must match {_GROUP_NAME.pattern} and not be 'distill'; got {v!r}")
        return v

    _pattern = field_validator("pattern")(classmethod(lambda cls, v: _check_pattern(v)))


class SpaceConfig(_Frozen):
    """Which layers are searched and the knob ranges; see the module docstring.

    Example:
        >>> SpaceConfig(bits=8).bits
        [8]
    """

    include: Patterns = ["*"]
    exclude: Patterns = []
    types: Annotated[list[Kind], BeforeValidator(lambda v: [v] if isinstance(v, str) else v)] | None = None
    sparsity: RangeKnob = FloatRange(low=0.0, high=0.95)
    bits: BitsKnob = [2, 3, 4, 5, 6, 8, 16, 32]
    rank_fraction: FractionKnob = [0.25, 0.5, 1.0]
    structured: BoolKnob = [False]
    overrides: list[Override] = []
    groups: list[GroupConfig] = []
    temperature: RangeKnob = FloatRange(low=1.0, high=8.0, log=True)
    alpha: RangeKnob = FloatRange(low=0.0, high=1.0)

    _sparsity = field_validator("sparsity")(
        classmethod(lambda cls, v: _check_bounds("sparsity", v, 0.0, 1.0, hi_open=True)))
    _temperature = field_validator("temperature")(
        classmethod(lambda cls, v: _check_bounds("temperature", v, 0.0, math.inf, lo_open=True)))
    _alpha = field_validator("alpha")(classmethod(lambda cls, v: _check_bounds("alpha", v, 0.0, 1.0)))
    _bits = field_validator("bits")(classmethod(lambda cls, v: _check_bits(v)))
    _fractions = field_validator("rank_fraction")(classmethod(lambda cls, v: _check_fractions(v)))
    _structured = field_validator("structured")(classmethod(lambda cls, v: _sorted_unique(v)))

    @field_validator("include", "exclude")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        return [_check_pattern(p) for p in v]

    @field_validator("types")
    @classmethod
    def _types(cls, v):
        if v is not None and not v:
            raise ValueError(f"`types` must be null or list at least one of {list(KINDS)}")
        return v

    @field_validator("groups")
    @classmethod
    def _unique_groups(cls, v: list[GroupConfig]) -> list[GroupConfig]:
        names = [g.name for g in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"group names must be unique; {dup} appear more than once")
        return v

    def global_knobs(self) -> dict[str, Any]:
        """The global (lowest-priority) per-layer knob settings."""
        return {"sparsity": self.sparsity, "bits": self.bits, "rank_fraction": self.rank_fraction,
                "structured": self.structured}


# -- other sections -------------------------------------------------------------------

class FactorySpec(_Frozen):
    """A callable named ``"package.module:function"`` plus keyword arguments.

    Example:
        >>> FactorySpec(factory="math:hypot").call(x=3, y=4)  # doctest: +SKIP
    """

    factory: StrictStr
    kwargs: dict[str, Any] = {}

    @field_validator("factory")
    @classmethod
    def _factory(cls, v: str) -> str:
        if not _FACTORY.match(v):
            raise ValueError(f"must look like 'package.module:function'; got {v!r}")
        return v

    def resolve(self) -> Callable:
        """The callable, imported now (ConfigError when it cannot be)."""
        return resolve_import(self.factory)

    def call(self, **context: Any) -> Any:
        """Call the factory with ``kwargs`` plus those ``context`` keywords it accepts.

        Example:
            >>> spec = FactorySpec(factory="studies.digits:data")
            >>> splits = spec.call(cache_dir=".cache")  # cache_dir dropped: data() does not take it  # doctest: +SKIP
        """
        fn = self.resolve()
        accepted = {k: v for k, v in context.items() if _accepts(fn, k)}
        return fn(**self.kwargs, **accepted)


class FinetuneConfig(_Frozen):
    """The recovery fine-tune with knowledge distillation."""

    steps: Int = Field(200, ge=0)
    batch_size: Int = Field(64, ge=1)
    lr: Num = Field(1e-3, gt=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    eval_every: Int = Field(50, ge=1)
    eval_batch_size: Int = Field(512, ge=1)
    weight_decay: Num = Field(0.0, ge=0)
    # BatchNorm layers during the fine-tune: "frozen" (the default) normalises with the
    # baseline's running statistics and leaves them as they are, training only their scale and shift;
    # "train" lets them normalise with batch statistics and update their running ones. A short recovery
    # fine-tune of a converged CNN loses points to "train" (ResNet-20: BENCHMARKS.md, issue 17).
    batchnorm: Literal["frozen", "train"] = "frozen"


class ConstraintsConfig(_Frozen):
    """Feasibility: a trial breaking any of these is told infeasible."""

    # The largest drop of the task's metric from the baseline, in the metric's units
    # (for a minimised metric, a rise). `max_accuracy_drop` is its name for accuracy;
    # `max_relative_drop` is a fraction of the baseline's metric. For a metric other than
    # accuracy with neither set, the default is a relative drop of 0.05.
    max_accuracy_drop: Num | None = Field(0.02, ge=0, le=1)
    max_metric_drop: Num | None = Field(None, ge=0)
    max_relative_drop: Num | None = Field(None, ge=0, le=1)
    max_size_bytes: Int | None = Field(None, gt=0)
    min_ratio: Num | None = Field(None, ge=1)
    # Bit-operations of one example (objectives.bit_operations); known from the plan
    # alone, so an over-budget plan is scored without fine-tuning, like max_size_bytes.
    max_bops: Num | None = Field(None, gt=0)
    # Dense multiply-accumulates of one example (objectives.multiply_accumulates): fixed by the
    # plan's structure (structured pruning, ranks), so known before training like max_bops.
    max_macs: Num | None = Field(None, gt=0)
    # Latency (objectives.latency_ms, with the `latency` settings) of the squashed model: it
    # depends on the plan's shapes, not on the weights fine-tuning changes, so it is measured
    # before training too and an over-budget plan is scored without fine-tuning.
    max_latency_ms: Num | None = Field(None, gt=0)
    # The plan's ONNX file (compresstune.export_onnx: bytes on disk; ONNX Runtime CPU latency with the
    # `latency` settings, threads = cpus_per_trial): measured on the export before fine-tuning,
    # cached by the plan's structure; needs the onnx extra.
    max_onnx_bytes: Int | None = Field(None, gt=0)
    max_onnx_latency_ms: Num | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_drop(self) -> "ConstraintsConfig":
        if self.max_metric_drop is not None and self.max_relative_drop is not None:
            raise ValueError("set at most one of max_metric_drop and max_relative_drop; got both "
                             f"({self.max_metric_drop!r} and {self.max_relative_drop!r})")
        return self


class LatencyConfig(_Frozen):
    """How the latency objective is measured."""

    batch_size: Int = Field(1, ge=1)
    repeats: Int = Field(30, ge=1)
    warmup: Int = Field(5, ge=0)


class ResourcesConfig(_Frozen):
    """Where trials run: the device (``auto``: CUDA when available) and, on Ray, per-trial resources."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    cpus_per_trial: Num = Field(1, gt=0)
    gpus_per_trial: Num = Field(0, ge=0)


class SearchConfig(_Frozen):
    """How the search runs; none of this changes the study's fingerprint."""

    sampler: Literal["tpe", "nsga2", "gp", "random"] = "tpe"
    trials: Int = Field(40, ge=1)
    seed: Int | None = 0
    storage: StrictStr | None = None
    out: StrictStr | None = None
    max_failures: Int = Field(10, ge=0)
    workers: Int = Field(0, ge=0)
    address: StrictStr | None = None


def _levels(name: str, values: list, ok, allowed: str) -> list:
    bad = [v for v in values if not ok(v)]
    if bad:
        raise ValueError(f"each {name} value must be {allowed}; got {bad[0]!r}")
    return _sorted_unique(values)


class SensitivityConfig(_Frozen):
    """The per-layer sensitivity scan run at the start of ``run`` (and by
    ``compresstune sensitivity``), and the seed trials planned from it.

    The scan measures, for each searched layer (or group) alone, the validation
    accuracy drop without fine-tuning at each ``sparsity``, ``bits`` and
    ``rank_fraction`` level, on the first ``examples`` validation examples.
    Seeds: one enqueued trial per ratio in ``seed_ratios`` (reference fp32 size /
    packed size; at most half of ``search.trials``, spread over the ratios),
    spending compression where the scan says it hurts least; enqueued only into
    a new study; ``[]`` enqueues none. Once they have run, ``refine_seeds``
    more are planned along the same path between the largest seed ratio that
    met the constraints and the next one that did not (0: none). ``refine_front: k`` then makes one
    trial in every k a continuation of a feasible front trial, from the largest ratio down,
    ``refine_step`` times smaller along that path (0: off). ``narrow: true`` also caps each layer's
    sparsity, bits and rank range at the first scanned level whose drop reaches
    ``cliff``; decided before trial 0 and stored in the study.

    Example:
        >>> SensitivityConfig(seed_ratios=[8, 4]).seed_ratios
        [4.0, 8.0]
    """

    enabled: StrictBool = True
    examples: Int = Field(512, ge=1)
    # Ignored since the scan reads the task's own validation batches; kept so that older study files load.
    batch_size: Int = Field(512, ge=1)
    sparsity: list[Num] = [0.5, 0.7, 0.8, 0.9, 0.95]
    bits: list[Int] = [2, 3, 4, 6, 8]
    rank_fraction: list[Num] = [0.25, 0.5, 0.75]
    seed_ratios: list[Num] = [4.0, 8.0, 16.0, 32.0, 64.0]
    refine_seeds: Int = Field(2, ge=0, le=8)
    # After the seeds, one trial in every `refine_front` continues a feasible front trial (from the
    # largest ratio down) `refine_step` times smaller along the seed path (search/_refine.py); 0: off.
    refine_front: Int = Field(0, ge=0)
    refine_step: Num = Field(1.25, gt=1, le=4)
    narrow: StrictBool = False
    cliff: Num = Field(0.3, gt=0, le=1)
    # How a seed plan is chosen: "greedy" (the planner's path) or "exact" (a multiple-choice
    # knapsack over the same surrogate, search/_allocate.py; `compresstune plan` uses it).
    allocator: Literal["greedy", "exact"] = "greedy"

    _sparsity = field_validator("sparsity")(classmethod(
        lambda cls, v: _levels("sparsity", v, lambda x: 0 < x < 1, "in (0, 1)")))
    _bits = field_validator("bits")(classmethod(
        lambda cls, v: _levels("bits", v, lambda b: b in ALLOWED_BITS and b < 32,
                               f"in {[b for b in ALLOWED_BITS if b < 32]}")))
    _fractions = field_validator("rank_fraction")(classmethod(
        lambda cls, v: _levels("rank_fraction", v, lambda x: 0 < x < 1, "in (0, 1)")))
    _ratios = field_validator("seed_ratios")(classmethod(
        lambda cls, v: _levels("seed_ratios", v, lambda x: x > 1, "> 1")))


class EarlyStoppingConfig(_Frozen):
    """Pareto-aware early stopping of the recovery fine-tune.

    At every ``finetune.eval_every`` step (a rung) a trial is stopped when
    another trial no larger than it reached, by the same rung, a best
    validation accuracy higher by more than a margin: ``margin_se`` binomial
    standard errors (``sqrt(p(1-p)/n_val)``, evaluation noise), plus
    ``rung_slack`` times the fraction of the fine-tune still to run times the
    error ``1 - p`` (early rungs predict the final accuracy less well), plus
    ``min_margin``. No trial is stopped before a fraction ``grace`` of the
    fine-tune steps, nor at the last step. A stopped trial is recorded with its
    rung accuracy and kept off the front. More rungs (a smaller
    ``finetune.eval_every``) let it stop bad trials sooner; each costs one
    evaluation of the validation split. The defaults were chosen on the curves
    of plain searches (see search/_early_stop.py and BENCHMARKS.md).

    Example:
        >>> EarlyStoppingConfig(enabled=True).margin_se
        2.0
    """

    enabled: StrictBool = False
    margin_se: Num = Field(2.0, ge=0)
    rung_slack: Num = Field(0.5, ge=0, le=1)
    min_margin: Num = Field(0.0, ge=0, le=1)
    grace: Num = Field(0.25, ge=0, le=1)


class PromotionConfig(_Frozen):
    """Promotion to a longer fine-tune: the multi-fidelity half of successive halving.

    Every trial fine-tunes ``finetune.steps``, a budget that ranks plans. A
    promotion round picks the plans on the first ``ranks`` Pareto layers of the
    study so far (feasible, fully fine-tuned trials), and those rejected by the
    metric constraint alone by at most ``margin`` (in the metric's units;
    default half the allowed drop) that no feasible trial dominates, at most
    ``max_trials`` of them, the smallest first. Each is run again as a trial of
    its own, linked to the short one (``promoted_from``), fine-tuned from its
    plan for ``steps`` (default 4x ``finetune.steps``) with the same
    distillation settings and no early stopping. A promoted trial replaces its
    short one on the front and in the hypervolume. A round runs after the
    search, and every ``every`` COMPLETE trials when set; promoted trials do
    not count against ``search.trials``.

    Example:
        >>> PromotionConfig(enabled=True).ranks
        1
    """

    enabled: StrictBool = False
    steps: Int | None = Field(None, ge=1)
    every: Int | None = Field(None, ge=1)
    ranks: Int = Field(1, ge=1)
    margin: Num | None = Field(None, ge=0)
    max_trials: Int = Field(5, ge=1)


class StudyConfig(_Frozen):
    """A validated study definition. Build it with :func:`load_config` or
    :meth:`from_dict`; both raise :class:`ConfigError`.

    Example:
        >>> cfg = StudyConfig.from_dict({"model": {"factory": "m:f"}, "data": {"factory": "m:d"}})
        >>> cfg.name, cfg.objectives, cfg.search.trials
        ('study', ['accuracy', 'size'], 40)
    """

    name: StrictStr = "study"
    # A study file names its factories; `compresstune.search.run(model, task, ...)` passes objects (all None).
    model: FactorySpec | None = None
    data: FactorySpec | None = None
    task: FactorySpec | None = None
    space: SpaceConfig = SpaceConfig()
    objectives: list[Literal["accuracy", "size", "latency", "bops", "macs", "onnx_size", "onnx_latency"]] = ["accuracy", "size"]
    finetune: FinetuneConfig = FinetuneConfig()
    constraints: ConstraintsConfig = ConstraintsConfig()
    activation_bits: Int = Field(32, ge=2, le=32)
    latency: LatencyConfig = LatencyConfig()
    resources: ResourcesConfig = ResourcesConfig()
    search: SearchConfig = SearchConfig()
    sensitivity: SensitivityConfig = SensitivityConfig()
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    promotion: PromotionConfig = PromotionConfig()

    @model_validator(mode="before")
    @classmethod
    def _default_out(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        search = data.get("search")
        if search is None or (isinstance(search, Mapping) and search.get("out") is None):
            name = data.get("name", "study")
            data = {**data, "search": {**(search or {}), "out": f"runs/{name}"}}
        return data

    @model_validator(mode="after")
    def _factories(self) -> "StudyConfig":
        if self.data is not None and self.task is not None:
            raise ValueError("name either `data` (a factory of Splits) or `task` (a factory of a compresstune.Task), "
                             "not both")
        if self.model is not None and self.data is None and self.task is None:
            raise ValueError("a study file with `model` must name `data` or `task` too")
        if self.model is None and (self.data is not None or self.task is not None):
            raise ValueError("`model` is required: a study file names the factory of the trained nn.Module")
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _STUDY_NAME.match(v):
            raise ValueError(f"must match {_STUDY_NAME.pattern} (it names the study and its folder); got {v!r}")
        return v

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"objectives must not repeat; got {v}")
        missing = [o for o in ("accuracy", "size") if o not in v]
        if missing:
            raise ValueError(f"objectives must include accuracy and size; {missing} missing from {v}")
        third = [o for o in THIRD_OBJECTIVES if o in v]
        if len(third) > 1:
            raise ValueError(f"at most one third objective ({', '.join(THIRD_OBJECTIVES)}); got {v}")
        return [o for o in OBJECTIVES if o in v]  # canonical order: accuracy, size, then the third

    @classmethod
    def from_dict(cls, data: Any, *, source: str | None = None) -> "StudyConfig":
        """Validate a plain mapping (as read from YAML).

        Raises:
            ConfigError: listing every problem with its field path.
        """
        if not isinstance(data, Mapping):
            where = f" in {source}" if source else ""
            raise ConfigError(f"a study config must be a mapping of sections{where}; got {type(data).__name__}.")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_format_errors(exc, cls, source)) from None

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-able data (what ``from_dict`` reads back)."""
        return self.model_dump(mode="json")

    def fingerprint_data(self) -> dict[str, Any]:
        """The parts that define what the study measures (see :meth:`fingerprint`)."""
        data = self.model_dump(mode="json", include=set(FINGERPRINT_FIELDS))
        if data.get("task") is None:
            data.pop("task", None)
        for section, names in _LATER_FIELDS.items():
            for name in names:
                if data[section].get(name) is None:
                    data[section].pop(name, None)
        for section, defaults in _OMITTED_DEFAULTS.items():
            for name, value in defaults.items():
                if data[section].get(name) == value:
                    data[section].pop(name)
        return data

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of model, data, space, objectives, finetune,
        constraints and activation_bits. Search settings (trials, out, storage,
        workers, address, ...) are left out, so ``--trials 80`` extends a study.

        Example:
            >>> a = StudyConfig.from_dict({"model": {"factory": "m:f"}, "data": {"factory": "m:d"}})
            >>> a.fingerprint() == a.with_search(trials=80).fingerprint()
            True
        """
        text = json.dumps(self.fingerprint_data(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def with_search(self, **changes: Any) -> "StudyConfig":
        """A copy with ``search.*`` fields replaced (``None`` values are ignored).

        Example:
            >>> cfg = StudyConfig.from_dict({"model": {"factory": "m:f"}, "data": {"factory": "m:d"}})
            >>> cfg.with_search(trials=5, sampler="random").search.trials
            5
        """
        data = self.to_dict()
        data["search"] = {**data["search"], **_search_changes(changes)}
        return StudyConfig.from_dict(data)


# -- error messages ---------------------------------------------------------------------

def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model class inside an annotation (list[X], X | None, Annotated[X, ...])."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _model_at(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    cls: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, int):
            continue
        if cls is None or part not in cls.model_fields:
            return None
        cls = _model_in(cls.model_fields[part].annotation)
    return cls


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _unknown_key(loc: tuple, root: type[BaseModel]) -> str:
    owner = _model_at(root, loc[:-1])
    allowed = list(owner.model_fields) if owner is not None else []
    key = str(loc[-1])
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.5)
    hint = f" — did you mean `{close[0]}`?" if close else ""
    return f"unknown key `{_path(loc)}`{hint} (allowed keys: {', '.join(allowed)})"


def _one_error(err: dict, root: type[BaseModel]) -> str:
    loc = tuple(err["loc"])
    if err["type"] == "extra_forbidden":
        return _unknown_key(loc, root)
    msg = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    where = f"`{_path(loc)}`" if loc else "the config"
    if err["type"] == "missing":
        return f"{where} is required"
    if "got " in msg:  # our own messages already show the value
        return f"{where}: {msg}"
    return f"{where}: {msg} (got {err.get('input')!r})"


def _format_errors(exc: ValidationError, root: type[BaseModel], source: str | None) -> str:
    lines = [_one_error(e, root) for e in exc.errors(include_url=False)]
    head = f"invalid study config{f' {source}' if source else ''}"
    if len(lines) == 1:
        return f"{head}: {lines[0]}"
    return head + ":\n" + "\n".join(f"  - {line}" for line in lines)


def _search_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    allowed = list(SearchConfig.model_fields)
    for key in changes:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.5)
            hint = f" — did you mean `{close[0]}`?" if close else ""
            raise ConfigError(f"unknown search override `{key}`{hint} (allowed: {', '.join(allowed)})")
    return {k: v for k, v in changes.items() if v is not None}


# -- diff ------------------------------------------------------------------------------------

_ABSENT = object()


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, Mapping) and (data or not prefix):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def config_diff(old: Mapping[str, Any] | StudyConfig, new: Mapping[str, Any] | StudyConfig) -> list[str]:
    """Readable lines for every leaf that differs, by dotted path.

    Lists are compared whole. Accepts plain dicts (as stored with a study) or
    :class:`StudyConfig` objects.

    Example:
        >>> config_diff({"finetune": {"steps": 200}}, {"finetune": {"steps": 300}})
        ['finetune.steps: 200 -> 300']
    """
    a = _flatten(old.to_dict() if isinstance(old, StudyConfig) else old)
    b = _flatten(new.to_dict() if isinstance(new, StudyConfig) else new)
    keys = list(a) + [k for k in b if k not in a]
    lines = []
    for key in keys:
        va, vb = a.get(key, _ABSENT), b.get(key, _ABSENT)
        if va != vb or type(va) is not type(vb) and not _same_number(va, vb):
            lines.append(f"{key}: {_show(va)} -> {_show(vb)}")
    return lines


def _same_number(a: Any, b: Any) -> bool:
    numbers = (int, float)
    return (isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool)
            and not isinstance(b, bool) and a == b)
