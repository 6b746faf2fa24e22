"""The storage schema: every study and trial attribute compresstune writes, and
the one wrapper around Optuna's internals.

Every key the search writes into a study (``study.user_attrs``) or a trial
(``trial.user_attrs``) is named here, with its type and meaning
(:data:`STUDY_KEYS`, :data:`TRIAL_KEYS`; the README's "Study records" table is
this table). A new study stores :data:`SCHEMA_VERSION` under
``record_schema``; a study without it was written by schema 1 and reads the
same way (the keys did not change; schema 2 added ``fail_kind`` and
``record_schema`` and stopped writing ``rungs`` at every rung; schema 3 added
the study's ``metric``: ``val_accuracy``/``test_accuracy`` and the baseline and
reference values hold the task's metric, whatever it is, and a study without
``metric`` is accuracy, maximised).

Failure reasons are a field: ``fail_kind`` says what kind of failure it was
(:data:`FAIL_KINDS`) and ``fail_reason`` is the text for people. Schema-1
records have no ``fail_kind``; an interruption there is recognised by its
``"interrupted"`` text prefix (:func:`fail_kind`).

Optuna internals are touched only here (:class:`Records`): the live trial's
frozen record, the trial id, the storage URL, and writing all of a trial's
attributes and constraints in one storage transaction (one per attribute is
Optuna's public way; on SQLite that cost ~3 ms each). Each is tested against
the installed Optuna (tests/search/test_records.py).

Example:
    >>> fail_kind({"fail_reason": "interrupted: the driver stopped while it ran"})
    'interrupted'
    >>> fail_kind({"fail_reason": "ValueError: bad", "fail_kind": "error"})
    'error'
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from optuna.trial import TrialState

__all__ = ["FAIL_KINDS", "SCHEMA_KEY", "SCHEMA_VERSION", "STUDY_KEYS", "TRIAL_KEYS", "Records", "Tally",
           "FrontCache", "fail_kind", "is_interrupted", "keys_table", "metric_of", "tally"]

SCHEMA_VERSION = 3
SCHEMA_KEY = "record_schema"

# -- study keys ---------------------------------------------------------------------------------

COMPRESSTUNE_VERSION = "compresstune_version"
CONFIG = "config"
FINGERPRINT = "fingerprint"
STUDY_FILE = "study_file"
BASELINE = "baseline"
REFERENCE_POINT = "reference_point"
MAX_ACCURACY_DROP = "max_accuracy_drop"
METRIC = "metric"
TARGET_TRIALS = "target_trials"
CONSTRAINT_NAMES = "constraint_names"
LAYERS = "layers"
LAYER_SHAPES = "layer_shapes"
STARTED_AT = "started_at"
MACHINE = "machine"
VERSIONS = "versions"
SENSITIVITY = "sensitivity"
NARROWING = "narrowing"
SEED_TRIALS = "seed_trials"
SEED_REFINEMENT = "seed_refinement"
SEED_SECONDS = "seed_seconds"
PROMOTION_ROUNDS = "promotion_rounds"
FRONT_REFINEMENTS = "front_refinements"

STUDY_KEYS: dict[str, tuple[str, str]] = {
    SCHEMA_KEY: ("int", "version of this record schema (absent: 1)"),
    COMPRESSTUNE_VERSION: ("str", "compresstune version that created the study"),
    CONFIG: ("dict", "the validated study config (JSON)"),
    FINGERPRINT: ("str", "hash of the config fields that change results; a resume must match it"),
    STUDY_FILE: ("str | null", "path of the study YAML, when run from one"),
    BASELINE: ("dict", "`val_accuracy`, `test_accuracy` (the task's metric, whatever it is), `reference_bytes`, "
                       "`packed_bytes` of the uncompressed model (and its `macs` with a macs objective or budget)"),
    REFERENCE_POINT: ("dict", "hypervolume reference: `val_accuracy` (the metric's value), `log2_ratio`"),
    MAX_ACCURACY_DROP: ("float | null", "the largest drop of the metric allowed, in its units (for accuracy, "
                                        "`constraints.max_accuracy_drop`)"),
    TARGET_TRIALS: ("int", "COMPLETE trials the latest run was asked for (`search.trials` or `--trials`)"),
    METRIC: ("dict", "the task's metric: `name`, `direction` (maximize/minimize), `task` (import path or null); "
                     "absent: accuracy, maximize"),
    CONSTRAINT_NAMES: ("list[str]", "names of the constraint entries, in order"),
    LAYERS: ("list[str]", "searched layers (FQNs)"),
    LAYER_SHAPES: ("dict", "layer -> [rows, cols] of its weight matrix"),
    STARTED_AT: ("str", "ISO time the study was created (UTC)"),
    MACHINE: ("str", "host, architecture, CPUs, OS of the creating driver"),
    VERSIONS: ("dict", "compresstune, torch, optuna, ray, python versions"),
    SENSITIVITY: ("dict", "the sensitivity scan table and its cache key"),
    NARROWING: ("dict", "per-unit ranges narrowed at the scan's cliff (`sensitivity.narrow`)"),
    SEED_TRIALS: ("list[dict]", "planned seed trials: target ratio, ratio, size, predicted drop, round"),
    SEED_REFINEMENT: ("dict", "targets of the second round of seed trials"),
    SEED_SECONDS: ("float", "seconds spent planning the seed trials"),
    FRONT_REFINEMENTS: ("list[dict]", "front trials continued along the seed path (`sensitivity.refine_front`): "
                                      "`of` (the front trial), `target_ratio`, `ratio` (null: none planned)"),
    PROMOTION_ROUNDS: ("list[dict]", "promotion rounds planned: `after` (COMPLETE trials), `steps`, `promoted` "
                                     "(the short trials' numbers)"),
}

# -- trial keys ---------------------------------------------------------------------------------

DRIVER = "driver"
PLAN = "plan"
SIZE_BYTES = "size_bytes"
RATIO = "ratio"
VAL_ACCURACY = "val_accuracy"
TEST_ACCURACY = "test_accuracy"
CURVE = "curve"
TIMINGS = "timings"
ARTIFACT = "artifact"
REJECTED = "rejected"
OVER_BUDGET = "over_budget"
BOPS = "bops"
MACS = "macs"
LATENCY_BEFORE_TRAINING_MS = "latency_before_training_ms"
STOPPED_AT_RUNG = "stopped_at_rung"
STOPPED_BY = "stopped_by"
RUNGS = "rungs"
WORKER = "worker"
FAIL_REASON = "fail_reason"
FAIL_KIND = "fail_kind"
REQUEUED_FROM = "requeued_from"
SEED_TRIAL = "seed_trial"
SEED_TARGET_RATIO = "seed_target_ratio"
SEED_RATIO = "seed_ratio"
SEED_PREDICTED_DROP = "seed_predicted_drop"
SEED_ROUND = "seed_round"
PROMOTED_FROM = "promoted_from"
PROMOTION_STEPS = "promotion_steps"
REFINED_FROM = "refined_from"
REFINE_TARGET_RATIO = "refine_target_ratio"

TRIAL_KEYS: dict[str, tuple[str, str]] = {
    DRIVER: ("str", "`host:output folder` of the driver that asked the trial (its RUNNING trials are its own)"),
    PLAN: ("str", "the CompressionPlan as JSON"),
    SIZE_BYTES: ("int", "packed size of the artifact, in bytes"),
    RATIO: ("float", "fp32 reference bytes / size_bytes"),
    VAL_ACCURACY: ("float", "the task's metric on the validation split (the objective; the key keeps its first "
                            "name): after fine-tuning, or at the stopping rung"),
    TEST_ACCURACY: ("float | null", "the metric on the test split, for the report; null for a trial stopped at a "
                                    "rung or a task without a test split"),
    CURVE: ("list[[step, metric]]", "the validation metric at each rung of the fine-tune"),
    TIMINGS: ("dict", "`apply_s`, `finetune_s`, `eval_s`, `total_s` of the trial body"),
    ARTIFACT: ("str", "the artifact's path relative to the output folder (fine-tuned trials only)"),
    REJECTED: ("str", "`budget`: over a budget known before training, scored without fine-tuning"),
    OVER_BUDGET: ("list[str]", "the bops/macs/latency/onnx budgets a rejected plan breaks"),
    BOPS: ("float", "bit-operations per example (a bops budget or objective)"),
    MACS: ("float", ("dense multiply-accumulates per example of the squashed plan, counted before training "
                     "(a macs budget or objective)")),
    LATENCY_BEFORE_TRAINING_MS: ("float", "latency measured before training (a latency budget)"),
    STOPPED_AT_RUNG: ("int", "the step at which early stopping ended the fine-tune"),
    STOPPED_BY: ("dict", "the stop decision: step, accuracy, the dominating trial, its size and accuracy, margin"),
    RUNGS: ("list[[step, accuracy]]", "schema 1 only: rungs written while a trial ran (read on resume)"),
    WORKER: ("dict", "where it ran: `pid`, `host`, `node_id`, `seconds`, `retries` (and `ip`, `gpus`, `device`)"),
    FAIL_REASON: ("str", "why a FAIL trial failed, for people"),
    FAIL_KIND: ("str", "what kind of failure: " + ", ".join(
        ("error", "memory", "worker", "space", "interrupted"))),
    REQUEUED_FROM: ("int", "the number of the interrupted trial this one repeats"),
    SEED_TRIAL: ("bool", "planned from the sensitivity scan"),
    SEED_TARGET_RATIO: ("float", "the compression ratio a seed trial aims at"),
    SEED_RATIO: ("float", "the ratio the seed plan reaches (packed size)"),
    SEED_PREDICTED_DROP: ("float", "the scan's predicted accuracy drop of the seed plan"),
    SEED_ROUND: ("int", "1: from the scan; 2: bisected between seeds"),
    PROMOTED_FROM: ("int", "a promoted trial: the short trial whose plan it fine-tunes longer (it replaces that "
                           "trial on the front)"),
    PROMOTION_STEPS: ("int", "a promoted trial: its fine-tune steps (`promotion.steps`)"),
    REFINED_FROM: ("int", "a refinement of the front: the front trial whose plan it continues along the seed path"),
    REFINE_TARGET_RATIO: ("float", "a refinement of the front: the ratio it aims at"),
}

FAIL_KINDS = ("error", "memory", "worker", "space", "interrupted")
"""``error``: an exception or a NaN inside the trial; ``memory``: out of memory;
``worker``: the Ray worker process or node died; ``space``: drawing the plan failed;
``interrupted``: Ctrl-C, SIGTERM or a stopped driver (the trial is queued again and
does not count against ``search.max_failures``)."""

# Optuna stores a constraint `name` as the system attribute "constraints:<name>".
_CONSTRAINT_PREFIX = "constraints:"


def metric_of(study_attrs: Mapping[str, Any]) -> tuple[str, str]:
    """``(name, direction)`` of a study's metric; ``("accuracy", "maximize")`` for older studies.

    Example:
        >>> metric_of({"metric": {"name": "perplexity", "direction": "minimize"}})
        ('perplexity', 'minimize')
        >>> metric_of({})
        ('accuracy', 'maximize')
    """
    m = study_attrs.get(METRIC)
    if isinstance(m, Mapping) and m.get("name"):
        return str(m["name"]), str(m.get("direction", "maximize"))
    return "accuracy", "maximize"


def keys_table() -> str:
    """The README's table of record keys, as Markdown.

    Example:
        >>> keys_table().splitlines()[0]
        '| where | key | type | meaning |'
    """
    rows = ["| where | key | type | meaning |", "|---|---|---|---|"]
    for where, table in (("study", STUDY_KEYS), ("trial", TRIAL_KEYS)):
        rows += [f"| {where} | `{key}` | {kind} | {meaning} |" for key, (kind, meaning) in table.items()]
    return "\n".join(rows)


# -- reading ------------------------------------------------------------------------------------

def fail_kind(user_attrs: Mapping[str, Any]) -> str | None:
    """The failure kind of a FAIL trial's attributes (schema 1: read from the reason's prefix)."""
    kind = user_attrs.get(FAIL_KIND)
    if kind:
        return str(kind)
    reason = user_attrs.get(FAIL_REASON)
    if reason is None:
        return None
    return "interrupted" if str(reason).startswith("interrupted") else "error"


def is_interrupted(trial) -> bool:
    """True for a FAIL trial that was interrupted (queued again; not a failure)."""
    return trial.state == TrialState.FAIL and fail_kind(trial.user_attrs or {}) == "interrupted"


@dataclass(frozen=True)
class Tally:
    """How a study's trials stand: COMPLETE, FAIL (interruptions not counted), RUNNING, interrupted;
    promotions (search/_promotion.py) apart: COMPLETE ones in ``promoted``, queued ones in
    ``queued_promotions``, never in ``complete``."""

    complete: int = 0
    failed: int = 0
    running: int = 0
    interrupted: int = 0
    promoted: int = 0
    queued_promotions: int = 0


def tally(trials: Iterable[Any]) -> Tally:
    """Count trials the way the loop stops on them.

    Example:
        >>> tally([]).complete
        0
    """
    complete = failed = running = interrupted = promoted = queued = 0
    for t in trials:
        promotion = (t.user_attrs or {}).get(PROMOTED_FROM) is not None
        if promotion and t.state in (TrialState.COMPLETE, TrialState.WAITING):
            promoted += t.state == TrialState.COMPLETE
            queued += t.state == TrialState.WAITING
        elif t.state == TrialState.COMPLETE:
            complete += 1
        elif t.state == TrialState.RUNNING:
            running += 1
        elif t.state == TrialState.FAIL:
            if is_interrupted(t):
                interrupted += 1
            else:
                failed += 1
    return Tally(complete, failed, running, interrupted, promoted, queued)


def last_failure(trials: Iterable[Any]) -> str:
    """The reason of the last counted failure ("unknown" when none says)."""
    reason = "unknown"
    for t in trials:
        if t.state == TrialState.FAIL and not is_interrupted(t):
            reason = str((t.user_attrs or {}).get(FAIL_REASON, "unknown"))
    return reason


class FrontCache:
    """The size of the feasible Pareto front, updated per COMPLETE trial (no
    ``study.best_trials`` recomputed for every progress line).

    It keeps the current front's value vectors; a new feasible trial is added
    unless one of them dominates it, and removes those it dominates.
    """

    def __init__(self, directions: list) -> None:
        self.signs = [1.0 if getattr(d, "name", str(d)).upper().endswith("MAXIMIZE") else -1.0 for d in directions]
        self.points: list[tuple[float, ...]] = []
        self.seen: set[int] = set()

    def __len__(self) -> int:
        return len(self.points)

    def add_trials(self, trials: Iterable[Any]) -> None:
        """Add the COMPLETE trials not seen yet (a refresh from the storage), leaving out short
        trials that a COMPLETE promotion replaces."""
        trials = list(trials)
        gone = {int(t.user_attrs[PROMOTED_FROM]) for t in trials
                if t.state == TrialState.COMPLETE and (t.user_attrs or {}).get(PROMOTED_FROM) is not None}
        for t in trials:
            if t.number in self.seen or t.state != TrialState.COMPLETE or t.number in gone:
                continue
            self.seen.add(t.number)
            if _feasible(t) and t.values is not None:
                self._add(tuple(s * v for s, v in zip(self.signs, t.values)))

    def add_values(self, number: int, values, constraints: Mapping[str, float]) -> None:
        """Add a trial this driver just told COMPLETE."""
        if number in self.seen:
            return
        self.seen.add(number)
        if values is not None and all(v <= 0 for v in constraints.values()):
            self._add(tuple(s * float(v) for s, v in zip(self.signs, values)))

    def _add(self, point: tuple[float, ...]) -> None:
        if not all(math.isfinite(v) for v in point) or any(_dominates(p, point) for p in self.points):
            return
        # Equal points are both on the front (as in Optuna's best_trials).
        self.points = [p for p in self.points if not _dominates(point, p)] + [point]


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """``a`` dominates ``b`` (both to be maximised)."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def fully_tuned_feasible(trial) -> bool:
    """A COMPLETE trial that met its constraints, was not rejected, was not stopped early and has
    values: a point of the front (the seed and front refiners read it)."""
    attrs = trial.user_attrs or {}
    return (trial.state == TrialState.COMPLETE and trial.values is not None and not attrs.get(REJECTED)
            and attrs.get(STOPPED_AT_RUNG) is None and _feasible(trial))


def _feasible(trial) -> bool:
    constraints = getattr(trial, "constraints", None)
    if constraints is None:  # an older FrozenTrial
        constraints = {k: v for k, v in (trial.system_attrs or {}).items() if k.startswith(_CONSTRAINT_PREFIX)}
    values = constraints.values() if isinstance(constraints, Mapping) else constraints
    return all(v <= 0 for v in values)


# -- writing: the one wrapper around Optuna internals ------------------------------------------------

class Records:
    """The study's storage as compresstune writes it.

    Args:
        study: the Optuna study.

    Example:
        >>> import optuna
        >>> study = optuna.create_study(directions=["maximize", "minimize"])
        >>> records = Records(study)
        >>> trial = study.ask()
        >>> records.write(trial, {"plan": "{}"}, {"stopped": 0.0})
        >>> records.frozen(trial).user_attrs
        {'plan': '{}'}
    """

    def __init__(self, study) -> None:
        self.study = study

    @property
    def storage(self):
        return self.study._storage

    def _rdb(self):
        """The RDBStorage behind the study's storage (cached or not), else None."""
        from optuna.storages import RDBStorage

        storage = self.storage
        backend = getattr(storage, "_backend", storage)
        return backend if isinstance(backend, RDBStorage) else None

    def url(self) -> str | None:
        """The storage URL of an RDB study; ``journal:PATH`` for a journal file; else None."""
        rdb = self._rdb()
        if rdb is not None:
            return str(rdb.url)
        backend = getattr(self.storage, "_backend", None)
        path = getattr(backend, "_file_path", None)
        return f"journal:{path}" if path else None

    @staticmethod
    def trial_id(trial) -> int:
        """The storage's id of a live or frozen trial."""
        return trial._trial_id

    def frozen(self, trial):
        """The stored record of a live trial (its state, params and attributes now)."""
        return self.storage.get_trial(self.trial_id(trial))

    def write(self, trial, user_attrs: Mapping[str, Any], constraints: Mapping[str, float] | None = None) -> None:
        """Set a live trial's user attributes and constraints, in one transaction on an RDB storage.

        The same records as ``trial.set_user_attr`` and ``trial.set_constraint``
        (user attributes by key, constraints as system attributes
        ``constraints:<name>``), which other storages get one call at a time.
        """
        constraints = {name: _constraint_value(name, v) for name, v in (constraints or {}).items()}
        rdb = self._rdb()
        if rdb is None:
            for key, value in user_attrs.items():
                trial.set_user_attr(key, value)
            for name, value in constraints.items():
                trial.set_constraint(name, value)
            return
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        tid = self.trial_id(trial)
        system = {_CONSTRAINT_PREFIX + name: value for name, value in constraints.items()}
        with _create_scoped_session(rdb.scoped_session, True) as session:
            for key, value in user_attrs.items():
                rdb._set_trial_attr_without_commit(session, models.TrialUserAttributeModel, tid, key, value)
            for key, value in system.items():
                rdb._set_trial_attr_without_commit(session, models.TrialSystemAttributeModel, tid, key, value)
        cached = getattr(trial, "_cached_frozen_trial", None)
        if cached is not None:  # what trial.set_user_attr / set_constraint keep in step
            cached.user_attrs.update(user_attrs)
            cached.system_attrs.update(system)

    @contextmanager
    def batched_params(self, trial):
        """While the space draws a trial's parameters, write them in one transaction
        at the end instead of one per parameter (on an RDB storage behind Optuna's
        cache; other storages write as usual).

        The trial reads its own parameters from its in-memory record, so deferring
        the writes changes nothing it sees; they are written however the block
        ends (an interrupted trial is queued again with what it drew).
        """
        storage = trial.storage
        rdb = self._rdb()
        if rdb is None or rdb is storage or not hasattr(storage, "_trial_id_to_study_id_and_number"):
            yield
            return
        pending: list[tuple] = []
        trial.storage = _ParamBuffer(storage, self.trial_id(trial), pending)
        try:
            yield
        finally:
            trial.storage = storage
            self._write_params(storage, rdb, self.trial_id(trial), pending)

    @staticmethod
    def _write_params(cached, rdb, tid: int, pending: list[tuple]) -> None:
        """What ``_CachedStorage.set_trial_param`` does per parameter, for all of them at once."""
        if not pending:
            return
        from optuna.storages._rdb.storage import _create_scoped_session

        with cached._lock:
            study_id, _ = cached._trial_id_to_study_id_and_number[tid]
            known = cached._studies[study_id].param_distribution
            with _create_scoped_session(rdb.scoped_session, True) as session:
                for name, value, distribution in pending:
                    rdb._set_trial_param_without_commit(session, tid, name, value, distribution, known.get(name))
            for name, _, distribution in pending:
                known.setdefault(name, distribution)

    def fail(self, trial, reason: str, kind: str) -> None:
        """Mark a RUNNING trial (live or frozen) FAIL with its reason, without telling the sampler
        (a driver repairing another run's orphans)."""
        tid = self.trial_id(trial)
        self.storage.set_trial_user_attr(tid, FAIL_REASON, reason)
        self.storage.set_trial_user_attr(tid, FAIL_KIND, kind)
        self.storage.set_trial_state_values(tid, TrialState.FAIL)

    def queued_params(self, frozen) -> dict[str, Any]:
        """The parameters a trial was queued with (``enqueue_trial``), then those it drew."""
        return {**frozen.system_attrs.get("fixed_params", {}), **frozen.params}

    def running(self):
        return self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


class _ParamBuffer:
    """The study's storage as one trial sees it while its parameters are drawn:
    ``set_trial_param`` of that trial is collected, everything else passes through."""

    def __init__(self, storage, trial_id: int, pending: list[tuple]) -> None:
        self._storage, self._trial_id, self._pending = storage, trial_id, pending

    def set_trial_param(self, trial_id: int, name: str, value: float, distribution) -> None:
        if trial_id != self._trial_id:
            self._storage.set_trial_param(trial_id, name, value, distribution)
            return
        self._pending.append((name, value, distribution))

    def __getattr__(self, name: str):
        return getattr(self._storage, name)


def _constraint_value(name: str, value: Any) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"constraint {name!r} must be a float; got {type(value).__name__}") from None
    if math.isnan(value):
        raise ValueError(f"constraint {name!r} is NaN")
    return value
