"""The report's data: the trials frame and :class:`ReportData`, plain pandas and
python objects that tests check directly (no plotly)."""

from __future__ import annotations

import json
import math
import shlex
import warnings
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import pandas as pd

from compresstune.search import pareto as _pareto
from compresstune.search._records import Records, metric_of


KNOBS = ("sparsity", "bits", "rank_fraction")
# fANOVA's defaults (64 trees, depth 64) take tens of seconds on a few hundred trials with
# dozens of per-layer params; 32 trees of depth 8 keep the top ranks in a few seconds.
_FANOVA_TREES, _FANOVA_DEPTH = 32, 8
_PARAM_PREFIX = "params_"




def trials_frame(study: Any) -> pd.DataFrame:
    """One row per trial, ready for ``DataFrame.to_csv``.

    Columns: ``number``, ``state``, ``values_<metric>`` (one per objective),
    ``params_<name>`` (one per trial parameter), ``size_bytes``, ``ratio``,
    ``log2_ratio``, ``val_accuracy``, ``test_accuracy`` (the study's metric,
    whatever it is; :func:`csv_frame` names them ``val_<metric>`` and
    ``test_<metric>`` for a metric other than accuracy), ``feasible``,
    ``violated`` (names of the positive constraints), ``rejected`` (the reason,
    e.g. ``"budget"``, or empty), ``stopped_at_rung``, ``seed_trial``,
    ``promoted_from`` (a promoted trial: the short trial it fine-tunes longer), ``promoted_to``
    (a short trial: the COMPLETE promotion that replaces it), ``refined_from`` (a refinement of the
    front: the front trial it continues), ``fail_reason``, ``apply_s``, ``finetune_s``, ``eval_s``, ``total_s``,
    ``datetime_start``, ``datetime_complete``, ``category`` (one of front,
    dominated, infeasible, rejected, stopped, replaced, failed, pruned, running),
    ``pareto`` and ``plan`` (the plan's JSON string, so ``pd.read_csv`` gets it
    back unchanged).

    Args:
        study: an ``optuna.Study`` written by the compresstune controller.

    Returns:
        The frame, sorted by trial number.

    Example:
        >>> df = trials_frame(study)  # doctest: +SKIP
        >>> df.loc[df.pareto, ["number", "val_accuracy", "size_bytes"]]  # doctest: +SKIP
    """
    trials = _pareto._trials(study)
    core = _pareto._core_frame(study, trials)
    metrics = _pareto._metric_names(study)
    core["pareto"] = _pareto._front_mask(core, metrics, list(study.directions))
    names = list((study.user_attrs or {}).get("constraint_names") or [])
    extra = pd.DataFrame([_extra_row(t, names) for t in trials], index=core.index, columns=list(_EXTRA_COLUMNS))
    params = pd.DataFrame([_param_row(t) for t in trials], index=core.index)
    df = pd.concat([core, params, extra], axis=1)
    df["category"] = _categories(df)
    order = (
        ["number", "state", *[f"values_{m}" for m in metrics], *params.columns,
         "size_bytes", "ratio", "log2_ratio", "val_accuracy", "test_accuracy", "feasible",
         "violated", "rejected", "stopped_at_rung", "seed_trial", "promoted_from", "promoted_to", "refined_from",
         "fail_reason", "apply_s", "finetune_s", "eval_s", "total_s", "macs", "onnx_bytes", "onnx_latency_ms",
         "datetime_start", "datetime_complete", "category", "pareto", "plan"]
    )  # fmt: skip
    return df[order].sort_values("number", kind="stable").reset_index(drop=True)


def csv_frame(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """``frame`` as ``trials.csv`` and ``pareto.csv`` hold it: the ``val_accuracy`` and
    ``test_accuracy`` columns are named ``val_<metric>`` and ``test_<metric>`` for a metric
    other than accuracy (unchanged for accuracy).

    Example:
        >>> list(csv_frame(pd.DataFrame({"val_accuracy": [9.5], "test_accuracy": [9.7]}), "perplexity"))
        ['val_perplexity', 'test_perplexity']
    """
    if metric == "accuracy":
        return frame
    return frame.rename(columns={"val_accuracy": f"val_{metric}", "test_accuracy": f"test_{metric}"})


def _param_row(trial: Any) -> dict[str, Any]:
    return {f"{_PARAM_PREFIX}{k}": v for k, v in (trial.params or {}).items()}


_EXTRA_COLUMNS = ("violated", "fail_reason", "apply_s", "finetune_s", "eval_s", "total_s", "macs", "onnx_bytes",
                  "onnx_latency_ms")


def _extra_row(trial: Any, constraint_names: Sequence[str]) -> dict[str, Any]:
    attrs = trial.user_attrs or {}
    timings = attrs.get("timings") or {}
    row = {"violated": _violated(trial, constraint_names), "fail_reason": attrs.get("fail_reason")}
    for key in ("apply_s", "finetune_s", "eval_s", "total_s"):
        row[key] = _pareto._float_or_nan(timings.get(key))
    for key in ("macs", "onnx_bytes", "onnx_latency_ms"):  # measured when that objective or budget asks
        row[key] = _pareto._float_or_nan(attrs.get(key))
    return row


def _violated(trial: Any, names: Sequence[str]) -> str | None:
    """Names of the positive constraints, e.g. "accuracy_drop,stopped"; None when feasible."""
    bad = [_constraint_label(key, names) for key, value in _pareto._constraints(trial).items() if value > 0]
    return ",".join(bad) or None


def _constraint_label(key: str, names: Sequence[str]) -> str:
    if key.isdigit():
        return names[int(key)] if int(key) < len(names) else f"constraint_{key}"
    return key


def _categories(df: pd.DataFrame) -> pd.Series:
    """Each trial in exactly one bucket. Priority: front > replaced (by its promotion) >
    rejected > stopped > infeasible > dominated; then failed, pruned, and running (or waiting)."""
    state = df["state"]
    complete = state == "COMPLETE"
    rejected = complete & ~_pareto._missing(df["rejected"])
    stopped = complete & ~rejected & df["stopped_at_rung"].notna()
    infeasible = complete & ~rejected & ~stopped & ~df["feasible"]
    out = pd.Series("running", index=df.index, dtype=object)
    out[state == "FAIL"] = "failed"
    out[state == "PRUNED"] = "pruned"
    out[complete] = "dominated"
    out[infeasible] = "infeasible"
    out[stopped] = "stopped"
    out[rejected] = "rejected"
    out[complete & df["promoted_to"].notna()] = "replaced"
    out[df["pareto"]] = "front"
    return out


class ReportData(NamedTuple):
    """Everything the report shows, as plain pandas/python objects.

    Attributes:
        study_name: the Optuna study name.
        metric_names: objective names, e.g. ``["val_accuracy", "size_bytes"]``.
        directions: ``"maximize"``/``"minimize"`` per objective.
        trials: :func:`trials_frame`.
        front: the Pareto trials (all objectives), sorted by size; same columns.
        front_2d: the (val metric, size) front; equals ``front`` with two objectives.
        hypervolume: :func:`compresstune.search.pareto.study_hypervolume` (NaN
            without a reference point).
        hypervolume_by_trial: ``hypervolume_series(..., by="number")``.
        hypervolume_by_time: ``hypervolume_series(..., by="time")``.
        hypervolume_front: the points bounding the hypervolume region
            (``number``, ``size_bytes``, ``val_accuracy``), sorted by size.
        reference_point: ``{"val_accuracy", "log2_ratio", "size_bytes"}`` or None.
        baseline: ``{"val_accuracy", "test_accuracy", "reference_bytes",
            "packed_bytes"}`` or None.
        layers: layer FQNs in model order.
        heatmaps: ``{"sparsity"|"bits"|"rank_fraction": DataFrame}``, rows = Pareto
            trial numbers in ``front`` order, columns = ``layers``.
        channels: fraction of each channel group's channels a Pareto trial keeps (rows
            as ``heatmaps``, columns = groups), or None when no Pareto trial prunes channels.
        distillation: Pareto trial number -> ``{"temperature", "alpha"}``.
        importances: metric name -> {param name: importance}, most important first.
        importance_note: why importances are missing, or None.
        export_commands: Pareto trial number -> shell command that exports it.
        counts: trials, complete, front, dominated, failed, pruned, stopped,
            rejected, infeasible, running.
        settings: config, max_accuracy_drop, fingerprint, study directory.
        versions: package versions (compresstune, torch, optuna, ray, python).
        machine: machine description, or None.
        started_at: ISO start time, or None.
        timing: wall_s (time with a trial running, summed over runs), span_s (first start to last
            end), trials_total_s, trial_mean_s, trial_median_s and the
            mean of each phase.
        sensitivity: the sensitivity scan's drops of the metric without fine-tuning
            (rows = layers, columns = settings such as ``"bits 4"``), or None when
            the study has no scan; ``.attrs`` holds ``examples`` and
            ``baseline_accuracy`` (the metric's value on the scan's examples), and
            ``metric`` and ``drop_unit`` (``"absolute"``/``"relative"``) when the
            scan stored them.
        metric: the study's metric, e.g. ``"accuracy"`` or ``"perplexity"``; the
            ``val_accuracy``/``test_accuracy`` columns and keys hold its values.
        direction: the metric's direction, ``"maximize"`` or ``"minimize"``.
    """

    study_name: str
    metric_names: list[str]
    directions: list[str]
    trials: pd.DataFrame
    front: pd.DataFrame
    front_2d: pd.DataFrame
    hypervolume: float
    hypervolume_by_trial: pd.DataFrame
    hypervolume_by_time: pd.DataFrame
    hypervolume_front: pd.DataFrame
    reference_point: dict[str, float] | None
    baseline: dict[str, Any] | None
    layers: list[str]
    heatmaps: dict[str, pd.DataFrame]
    distillation: dict[int, dict[str, float]]
    importances: dict[str, dict[str, float]]
    importance_note: str | None
    export_commands: dict[int, str]
    counts: dict[str, int]
    settings: dict[str, Any]
    versions: dict[str, str]
    machine: str | None
    started_at: str | None
    timing: dict[str, float]
    sensitivity: pd.DataFrame | None = None
    metric: str = "accuracy"
    direction: str = "maximize"
    onnx_commands: Mapping[int, str] = {}  # Pareto trial number -> the command that exports it to ONNX
    channels: pd.DataFrame | None = None


def report_data(study: Any, *, study_dir: str | Path | None = None) -> ReportData:
    """Compute everything the report shows.

    Args:
        study: an ``optuna.Study`` written by the compresstune controller.
        study_dir: the study directory named in the export commands; by default
            the folder of a ``sqlite:///DIR/study.db`` storage, else ``DIR``.

    Returns:
        A :class:`ReportData`.

    Example:
        >>> data = report_data(study)  # doctest: +SKIP
        >>> data.heatmaps["bits"].shape == (len(data.front), len(data.layers))  # doctest: +SKIP
        True
    """
    attrs = dict(study.user_attrs or {})
    metrics = _pareto._metric_names(study)
    trials = trials_frame(study)
    front = trials[trials["pareto"]].sort_values(["size_bytes", "number"], kind="stable")
    front = front.reset_index(drop=True)
    front_2d = _front_2d(trials, metrics, study, front)
    metric, direction = _metric(study, attrs)
    ref = _reference(study)
    hv, by_trial, by_time, hv_front = _hypervolumes(trials, ref, direction)
    layers = _layer_order(attrs.get("layers"), front["plan"])
    directory = str(study_dir) if study_dir is not None else _study_dir(study)
    importances, note = _importances(study, trials, metrics)
    return ReportData(
        study_name=str(getattr(study, "study_name", "study")),
        metric_names=metrics,
        directions=[_direction_name(d) for d in study.directions],
        trials=trials,
        front=front,
        front_2d=front_2d,
        hypervolume=hv,
        hypervolume_by_trial=by_trial,
        hypervolume_by_time=by_time,
        hypervolume_front=hv_front,
        reference_point=ref,
        baseline=_baseline(attrs),
        layers=layers,
        heatmaps=_heatmaps(front, layers),
        channels=_channels(front, attrs.get("channel_groups")),
        distillation=_distillation(front),
        importances=importances,
        importance_note=note,
        export_commands={int(n): _export_command(directory, int(n)) for n in front["number"]},
        onnx_commands={int(n): _onnx_command(directory, int(n)) for n in front["number"]},
        counts=_counts(trials),
        settings=_settings(attrs, directory),
        versions=_versions(attrs),
        machine=_str_or_none(attrs.get("machine")),
        started_at=_str_or_none(attrs.get("started_at")),
        timing=_timing(trials),
        sensitivity=_sensitivity(attrs.get("sensitivity")),
        metric=metric,
        direction=direction,
    )


def _metric(study: Any, attrs: Mapping[str, Any]) -> tuple[str, str]:
    """The study's metric and its direction: the name from the ``metric`` attr
    (accuracy when absent), the direction of the first objective (as
    :func:`compresstune.search.pareto.study_hypervolume` takes it)."""
    name, direction = metric_of(attrs)
    directions = list(getattr(study, "directions", None) or [])
    if directions:
        direction = _direction_name(directions[0])
    return name, "minimize" if direction == "minimize" else "maximize"


def _sensitivity(scan: Any) -> pd.DataFrame | None:
    """The scan stored by search/_sensitivity.py as a layers x settings frame of drops."""
    if not isinstance(scan, Mapping) or not scan.get("layers") or not scan.get("settings"):
        return None
    try:
        frame = pd.DataFrame(scan["drop"], index=list(scan["layers"]), columns=list(scan["settings"]), dtype=float)
    except (ValueError, TypeError):
        return None
    frame.attrs.update(examples=scan.get("examples"), baseline_accuracy=scan.get("baseline_accuracy"))
    frame.attrs.update({k: scan[k] for k in ("metric", "drop_unit") if scan.get(k)})  # absent in older tables
    return frame


def _direction_name(direction: Any) -> str:
    return str(getattr(direction, "name", direction)).lower()


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _front_2d(trials: pd.DataFrame, metrics: list[str], study: Any, front: pd.DataFrame) -> pd.DataFrame:
    if len(metrics) <= 2:
        return front
    wanted = [m for m in (metrics[0], "size_bytes") if m in metrics]
    directions = [study.directions[metrics.index(m)] for m in wanted]
    mask = _pareto._front_mask(trials, wanted, directions)
    out = trials[mask].sort_values(["size_bytes", "number"], kind="stable")
    return out.reset_index(drop=True)


def _reference(study: Any) -> dict[str, float] | None:
    try:
        ref = _pareto.reference_point(study)
    except ValueError:
        return None
    ref_bytes = _pareto._reference_bytes(study)
    ref["size_bytes"] = ref_bytes / 2.0 ** ref["log2_ratio"] if ref_bytes > 0 else math.nan
    return ref


def _hypervolumes(trials: pd.DataFrame, ref: dict[str, float] | None, direction: str = "maximize"):
    """Hypervolume, its series and the points bounding its region, on the metric
    oriented so that higher is better (negated when it is minimised)."""
    empty = pd.DataFrame({"number": pd.Series(dtype=int), "hypervolume": pd.Series(dtype=float),
                          "elapsed_s": pd.Series(dtype=float)})  # fmt: skip
    hv_front = pd.DataFrame(columns=["number", "size_bytes", "val_accuracy"])
    if ref is None:
        return math.nan, empty, empty, hv_front
    by_trial = _pareto.hypervolume_series(trials, ref, by="number", direction=direction)
    by_time = _pareto.hypervolume_series(trials, ref, by="time", direction=direction)
    sign = -1.0 if direction == "minimize" else 1.0
    eligible = trials[_pareto._eligible(trials)]
    hv = _pareto.hypervolume_2d(
        sign * eligible["val_accuracy"], eligible["log2_ratio"], sign * ref["val_accuracy"], ref["log2_ratio"]
    )
    better = sign * (eligible["val_accuracy"] - ref["val_accuracy"]) > 0
    above = better & (eligible["log2_ratio"] > ref["log2_ratio"])
    pts = eligible.loc[above, ["number", "size_bytes", "val_accuracy"]]
    mask = _pareto.pareto_mask(pts[["val_accuracy", "size_bytes"]].to_numpy(float), [direction, "minimize"])
    hv_front = pts[mask].sort_values(["size_bytes", "number"]).reset_index(drop=True)
    return hv, by_trial, by_time, hv_front


def _parse_plan(plan: Any) -> dict[str, Any]:
    if isinstance(plan, Mapping):
        return dict(plan)
    if not isinstance(plan, str) or not plan.strip():
        return {}
    try:
        parsed = json.loads(plan)
    except json.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _layer_order(declared: Any, plans: pd.Series) -> list[str]:
    """Model order from the study attr, then any layer only the plans mention."""
    layers = [str(x) for x in (declared or [])]
    seen = set(layers)
    for plan in plans:
        for name in (_parse_plan(plan).get("layers") or {}):
            if name not in seen:
                layers.append(name)
                seen.add(name)
    return layers


def _knob_value(knob: str, layer: str, spec: Mapping[str, Any], row: pd.Series) -> float:
    if knob != "rank_fraction":
        return _pareto._float_or_nan(spec.get(knob))
    fraction = row.get(f"{_PARAM_PREFIX}{layer}:rank_fraction")
    if fraction is not None and fraction == fraction:
        return _pareto._float_or_nan(fraction)
    # Without the trial param the fraction is unknowable (it needs the matrix shape).
    return 1.0 if spec and spec.get("rank") is None else math.nan


def _heatmaps(front: pd.DataFrame, layers: list[str]) -> dict[str, pd.DataFrame]:
    out = {}
    index = pd.Index(front["number"].astype(int), name="number")
    for knob in KNOBS:
        rows = []
        for _, row in front.iterrows():
            specs = _parse_plan(row["plan"]).get("layers") or {}
            rows.append([_knob_value(knob, layer, specs.get(layer) or {}, row) for layer in layers])
        out[knob] = pd.DataFrame(rows, index=index, columns=pd.Index(layers, name="layer"), dtype=float)
    return out


def _group_fraction(specs: Mapping[str, Any], layers: Sequence[str]) -> float:
    """The channel fraction a plan gives a group (any member's request; schema 1's flag included)."""
    for layer in layers:
        spec = specs.get(layer) or {}
        structured = spec.get("structured")
        if structured is True:
            return _pareto._float_or_nan(spec.get("sparsity"))
        if structured not in (None, False) and _pareto._float_or_nan(structured) > 0:
            return _pareto._float_or_nan(structured)
    return 0.0


def _channels(front: pd.DataFrame, groups: Any) -> pd.DataFrame | None:
    """Kept fraction of each channel group's channels per Pareto trial (as ``apply`` rounds it:
    every region keeps at least one channel)."""
    if not isinstance(groups, Mapping) or not groups or not len(front):
        return None
    rows = []
    for plan in front["plan"]:
        specs = _parse_plan(plan).get("layers") or {}
        row = []
        for info in groups.values():
            fraction = _group_fraction(specs, info.get("layers", []))
            regions = [int(length) for _, length in info.get("regions", [])]
            kept = sum(max(1, n - int(round(fraction * n))) for n in regions)
            row.append(kept / max(sum(regions), 1))
        rows.append(row)
    index = pd.Index(front["number"].astype(int), name="number")
    table = pd.DataFrame(rows, index=index, columns=pd.Index(list(groups), name="group"), dtype=float)
    return table if (table < 1).to_numpy().any() else None


def _distillation(front: pd.DataFrame) -> dict[int, dict[str, float]]:
    out = {}
    for number, plan in zip(front["number"], front["plan"]):
        parsed = _parse_plan(plan)
        out[int(number)] = {
            "temperature": _pareto._float_or_nan(parsed.get("temperature")),
            "alpha": _pareto._float_or_nan(parsed.get("alpha")),
        }
    return out


def _importance_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Fully fine-tuned COMPLETE trials: rejected and stopped ones would mislead."""
    ok = (trials["state"] == "COMPLETE") & _pareto._missing(trials["rejected"])
    ok &= trials["stopped_at_rung"].isna()
    return trials[ok]


def _importances(study: Any, trials: pd.DataFrame, metrics: list[str]):
    """fANOVA importances per objective, or ({}, why not). Never raises."""
    used = _importance_trials(trials)
    params = [c for c in used.columns if c.startswith(_PARAM_PREFIX)]
    varying = [c for c in params if used[c].nunique(dropna=True) >= 2]
    if len(used) < 2 or len(varying) < 2:
        return {}, (
            f"Importances need at least 2 fully trained trials with at least 2 varying "
            f"parameters; this study has {len(used)} trial(s) and {len(varying)} varying parameter(s)."
        )
    numbers = {int(n) for n in used["number"]}
    try:
        return {name: _fanova(study, i, numbers) for i, name in enumerate(metrics)}, None
    except Exception as exc:  # noqa: BLE001 - the report must never fail on this
        return {}, f"Importances could not be computed: {type(exc).__name__}: {exc}"


def _fanova(study: Any, index: int, numbers: set[int]) -> dict[str, float]:
    import optuna

    def target(trial: Any) -> float:
        # NaN makes Optuna skip the trial, so only ``numbers`` are fitted.
        return trial.values[index] if trial.number in numbers else math.nan

    evaluator = optuna.importance.FanovaImportanceEvaluator(n_trees=_FANOVA_TREES, max_depth=_FANOVA_DEPTH, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = optuna.importance.get_param_importances(study, target=target, evaluator=evaluator)
    return {str(k): float(v) for k, v in scores.items()}


def _study_dir(study: Any) -> str:
    """The folder of a ``sqlite:///DIR/study.db`` storage, else ``DIR``."""
    url = Records(study).url() if hasattr(study, "_storage") else None
    if isinstance(url, str) and url.startswith("sqlite:///"):
        return str(Path(url[len("sqlite:///") :]).parent)
    return "DIR"


def _export_command(directory: str, number: int) -> str:
    return f"compresstune export {shlex.quote(directory)} --trial {number} --output trial_{number}.ctz"


def _onnx_command(directory: str, number: int) -> str:
    return (f"compresstune export {shlex.quote(directory)} --trial {number} --format onnx "
            f"--output trial_{number}.onnx")


def _counts(trials: pd.DataFrame) -> dict[str, int]:
    cat = trials["category"].value_counts()
    counts = {"trials": len(trials), "complete": int((trials["state"] == "COMPLETE").sum())}
    for key in ("front", "dominated", "infeasible", "rejected", "stopped", "replaced", "failed", "pruned", "running"):
        counts[key] = int(cat.get(key, 0))
    counts["promoted"] = int(((trials["state"] == "COMPLETE") & trials["promoted_from"].notna()).sum())
    return counts


def _baseline(attrs: Mapping[str, Any]) -> dict[str, Any] | None:
    base = attrs.get("baseline")
    if not isinstance(base, Mapping) or "val_accuracy" not in base:
        return None
    keys = ("val_accuracy", "test_accuracy", "reference_bytes", "packed_bytes")
    return {k: _pareto._float_or_nan(base.get(k)) for k in keys}


def _settings(attrs: Mapping[str, Any], directory: str) -> dict[str, Any]:
    return {
        "study_dir": directory,
        "fingerprint": attrs.get("fingerprint"),
        "max_accuracy_drop": attrs.get("max_accuracy_drop"),
        "config": attrs.get("config") or {},
    }


def _versions(attrs: Mapping[str, Any]) -> dict[str, str]:
    versions = {str(k): "—" if v is None else str(v) for k, v in (attrs.get("versions") or {}).items()}
    if "compresstune" not in versions and attrs.get("compresstune_version"):
        versions["compresstune"] = str(attrs["compresstune_version"])
    return versions


def _running_seconds(trials: pd.DataFrame) -> float:
    """Time with at least one trial running: the union of the trials' [start, end] intervals, so
    the idle gap between two runs of a resumed study does not count."""
    spans = trials[["datetime_start", "datetime_complete"]].dropna().sort_values("datetime_start")
    total, cur_start, cur_end = 0.0, None, None
    for start, end in spans.itertuples(index=False):
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                total += (cur_end - cur_start).total_seconds()
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None:
        total += (cur_end - cur_start).total_seconds()
    return total if len(spans) else math.nan


def _timing(trials: pd.DataFrame) -> dict[str, float]:
    start, end = trials["datetime_start"].min(), trials["datetime_complete"].max()
    span = (end - start).total_seconds() if pd.notna(start) and pd.notna(end) else math.nan
    wall = _running_seconds(trials)
    done = trials[trials["state"] == "COMPLETE"]
    total = done["total_s"].dropna()
    out = {
        "wall_s": wall,
        "span_s": span,
        "trials_total_s": float(total.sum()) if len(total) else math.nan,
        "trial_mean_s": float(total.mean()) if len(total) else math.nan,
        "trial_median_s": float(total.median()) if len(total) else math.nan,
    }
    for phase in ("apply_s", "finetune_s", "eval_s"):
        values = done[phase].dropna()
        out[f"{phase[:-2]}_mean_s"] = float(values.mean()) if len(values) else math.nan
    return out


# ========================================================================= render
