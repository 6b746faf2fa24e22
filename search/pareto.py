"""Pareto front and hypervolume: the project's one definition of search quality.

Everything here is plain numpy/pandas. The study-level helpers only read
``study.trials``, ``study.directions``, ``study.metric_names`` and
``study.user_attrs``, so Optuna itself is never imported.

Hypervolume has one definition in compresstune: the area dominated by the
feasible, fully fine-tuned trials on the axes (validation accuracy, log2 of the
compression ratio), both maximised, above the reference point
(baseline accuracy - maximum accuracy drop, log2 ratio 0) stored in the study
when it was created.

Example:
    >>> pareto_mask([[0.9, 100], [0.8, 50], [0.7, 80]], ["maximize", "minimize"]).tolist()
    [True, True, False]
    >>> round(hypervolume_2d([0.9], [2.0], ref_acc=0.8), 6)
    0.2
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "front",
    "hypervolume_2d",
    "hypervolume_series",
    "pareto_mask",
    "reference_point",
    "study_hypervolume",
]

# Default objective names by position, used when ``study.metric_names`` is unset.
_DEFAULT_METRICS = ("val_accuracy", "size_bytes")
# Keeps the (block x n x d) comparison tensor of ``pareto_mask`` near 16 M cells.
_MASK_BLOCK_CELLS = 16_000_000


# --------------------------------------------------------------------------- math


def _direction_sign(direction: Any, index: int) -> float:
    """+1 for minimise, -1 for maximise, so that smaller is always better."""
    name = getattr(direction, "name", direction)
    name = str(name).lower()
    if name == "minimize":
        return 1.0
    if name == "maximize":
        return -1.0
    raise ValueError(
        f"`directions[{index}]` must be 'maximize' or 'minimize' (or an optuna StudyDirection); "
        f"got {direction!r}."
    )


def pareto_mask(points: Any, directions: Sequence[Any]) -> np.ndarray:
    """Mark the non-dominated rows of ``points``.

    A row dominates another when it is at least as good on every objective and
    strictly better on one. Identical rows never dominate each other, so ties on
    the front are all kept. Rows containing NaN are never on the front and never
    dominate anything; ``inf`` compares as usual.

    Args:
        points: array-like of shape ``(n, d)``.
        directions: ``d`` entries, each ``"maximize"``/``"minimize"`` or an
            ``optuna.study.StudyDirection``.

    Returns:
        Boolean array of shape ``(n,)``, True for rows on the front.

    Raises:
        ValueError: when ``points`` is not 2-D or its width differs from
            ``len(directions)``, or a direction is unknown.

    Example:
        >>> pareto_mask([[1, 1], [1, 1], [0, 2]], ["maximize", "maximize"]).tolist()
        [True, True, True]
        >>> pareto_mask([[1, 1], [2, 2]], ["minimize", "minimize"]).tolist()
        [True, False]
    """
    signs = np.array([_direction_sign(d, i) for i, d in enumerate(directions)], dtype=float)
    pts = np.asarray(points, dtype=float)
    if pts.size == 0:
        return np.zeros(pts.shape[0] if pts.ndim else 0, dtype=bool)
    if pts.ndim != 2 or pts.shape[1] != len(signs):
        raise ValueError(
            f"`points` must have shape (n, {len(signs)}) to match `directions`; got shape {pts.shape}."
        )
    loss = pts * signs
    valid = ~np.isnan(loss).any(axis=1)
    others = loss[valid]
    mask = np.zeros(len(loss), dtype=bool)
    if len(others) == 0:
        return mask
    block = max(1, _MASK_BLOCK_CELLS // (len(others) * loss.shape[1]))
    rows = np.flatnonzero(valid)
    for start in range(0, len(rows), block):
        idx = rows[start : start + block]
        cand = loss[idx, None, :]
        le = (others[None, :, :] <= cand).all(axis=2)
        lt = (others[None, :, :] < cand).any(axis=2)
        mask[idx] = ~(le & lt).any(axis=1)
    return mask


def _as_1d(name: str, values: Any) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must be one-dimensional; got shape {arr.shape}.")
    return arr


def _finite_number(name: str, value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a finite number; got {value!r}.") from None
    if not math.isfinite(out):
        raise ValueError(f"`{name}` must be a finite number; got {value!r}.")
    return out


def hypervolume_2d(
    acc: Any,
    log2_ratio: Any,
    ref_acc: float,
    ref_log2_ratio: float = 0.0,
) -> float:
    """Exact hypervolume on (validation accuracy, log2 compression ratio), both maximised.

    The area of the union of the rectangles ``[ref_acc, acc_i] x [ref_log2_ratio,
    log2_ratio_i]``. Pass feasible points only. Points that are not strictly
    better than the reference on both axes, and non-finite points, contribute
    nothing. Sweep in decreasing ratio, O(n log n).

    Args:
        acc: validation accuracies, shape ``(n,)``.
        log2_ratio: ``log2(reference_bytes / size_bytes)``, shape ``(n,)``.
        ref_acc: reference accuracy (baseline accuracy - maximum drop).
        ref_log2_ratio: reference log2 ratio; 0 means "no smaller than fp32".

    Returns:
        The hypervolume (accuracy x log2-ratio units); 0.0 when nothing counts.

    Raises:
        ValueError: when the arrays differ in length or the reference is not finite.

    Example:
        >>> round(hypervolume_2d([0.9, 0.85], [1.0, 3.0], ref_acc=0.8), 6)  # 0.1*1 + 0.05*2
        0.2
    """
    a = _as_1d("acc", acc)
    r = _as_1d("log2_ratio", log2_ratio)
    if a.shape != r.shape:
        raise ValueError(
            f"`acc` and `log2_ratio` must have the same length; got {a.shape[0]} and {r.shape[0]}."
        )
    ref_a = _finite_number("ref_acc", ref_acc)
    ref_r = _finite_number("ref_log2_ratio", ref_log2_ratio)
    keep = np.isfinite(a) & np.isfinite(r) & (a > ref_a) & (r > ref_r)
    a, r = a[keep], r[keep]
    order = np.lexsort((-a, -r))  # ratio descending, then accuracy descending
    volume, best_acc = 0.0, ref_a
    for i in order:
        if a[i] > best_acc:
            volume += (a[i] - best_acc) * (r[i] - ref_r)
            best_acc = a[i]
    return float(volume)


# ------------------------------------------------------------------ study access


def _metric_names(study: Any) -> list[str]:
    n = len(study.directions)
    names = list(getattr(study, "metric_names", None) or [])
    if len(names) != n:
        names = list(_DEFAULT_METRICS[:n]) + [f"objective_{i}" for i in range(len(_DEFAULT_METRICS), n)]
    return names


def _constraints(trial: Any) -> dict[str, float]:
    """Constraint values by key: "0", "1", ... for the list in the system attr
    ``"constraints"``, the name for Optuna >= 5's ``trial.set_constraint(name, value)``."""
    by_key = getattr(trial, "constraints", None)
    if isinstance(by_key, Mapping):  # Optuna >= 5 reads both formats itself
        return {str(k): float(v) for k, v in by_key.items()}
    attrs = getattr(trial, "system_attrs", {}) or {}
    out = {str(i): float(v) for i, v in enumerate(attrs.get("constraints") or [])}
    out.update({k[len("constraints:") :]: float(v) for k, v in attrs.items() if str(k).startswith("constraints:")})
    return out


def _float_or_nan(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _timestamp(value: Any) -> pd.Timestamp:
    return pd.Timestamp(value) if value is not None else pd.NaT


def _trial_row(trial: Any, metrics: Sequence[str], reference_bytes: float) -> dict[str, Any]:
    """The columns that the front, the hypervolume and the report all need."""
    attrs = dict(trial.user_attrs or {})
    values = list(trial.values or [])
    row: dict[str, Any] = {"number": int(trial.number), "state": trial.state.name}
    for i, name in enumerate(metrics):
        row[f"values_{name}"] = _float_or_nan(values[i]) if i < len(values) else math.nan
    acc = attrs.get("val_accuracy", values[0] if values else None)
    size = attrs.get("size_bytes", values[1] if len(values) > 1 else None)
    row["size_bytes"] = _float_or_nan(size)
    ratio = _float_or_nan(attrs.get("ratio"))
    if math.isnan(ratio) and row["size_bytes"] > 0 and reference_bytes > 0:
        ratio = reference_bytes / row["size_bytes"]
    row["ratio"] = ratio
    row["log2_ratio"] = math.log2(ratio) if ratio > 0 else math.nan
    row["val_accuracy"] = _float_or_nan(acc)
    row["test_accuracy"] = _float_or_nan(attrs.get("test_accuracy"))
    row["feasible"] = all(c <= 0 for c in _constraints(trial).values())
    row["rejected"] = attrs.get("rejected")
    rung = attrs.get("stopped_at_rung")
    row["stopped_at_rung"] = None if rung is None else int(rung)
    row["seed_trial"] = bool(attrs.get("seed_trial", False))
    source = attrs.get("promoted_from")
    row["promoted_from"] = None if source is None else int(source)
    refined = attrs.get("refined_from")
    row["refined_from"] = None if refined is None else int(refined)
    row["datetime_start"] = _timestamp(trial.datetime_start)
    row["datetime_complete"] = _timestamp(trial.datetime_complete)
    plan = attrs.get("plan")
    row["plan"] = plan if plan is None or isinstance(plan, str) else json.dumps(plan, sort_keys=True)
    return row


def _reference_bytes(study: Any) -> float:
    baseline = (study.user_attrs or {}).get("baseline") or {}
    return _float_or_nan(baseline.get("reference_bytes"))


def _trials(study: Any) -> list[Any]:
    """The study's trials without Optuna's deep copy (read-only here)."""
    getter = getattr(study, "get_trials", None)
    return list(getter(deepcopy=False)) if getter is not None else list(study.trials)


def _core_frame(study: Any, trials: Sequence[Any] | None = None) -> pd.DataFrame:
    """One row per trial with objectives, feasibility and the eligibility flags."""
    metrics = _metric_names(study)
    ref_bytes = _reference_bytes(study)
    rows = [_trial_row(t, metrics, ref_bytes) for t in (_trials(study) if trials is None else trials)]
    df = pd.DataFrame(rows, columns=list(_trial_row_columns(metrics)))
    df["stopped_at_rung"] = df["stopped_at_rung"].astype("Int64")
    df["feasible"] = df["feasible"].astype(bool)
    df["seed_trial"] = df["seed_trial"].astype(bool)
    df["rejected"] = df["rejected"].astype(object)
    df["promoted_from"] = df["promoted_from"].astype("Int64")
    df["refined_from"] = df["refined_from"].astype("Int64")
    df["promoted_to"] = _promoted_to(df)
    for col in ("datetime_start", "datetime_complete"):
        df[col] = pd.to_datetime(df[col])
    return df


def _trial_row_columns(metrics: Sequence[str]) -> Iterable[str]:
    yield from ("number", "state")
    yield from (f"values_{m}" for m in metrics)
    yield from (
        "size_bytes", "ratio", "log2_ratio", "val_accuracy", "test_accuracy", "feasible",
        "rejected", "stopped_at_rung", "seed_trial", "promoted_from", "refined_from", "datetime_start",
        "datetime_complete", "plan",
    )  # fmt: skip


def _promoted_to(df: pd.DataFrame) -> pd.Series:
    """For a short trial that a COMPLETE promotion replaces, that promotion's number (else NA)."""
    done = df[(df["state"].astype(str) == "COMPLETE") & df["promoted_from"].notna()]
    by_source = dict(zip(done["promoted_from"].astype(int), done["number"].astype(int)))
    return df["number"].map(by_source).astype("Int64")


def _missing(series: pd.Series) -> pd.Series:
    """True where a value is absent: None, NaN, or an empty string from a CSV."""
    return series.isna() | series.astype(str).str.strip().isin(["", "nan", "None", "<NA>"])


def _eligible(df: pd.DataFrame) -> pd.Series:
    """Trials that count for the front and the hypervolume.

    COMPLETE, feasible (all constraints <= 0), fully fine-tuned (not stopped at a
    rung), not rejected by a budget known before training (size, ratio, bops, macs,
    latency) and not replaced by a COMPLETE promotion to a longer fine-tune
    (``promoted_to``). Missing columns mean "no such trials", so hand-made frames
    work.
    """
    ok = pd.Series(True, index=df.index)
    if "state" in df:
        ok &= df["state"].astype(str) == "COMPLETE"
    if "feasible" in df:
        ok &= df["feasible"].map(_truthy).astype(bool)
    if "rejected" in df:
        ok &= _missing(df["rejected"])
    if "stopped_at_rung" in df:
        ok &= _missing(df["stopped_at_rung"])
    if "promoted_to" in df:
        ok &= _missing(df["promoted_to"])
    return ok


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value) if value == value else False  # NaN -> False


def _front_mask(df: pd.DataFrame, metrics: Sequence[str], directions: Sequence[Any]) -> pd.Series:
    """Pareto membership over the study's objectives, among eligible rows only."""
    eligible = _eligible(df)
    mask = pd.Series(False, index=df.index)
    if eligible.any():
        cols = [f"values_{m}" for m in metrics]
        points = df.loc[eligible, cols].to_numpy(dtype=float)
        mask.loc[eligible] = pareto_mask(points, directions)
    return mask


def reference_point(study: Any) -> dict[str, float]:
    """The hypervolume reference point stored in the study.

    Reads the study user attr ``"reference_point"``; when it is absent, falls back
    to ``baseline.val_accuracy - max_accuracy_drop`` at log2 ratio 0.

    Args:
        study: an ``optuna.Study`` written by the compresstune controller.

    Returns:
        ``{"val_accuracy": float, "log2_ratio": float}``.

    Raises:
        ValueError: when neither the reference point nor the baseline and the
            maximum drop are stored.

    Example:
        >>> class S: user_attrs = {"reference_point": {"val_accuracy": 0.8, "log2_ratio": 0.0}}
        >>> reference_point(S())
        {'val_accuracy': 0.8, 'log2_ratio': 0.0}
    """
    attrs = study.user_attrs or {}
    ref = attrs.get("reference_point")
    if isinstance(ref, Mapping) and "val_accuracy" in ref:
        return {
            "val_accuracy": _finite_number("reference_point.val_accuracy", ref["val_accuracy"]),
            "log2_ratio": _finite_number("reference_point.log2_ratio", ref.get("log2_ratio", 0.0)),
        }
    baseline = attrs.get("baseline") or {}
    if "val_accuracy" in baseline and "max_accuracy_drop" in attrs:
        acc = _finite_number("baseline.val_accuracy", baseline["val_accuracy"])
        drop = _finite_number("max_accuracy_drop", attrs["max_accuracy_drop"])
        return {"val_accuracy": acc - drop, "log2_ratio": 0.0}
    raise ValueError(
        "The study user attr `reference_point` must be {'val_accuracy': float, 'log2_ratio': float} "
        f"(or `baseline` and `max_accuracy_drop` must be set); got {ref!r}."
    )


def _ref_pair(ref: Any) -> tuple[float, float]:
    if isinstance(ref, Mapping):
        if "val_accuracy" not in ref:
            raise ValueError(f"`ref` must have a 'val_accuracy' key; got {dict(ref)!r}.")
        return (
            _finite_number("ref['val_accuracy']", ref["val_accuracy"]),
            _finite_number("ref['log2_ratio']", ref.get("log2_ratio", 0.0)),
        )
    try:
        acc, ratio = ref
    except (TypeError, ValueError):
        raise ValueError(
            f"`ref` must be a mapping with 'val_accuracy' (and 'log2_ratio') or a pair; got {ref!r}."
        ) from None
    return _finite_number("ref[0]", acc), _finite_number("ref[1]", ratio)


# ------------------------------------------------------------------ public study API


def study_hypervolume(study: Any) -> float:
    """Hypervolume of a study, with the reference point stored in it.

    Args:
        study: an ``optuna.Study`` written by the compresstune controller.

    Returns:
        :func:`hypervolume_2d` over the feasible, fully fine-tuned, non-rejected
        COMPLETE trials.

    Example:
        >>> import optuna  # doctest: +SKIP
        >>> study = optuna.load_study(study_name="s", storage="sqlite:///runs/x/study.db")  # doctest: +SKIP
        >>> study_hypervolume(study)  # doctest: +SKIP
        0.0731
    """
    ref_acc, ref_ratio = _ref_pair(reference_point(study))
    df = _core_frame(study)
    ok = _eligible(df)
    sign = _metric_sign(study)
    return hypervolume_2d(sign * df.loc[ok, "val_accuracy"], df.loc[ok, "log2_ratio"], sign * ref_acc, ref_ratio)


def _metric_sign(study: Any) -> float:
    """+1 for a maximised metric (accuracy), -1 for a minimised one (perplexity, MSE): the
    hypervolume is taken on the metric oriented so that higher is better."""
    directions = list(getattr(study, "directions", []) or [])
    return -1.0 if directions and _direction_sign(directions[0], 0) > 0 else 1.0


def front(study: Any, *, objectives: Sequence[str] | None = None) -> pd.DataFrame:
    """The feasible Pareto front of a study, sorted by size.

    Only COMPLETE, feasible, non-rejected trials that were not stopped early are
    candidates. With the default ``objectives=None`` all the study's objectives
    are used, so the trial numbers equal ``study.best_trials`` whenever no
    trial was stopped early; pass ``objectives=["val_accuracy", "size_bytes"]``
    for the 2-D accuracy/size front of a three-objective study.

    Args:
        study: an ``optuna.Study`` written by the compresstune controller.
        objectives: metric names (from ``study.metric_names``) to use.

    Returns:
        DataFrame with one row per front trial: ``number``, ``state``,
        ``values_<metric>``, ``size_bytes``, ``ratio``, ``log2_ratio``,
        ``val_accuracy``, ``test_accuracy``, ``feasible``, ``rejected``,
        ``stopped_at_rung``, ``seed_trial``, ``datetime_start``,
        ``datetime_complete``, ``plan`` (JSON string); sorted by
        ``size_bytes`` then ``number``.

    Raises:
        ValueError: when ``objectives`` names a metric the study does not have.

    Example:
        >>> front(study)[["number", "val_accuracy", "size_bytes"]]  # doctest: +SKIP
           number  val_accuracy  size_bytes
        0       7         0.912       41237
    """
    df = _core_frame(study)
    metrics = _metric_names(study)
    directions = list(study.directions)
    if objectives is not None:
        unknown = [o for o in objectives if o not in metrics]
        if unknown or not objectives:
            raise ValueError(f"`objectives` must be a non-empty subset of {metrics}; got {list(objectives)!r}.")
        directions = [directions[metrics.index(o)] for o in objectives]
        metrics = list(objectives)
    on_front = _front_mask(df, metrics, directions)
    out = df.loc[on_front].sort_values(["size_bytes", "number"], kind="stable")
    return out.reset_index(drop=True)


def hypervolume_series(trials_df: pd.DataFrame, ref: Any, *, by: str = "number",
                       direction: str = "maximize") -> pd.DataFrame:
    """Hypervolume as the study progresses, by trial number or by completion time.

    Row ``k`` holds the hypervolume of the eligible trials (COMPLETE, feasible,
    not stopped, not rejected) among the first ``k`` trials in the chosen order.

    Args:
        trials_df: a frame with ``number``, ``val_accuracy`` (or one ``val_<metric>``) and ``log2_ratio``
            (or ``ratio``); ``state``, ``feasible``, ``rejected``,
            ``stopped_at_rung``, ``datetime_start`` and ``datetime_complete``
            are used when present. :func:`compresstune.search.report.trials_frame`
            and the ``trials.csv`` read back with ``pd.read_csv`` both work.
        ref: ``{"val_accuracy": a, "log2_ratio": r}`` or a pair ``(a, r)``.
        by: ``"number"`` (one row per trial, in number order) or ``"time"``
            (one row per finished trial, in completion order).
        direction: the metric's direction (``"minimize"`` for a perplexity or an MSE).

    Returns:
        DataFrame with columns ``number``, ``hypervolume``, ``elapsed_s``
        (seconds from the first trial start to this trial's completion; NaN when
        unknown).

    Raises:
        ValueError: when ``by`` is unknown, a needed column is missing, or
            ``ref`` is malformed.

    Example:
        >>> df = pd.DataFrame({"number": [0, 1], "val_accuracy": [0.9, 0.95], "ratio": [4.0, 2.0]})
        >>> hv = hypervolume_series(df, {"val_accuracy": 0.8, "log2_ratio": 0.0})
        >>> hv["hypervolume"].round(6).tolist()
        [0.2, 0.25]
    """
    if by not in ("number", "time"):
        raise ValueError(f"`by` must be 'number' or 'time'; got {by!r}.")
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"`direction` must be 'maximize' or 'minimize'; got {direction!r}.")
    sign = 1.0 if direction == "maximize" else -1.0
    ref_acc, ref_ratio = _ref_pair(ref)
    ref_acc *= sign
    df = _series_input(trials_df)
    if by == "time":
        df = df[df["datetime_complete"].notna()].sort_values(["datetime_complete", "number"], kind="stable")
    else:
        df = df.sort_values("number", kind="stable")
    ok = _eligible(df.drop(columns=["promoted_to"], errors="ignore")).to_numpy()
    acc = sign * df["val_accuracy"].to_numpy(dtype=float)
    lr = df["log2_ratio"].to_numpy(dtype=float)
    numbers, replaces = df["number"].to_numpy(dtype=int), _replaces(df)
    volumes, current, gone = [], 0.0, set()
    for k in range(len(df)):
        if replaces[k] is not None:  # a promotion finished: its short trial leaves the front
            gone.add(replaces[k])
        if ok[k] or replaces[k] is not None:
            sel = ok[: k + 1] & ~np.isin(numbers[: k + 1], list(gone))
            current = hypervolume_2d(acc[: k + 1][sel], lr[: k + 1][sel], ref_acc, ref_ratio)
        volumes.append(current)
    return pd.DataFrame(
        {
            "number": df["number"].astype(int).to_numpy(),
            "hypervolume": np.asarray(volumes, dtype=float),
            "elapsed_s": df["elapsed_s"].to_numpy(dtype=float),
        }
    )


def _replaces(df: pd.DataFrame) -> list[int | None]:
    """Per row, the short trial a COMPLETE promotion replaces (None for any other row)."""
    if "promoted_from" not in df:
        return [None] * len(df)
    complete = df["state"].astype(str) == "COMPLETE" if "state" in df else pd.Series(True, index=df.index)
    source = pd.to_numeric(df["promoted_from"], errors="coerce")
    return [int(s) if c and pd.notna(s) else None for s, c in zip(source, complete)]


def _series_input(trials_df: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(trials_df, pd.DataFrame):
        raise ValueError(f"`trials_df` must be a pandas DataFrame; got {type(trials_df).__name__}.")
    named = [c for c in trials_df.columns if str(c).startswith("val_")]
    if "val_accuracy" not in trials_df and len(named) == 1:  # a trials.csv of another metric: val_<metric>
        trials_df = trials_df.rename(columns={named[0]: "val_accuracy"})
    missing = [c for c in ("number", "val_accuracy") if c not in trials_df]
    if "log2_ratio" not in trials_df and "ratio" not in trials_df:
        missing.append("log2_ratio (or ratio)")
    if missing:
        raise ValueError(f"`trials_df` is missing column(s) {missing}; got columns {list(trials_df.columns)}.")
    df = trials_df.copy()
    if "log2_ratio" not in df:
        ratio = pd.to_numeric(df["ratio"], errors="coerce")
        df["log2_ratio"] = np.log2(ratio.where(ratio > 0))
    for col in ("datetime_start", "datetime_complete"):
        df[col] = pd.to_datetime(df[col], errors="coerce") if col in df else pd.NaT
    t0 = df["datetime_start"].min()
    if pd.isna(t0):
        t0 = df["datetime_complete"].min()
    df["elapsed_s"] = (df["datetime_complete"] - t0).dt.total_seconds() if pd.notna(t0) else math.nan
    return df
