"""The study report: compute a :class:`ReportData`, then draw it as one HTML file.

Compute first, render second: :func:`trials_frame` and :func:`report_data` return
plain pandas/python objects that tests check directly; :func:`write_report` draws
them with plotly (imported only there) into a self-contained ``report.html``
next to ``trials.csv`` and ``pareto.csv``.

Example:
    >>> import optuna  # doctest: +SKIP
    >>> study = optuna.load_study(study_name="mnist", storage="sqlite:///runs/mnist/study.db")  # doctest: +SKIP
    >>> write_report(study, "runs/mnist")  # doctest: +SKIP
    PosixPath('runs/mnist/report.html')
"""

from __future__ import annotations

import html
import json
import math
import shlex
import warnings
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd

from compresstune.search import pareto as _pareto

__all__ = ["ReportData", "render_html", "report_data", "trials_frame", "write_report"]

KNOBS = ("sparsity", "bits", "rank_fraction")
# fANOVA's defaults (64 trees, depth 64) take tens of seconds on a few hundred trials with
# dozens of per-layer params; 32 trees of depth 8 keep the top ranks in a few seconds.
_FANOVA_TREES, _FANOVA_DEPTH = 32, 8
_PARAM_PREFIX = "params_"


# =========================================================================== data


def trials_frame(study: Any) -> pd.DataFrame:
    """One row per trial, ready for ``DataFrame.to_csv``.

    Columns: ``number``, ``state``, ``values_<metric>`` (one per objective),
    ``params_<name>`` (one per trial parameter), ``size_bytes``, ``ratio``,
    ``log2_ratio``, ``val_accuracy``, ``test_accuracy``, ``feasible``,
    ``violated`` (names of the positive constraints), ``rejected`` (the reason,
    e.g. ``"budget"``, or empty), ``stopped_at_rung``, ``seed_trial``,
    ``fail_reason``, ``apply_s``, ``finetune_s``, ``eval_s``, ``total_s``,
    ``datetime_start``, ``datetime_complete``, ``category`` (one of front,
    dominated, infeasible, rejected, stopped, failed, pruned, running),
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
         "violated", "rejected", "stopped_at_rung", "seed_trial", "fail_reason",
         "apply_s", "finetune_s", "eval_s", "total_s",
         "datetime_start", "datetime_complete", "category", "pareto", "plan"]
    )  # fmt: skip
    return df[order].sort_values("number", kind="stable").reset_index(drop=True)


def _param_row(trial: Any) -> dict[str, Any]:
    return {f"{_PARAM_PREFIX}{k}": v for k, v in (trial.params or {}).items()}


_EXTRA_COLUMNS = ("violated", "fail_reason", "apply_s", "finetune_s", "eval_s", "total_s")


def _extra_row(trial: Any, constraint_names: Sequence[str]) -> dict[str, Any]:
    attrs = trial.user_attrs or {}
    timings = attrs.get("timings") or {}
    row = {"violated": _violated(trial, constraint_names), "fail_reason": attrs.get("fail_reason")}
    for key in ("apply_s", "finetune_s", "eval_s", "total_s"):
        row[key] = _pareto._float_or_nan(timings.get(key))
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
    """Each trial in exactly one bucket. Priority: front > rejected > stopped >
    infeasible > dominated; then failed, pruned, and running (or waiting)."""
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
        front_2d: the (val accuracy, size) front; equals ``front`` with two objectives.
        hypervolume: :func:`compresstune.search.pareto.study_hypervolume` (NaN
            without a reference point).
        hypervolume_by_trial: ``hypervolume_series(..., by="number")``.
        hypervolume_by_time: ``hypervolume_series(..., by="time")``.
        hypervolume_front: the points bounding the hypervolume region
            (``number``, ``size_bytes``, ``val_accuracy``), sorted by size.
        reference_point: ``{"val_accuracy", "log2_ratio", "size_bytes"}`` or None.
        baseline: ``{"val_accuracy", "test_accuracy", "reference_bytes",
            "packed_bytes"}`` or None.
        uniform_reference: uniform-compression points (``sparsity``, ``bits``,
            ``val_accuracy``, ``test_accuracy``, ``size_bytes``, ``ratio``); empty
            when the study has none.
        layers: layer FQNs in model order.
        heatmaps: ``{"sparsity"|"bits"|"rank_fraction": DataFrame}``, rows = Pareto
            trial numbers in ``front`` order, columns = ``layers``.
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
        timing: wall_s, trials_total_s, trial_mean_s, trial_median_s and the
            mean of each phase.
        sensitivity: the sensitivity scan's accuracy drops without fine-tuning
            (rows = layers, columns = settings such as ``"bits 4"``), or None when
            the study has no scan; ``.attrs`` holds ``examples`` and
            ``baseline_accuracy``.
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
    uniform_reference: pd.DataFrame
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
    ref = _reference(study)
    hv, by_trial, by_time, hv_front = _hypervolumes(trials, ref)
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
        uniform_reference=_uniform_reference(attrs),
        layers=layers,
        heatmaps=_heatmaps(front, layers),
        distillation=_distillation(front),
        importances=importances,
        importance_note=note,
        export_commands={int(n): _export_command(directory, int(n)) for n in front["number"]},
        counts=_counts(trials),
        settings=_settings(attrs, directory),
        versions=_versions(attrs),
        machine=_str_or_none(attrs.get("machine")),
        started_at=_str_or_none(attrs.get("started_at")),
        timing=_timing(trials),
        sensitivity=_sensitivity(attrs.get("sensitivity")),
    )


def _sensitivity(scan: Any) -> pd.DataFrame | None:
    """The scan stored by search/_sensitivity.py as a layers x settings frame of drops."""
    if not isinstance(scan, Mapping) or not scan.get("layers") or not scan.get("settings"):
        return None
    try:
        frame = pd.DataFrame(scan["drop"], index=list(scan["layers"]), columns=list(scan["settings"]), dtype=float)
    except (ValueError, TypeError):
        return None
    frame.attrs.update(examples=scan.get("examples"), baseline_accuracy=scan.get("baseline_accuracy"))
    return frame


def _direction_name(direction: Any) -> str:
    return str(getattr(direction, "name", direction)).lower()


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _front_2d(trials: pd.DataFrame, metrics: list[str], study: Any, front: pd.DataFrame) -> pd.DataFrame:
    if len(metrics) <= 2:
        return front
    wanted = [m for m in ("val_accuracy", "size_bytes") if m in metrics]
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


def _hypervolumes(trials: pd.DataFrame, ref: dict[str, float] | None):
    empty = pd.DataFrame({"number": pd.Series(dtype=int), "hypervolume": pd.Series(dtype=float),
                          "elapsed_s": pd.Series(dtype=float)})  # fmt: skip
    hv_front = pd.DataFrame(columns=["number", "size_bytes", "val_accuracy"])
    if ref is None:
        return math.nan, empty, empty, hv_front
    by_trial = _pareto.hypervolume_series(trials, ref, by="number")
    by_time = _pareto.hypervolume_series(trials, ref, by="time")
    eligible = trials[_pareto._eligible(trials)]
    hv = _pareto.hypervolume_2d(
        eligible["val_accuracy"], eligible["log2_ratio"], ref["val_accuracy"], ref["log2_ratio"]
    )
    above = (eligible["val_accuracy"] > ref["val_accuracy"]) & (eligible["log2_ratio"] > ref["log2_ratio"])
    pts = eligible.loc[above, ["number", "size_bytes", "val_accuracy"]]
    mask = _pareto.pareto_mask(pts[["val_accuracy", "size_bytes"]].to_numpy(float), ["maximize", "minimize"])
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
    storage = getattr(study, "_storage", None)
    url = getattr(getattr(storage, "_backend", storage), "url", None)
    if isinstance(url, str) and url.startswith("sqlite:///"):
        return str(Path(url[len("sqlite:///") :]).parent)
    return "DIR"


def _export_command(directory: str, number: int) -> str:
    return f"compresstune export {shlex.quote(directory)} --trial {number} --output trial_{number}.ctz"


def _counts(trials: pd.DataFrame) -> dict[str, int]:
    cat = trials["category"].value_counts()
    counts = {"trials": len(trials), "complete": int((trials["state"] == "COMPLETE").sum())}
    for key in ("front", "dominated", "infeasible", "rejected", "stopped", "failed", "pruned", "running"):
        counts[key] = int(cat.get(key, 0))
    return counts


def _baseline(attrs: Mapping[str, Any]) -> dict[str, Any] | None:
    base = attrs.get("baseline")
    if not isinstance(base, Mapping) or "val_accuracy" not in base:
        return None
    keys = ("val_accuracy", "test_accuracy", "reference_bytes", "packed_bytes")
    return {k: _pareto._float_or_nan(base.get(k)) for k in keys}


def _uniform_reference(attrs: Mapping[str, Any]) -> pd.DataFrame:
    cols = ["sparsity", "bits", "val_accuracy", "test_accuracy", "size_bytes"]
    rows = [r for r in (attrs.get("uniform_reference") or []) if isinstance(r, Mapping)]
    df = pd.DataFrame([{c: r.get(c) for c in cols} for r in rows], columns=cols).astype(float)
    ref_bytes = _pareto._float_or_nan((attrs.get("baseline") or {}).get("reference_bytes"))
    df["ratio"] = ref_bytes / df["size_bytes"].where(df["size_bytes"] > 0)
    return df


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


def _timing(trials: pd.DataFrame) -> dict[str, float]:
    start, end = trials["datetime_start"].min(), trials["datetime_complete"].max()
    wall = (end - start).total_seconds() if pd.notna(start) and pd.notna(end) else math.nan
    done = trials[trials["state"] == "COMPLETE"]
    total = done["total_s"].dropna()
    out = {
        "wall_s": wall,
        "trials_total_s": float(total.sum()) if len(total) else math.nan,
        "trial_mean_s": float(total.mean()) if len(total) else math.nan,
        "trial_median_s": float(total.median()) if len(total) else math.nan,
    }
    for phase in ("apply_s", "finetune_s", "eval_s"):
        values = done[phase].dropna()
        out[f"{phase[:-2]}_mean_s"] = float(values.mean()) if len(values) else math.nan
    return out


# ========================================================================= render


def write_report(study: Any, out_dir: str | Path, *, study_dir: str | Path | None = None) -> Path:
    """Write ``report.html``, ``trials.csv`` and ``pareto.csv`` into ``out_dir``.

    ``report.html`` is one self-contained file (plotly.js embedded once) that
    opens offline.

    Args:
        study: an ``optuna.Study`` written by the compresstune controller.
        out_dir: folder to write into; created when missing.
        study_dir: the study directory named in the export commands; by default
            ``out_dir`` (``compresstune report DIR`` writes into DIR).

    Returns:
        The path of ``report.html``.

    Raises:
        ValueError: when ``out_dir`` exists and is not a directory.

    Example:
        >>> write_report(study, "runs/mnist")  # doctest: +SKIP
        PosixPath('runs/mnist/report.html')
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"`out_dir` must be a directory; got {str(out)!r}, which is a file.")
    out.mkdir(parents=True, exist_ok=True)
    return _write_files(report_data(study, study_dir=out if study_dir is None else study_dir), out)


def _write_files(data: ReportData, out: Path) -> Path:
    data.trials.to_csv(out / "trials.csv", index=False)
    data.front.to_csv(out / "pareto.csv", index=False)
    path = out / "report.html"
    path.write_text(render_html(data), encoding="utf-8")
    return path


def render_html(data: ReportData) -> str:
    """Draw a :class:`ReportData` as one self-contained HTML page.

    Args:
        data: from :func:`report_data`.

    Returns:
        The HTML document, with plotly.js embedded once in the head.

    Example:
        >>> page = render_html(report_data(study))  # doctest: +SKIP
        >>> "pareto-front" in page  # doctest: +SKIP
        True
    """
    import plotly.graph_objects as go
    from plotly.offline import get_plotlyjs

    sections = [
        _section("front", "Pareto front", _front_section(go, data)),
        _section("table", "Pareto trials", _table_html(data)),
        _section("layers", "Per-layer settings of the Pareto trials", _heatmap_section(go, data)),
        _section("sensitivity", "Layer sensitivity", _sensitivity_section(go, data)),
        _section("hypervolume", "Hypervolume", _hypervolume_section(go, data)),
        _section("importance", "Parameter importance", _importance_section(go, data)),
        _section("run", "Run", _run_html(data)),
    ]
    title = f"compresstune report — {data.study_name}"
    return _PAGE.format(
        title=_esc(title),
        css=_CSS,
        plotlyjs=get_plotlyjs(),
        header=_header_html(data),
        nav="".join(f'<a href="#{sid}">{_esc(name)}</a>' for sid, name, _ in sections),
        body="".join(body for _, _, body in sections),
        js=_SORT_JS,
    )


# ------------------------------------------------------------------ formatting


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _fmt_bytes(value: Any) -> str:
    if not _finite(value):
        return "—"
    v = float(value)
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3g} {unit}" if v / scale < 100 else f"{v / scale:.0f} {unit}"
    return f"{v:.0f} B"


def _fmt_acc(value: Any) -> str:
    return f"{float(value):.2%}" if _finite(value) else "—"


def _fmt_ratio(value: Any) -> str:
    return f"×{float(value):.3g}" if _finite(value) else "—"


def _fmt_num(value: Any, spec: str = ".4g") -> str:
    return format(float(value), spec) if _finite(value) else "—"


def _fmt_seconds(value: Any) -> str:
    if not _finite(value):
        return "—"
    s = float(value)
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def _metric_label(name: str) -> str:
    labels = {
        "val_accuracy": "Validation accuracy",
        "size_bytes": "Model size (bytes)",
        "latency_ms": "Latency (ms)",
        "bops": "Bit-operations",
    }
    return labels.get(name, name.replace("_", " "))


def _plan_lines(plan: Any, layers: Sequence[str], limit: int = 14) -> list[str]:
    """``fc1 s0.90 b4 r—`` per layer, in model order, capped at ``limit`` lines."""
    parsed = _parse_plan(plan)
    specs = parsed.get("layers") or {}
    lines = []
    for name in [n for n in layers if n in specs] + [n for n in specs if n not in layers]:
        spec = specs[name] or {}
        rank = spec.get("rank")
        structured = "ch" if spec.get("structured") else ""
        sparsity = _pareto._float_or_nan(spec.get("sparsity"))
        rank_text = "—" if rank is None else rank
        lines.append(f"{name} s{sparsity:.2f}{structured} b{spec.get('bits', '?')} r{rank_text}")
    if len(lines) > limit:
        lines = lines[:limit] + [f"… {len(lines) - limit} more layers"]
    if "temperature" in parsed or "alpha" in parsed:
        lines.append(f"KD T={_fmt_num(parsed.get('temperature'), '.3g')} α={_fmt_num(parsed.get('alpha'), '.3g')}")
    return lines


def _hover(row: pd.Series, data: ReportData) -> str:
    parts = [
        f"<b>Trial #{int(row['number'])}</b>",
        f"size {_fmt_int(row['size_bytes'])} B ({_fmt_ratio(row['ratio'])})",
        f"val {_fmt_acc(row['val_accuracy'])} · test {_fmt_acc(row['test_accuracy'])}",
    ]
    for name in data.metric_names[2:]:
        parts.append(f"{_metric_label(name)}: {_fmt_num(row.get(f'values_{name}'))}")
    if not _pareto._missing(pd.Series([row.get("rejected")])).iloc[0]:
        parts.append(f"rejected: {_esc(row['rejected'])}")
    if pd.notna(row.get("stopped_at_rung")):
        parts.append(f"stopped at rung {row['stopped_at_rung']}")
    if not row.get("feasible", True):
        violated = row.get("violated")
        parts.append("infeasible" + (f": {_esc(violated)}" if isinstance(violated, str) else ""))
    lines = _plan_lines(row.get("plan"), data.layers)
    if lines:
        parts.append("<span style='color:#57606a'>" + "<br>".join(_esc(x) for x in lines) + "</span>")
    return "<br>".join(parts)


def _fmt_time(value: Any) -> str | None:
    if not value:
        return None
    try:
        stamp = pd.Timestamp(value)
    except (TypeError, ValueError):
        return str(value)
    return stamp.strftime("%Y-%m-%d %H:%M:%S") + (f" {stamp.tzname()}" if stamp.tzinfo else "")


def _fmt_int(value: Any) -> str:
    return f"{int(round(float(value))):,}" if _finite(value) else "—"


def _acc_is_fraction(data: ReportData) -> bool:
    acc = pd.to_numeric(data.trials["val_accuracy"], errors="coerce").dropna()
    return bool(len(acc) == 0 or acc.abs().max() <= 1.0)


# -------------------------------------------------------------------- figures

_FONT = "-apple-system, BlinkMacSystemFont, 'Segoe UI', Helvetica, Arial, sans-serif"
_BLUE, _GREY, _RED, _AMBER, _PURPLE, _GREEN = "#1f6feb", "#8c959f", "#cf222e", "#bf8700", "#8250df", "#1a7f37"
_CATEGORY_STYLE = {
    "dominated": ("Dominated", dict(color=_GREY, size=7, opacity=0.45, symbol="circle")),
    "infeasible": ("Infeasible", dict(color=_RED, size=7, opacity=0.45, symbol="x")),
    "rejected": ("Rejected: over size budget", dict(color=_AMBER, size=7, opacity=0.5, symbol="triangle-down")),
    "stopped": ("Stopped early", dict(color=_PURPLE, size=7, opacity=0.5, symbol="circle-open")),
}
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}


def _layout(go, **kw) -> dict[str, Any]:
    base = dict(
        template="plotly_white",
        font=dict(family=_FONT, size=13, color="#1f2328"),
        margin=dict(l=70, r=30, t=60, b=60),
        hoverlabel=dict(bgcolor="white", bordercolor="#d0d7de", align="left",
                        font=dict(family="ui-monospace, SFMono-Regular, Menlo, monospace", size=12, color="#1f2328")),
        legend=dict(bgcolor="rgba(255,255,255,0.85)", bordercolor="#d0d7de", borderwidth=1),
    )
    base.update(kw)
    return base


def _fig_html(fig: Any, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, config=_PLOT_CONFIG, div_id=div_id)


def _plottable(df: pd.DataFrame, *cols: str) -> pd.DataFrame:
    ok = pd.Series(True, index=df.index)
    for col in cols:
        ok &= np.isfinite(pd.to_numeric(df[col], errors="coerce"))
    return df[ok]


def _front_title(data: ReportData) -> str:
    c = data.counts
    bits = [f"{c['front']} Pareto", f"{c['dominated']} dominated"]
    for key, label in (("infeasible", "infeasible"), ("rejected", "rejected"), ("stopped", "stopped early"),
                       ("pruned", "pruned"), ("failed", "failed"), ("running", "running")):  # fmt: skip
        if c[key]:
            bits.append(f"{c[key]} {label}")
    return f"Validation accuracy vs model size — {c['trials']} trials: " + " · ".join(bits)


def _front_section(go, data: ReportData) -> str:
    parts = [_fig_html(_fig_front(go, data), "fig-front")]
    if len(data.metric_names) > 2:
        parts.append(_fig_html(_fig_3d(go, data), "fig-front-3d"))
        parts.append(_fig_html(_fig_projections(go, data), "fig-projections"))
    note = (
        "Bold blue: the feasible Pareto front, fully fine-tuned trials only; faint: dominated, infeasible, "
        "rejected and early-stopped trials. The shaded area is the hypervolume region above the reference "
        "point (baseline accuracy − maximum drop, uncompressed size). Hover a point for its per-layer plan "
        "(<code>s</code> sparsity, <code>b</code> bits, <code>r</code> rank)."
    )
    view = _accuracy_view(data, _plottable(data.trials, "size_bytes", "val_accuracy"))
    hidden = 0 if view is None else int((pd.to_numeric(data.trials["val_accuracy"], errors="coerce") < view[0]).sum())
    if hidden:
        note += f" {hidden} trial(s) with low accuracy lie below the initial view; double-click the plot to see all."
    return f'<p class="note">{note}</p>' + "".join(f'<div class="plot">{p}</div>' for p in parts)


def _fig_front(go, data: ReportData) -> Any:
    fig = go.Figure(layout=_layout(go, title=dict(text=_front_title(data), font=dict(size=15)), height=560))
    trials = _plottable(data.trials, "size_bytes", "val_accuracy")
    _add_hv_region(go, fig, data)
    for cat, (label, marker) in _CATEGORY_STYLE.items():
        sub = trials[trials["category"] == cat]
        if len(sub):
            fig.add_trace(go.Scatter(
                x=sub["size_bytes"], y=sub["val_accuracy"], mode="markers", name=f"{label} ({len(sub)})",
                uid=cat, marker=marker, text=[_hover(r, data) for _, r in sub.iterrows()],
                hovertemplate="%{text}<extra></extra>",
            ))  # fmt: skip
    _add_uniform(go, fig, data)
    _add_reference_and_baseline(go, fig, data, trials)
    _add_front_trace(go, fig, data)
    pct = _acc_is_fraction(data)
    sizes = [*trials["size_bytes"], *_reference_sizes(data)]
    ticks = _size_ticks(min(sizes), max(sizes)) if sizes else {}
    fig.update_xaxes(type="log", title_text="Model size (log scale)", **ticks)
    fig.update_yaxes(title_text="Validation accuracy", tickformat=".1%" if pct else None,
                     range=_accuracy_view(data, trials))  # fmt: skip
    fig.update_layout(legend=dict(traceorder="reversed"))
    return fig


def _reference_sizes(data: ReportData) -> list[float]:
    sizes = [(data.reference_point or {}).get("size_bytes"), (data.baseline or {}).get("reference_bytes")]
    return [float(s) for s in sizes if _finite(s)]


def _size_ticks(lo: float, hi: float) -> dict[str, Any]:
    """Ticks at 1-2-5 steps labelled "20 kB", "1 MB", for the log size axis."""
    if not (_finite(lo) and _finite(hi)) or lo <= 0:
        return {}
    vals = [m * 10.0**e for e in range(int(math.floor(math.log10(lo))) - 1, int(math.ceil(math.log10(hi))) + 1)
            for m in (1, 2, 5)]  # fmt: skip
    vals = [v for v in vals if lo / 2 <= v <= hi * 2]
    return {"tickvals": vals, "ticktext": [_fmt_bytes(v) for v in vals]} if len(vals) >= 2 else {}


def _accuracy_view(data: ReportData, trials: pd.DataFrame) -> list[float] | None:
    """A y-range around the interesting part: the front, the reference and the baseline.

    Rejected plans are scored without fine-tuning and can sit far below the rest;
    they stay in the data (double-click the plot to see everything).
    """
    focus = [*data.front["val_accuracy"], *data.uniform_reference["val_accuracy"]]
    focus += [v.get("val_accuracy") for v in (data.reference_point, data.baseline) if v]
    focus = [float(v) for v in focus if _finite(v)]
    every = [float(v) for v in trials["val_accuracy"] if _finite(v)] + focus
    if not focus or not every:
        return None
    lo, hi = min(focus), max(every)
    span = max(hi - lo, 1e-3)
    lo = max(min(every), lo - 0.6 * span)
    return [lo - 0.06 * span, hi + 0.06 * span]


def _add_front_trace(go, fig: Any, data: ReportData) -> None:
    front = _plottable(data.front, "size_bytes", "val_accuracy")
    three = len(data.metric_names) > 2
    if three:
        step = _plottable(data.front_2d, "size_bytes", "val_accuracy")
        fig.add_trace(go.Scatter(
            x=step["size_bytes"], y=step["val_accuracy"], mode="lines", line=dict(color=_BLUE, width=1.5, dash="dash",
            shape="hv"), name="Accuracy/size front", uid="pareto-front-2d", hoverinfo="skip",
        ))  # fmt: skip
    fig.add_trace(go.Scatter(
        x=front["size_bytes"], y=front["val_accuracy"], mode="markers" if three else "lines+markers",
        name=f"Pareto front ({len(front)})", uid="pareto-front", line=dict(color=_BLUE, width=2.5, shape="hv"),
        marker=dict(color=_BLUE, size=10, line=dict(color="white", width=1.5)),
        text=[_hover(r, data) for _, r in front.iterrows()], hovertemplate="%{text}<extra></extra>",
    ))  # fmt: skip


def _add_hv_region(go, fig: Any, data: ReportData) -> None:
    ref, pts = data.reference_point, data.hypervolume_front
    if ref is None or not len(pts) or not _finite(ref.get("size_bytes")):
        return
    xs, ys = [float(pts["size_bytes"].iloc[0])], [ref["val_accuracy"]]
    for i, (x, y) in enumerate(zip(pts["size_bytes"], pts["val_accuracy"])):
        if i:
            xs.append(float(x))
            ys.append(ys[-1])
        xs.append(float(x))
        ys.append(float(y))
    xs += [ref["size_bytes"], ref["size_bytes"], xs[0]]
    ys += [ys[-1], ref["val_accuracy"], ref["val_accuracy"]]
    fig.add_trace(go.Scatter(
        x=xs, y=ys, fill="toself", mode="lines", line=dict(width=0), fillcolor="rgba(31,111,235,0.08)",
        name=f"Hypervolume region ({_fmt_num(data.hypervolume)})", uid="hv-region", hoverinfo="skip",
    ))  # fmt: skip


def _add_uniform(go, fig: Any, data: ReportData) -> None:
    uni = _plottable(data.uniform_reference, "size_bytes", "val_accuracy")
    if not len(uni):
        return
    text = [
        f"<b>Uniform</b> s{r.sparsity:.2f} b{_fmt_num(r.bits, '.0f')}<br>size {_fmt_int(r.size_bytes)} B "
        f"({_fmt_ratio(r.ratio)})<br>val {_fmt_acc(r.val_accuracy)} · test {_fmt_acc(r.test_accuracy)}"
        for r in uni.itertuples()
    ]
    fig.add_trace(go.Scatter(
        x=uni["size_bytes"], y=uni["val_accuracy"], mode="markers", name=f"Uniform compression ({len(uni)})",
        uid="uniform", marker=dict(color=_GREEN, size=9, symbol="diamond", line=dict(color="white", width=1)),
        text=text, hovertemplate="%{text}<extra></extra>",
    ))  # fmt: skip


def _add_reference_and_baseline(go, fig: Any, data: ReportData, trials: pd.DataFrame) -> None:
    ref, base = data.reference_point, data.baseline
    if ref is not None and _finite(ref.get("size_bytes")):
        sizes = pd.concat([trials["size_bytes"], pd.Series([ref["size_bytes"]])]).astype(float)
        accs = pd.concat([trials["val_accuracy"], pd.Series([ref["val_accuracy"]])]).astype(float)
        if base is not None and _finite(base.get("val_accuracy")):
            accs = pd.concat([accs, pd.Series([base["val_accuracy"]])])
        x_lo, y_hi = sizes.min() / 1.6, accs.max() + 0.02 * max(accs.max() - accs.min(), 1e-3)
        fig.add_trace(go.Scatter(
            x=[x_lo, ref["size_bytes"], ref["size_bytes"]], y=[ref["val_accuracy"]] * 2 + [y_hi], mode="lines",
            line=dict(color="#57606a", width=1, dash="dot"), hoverinfo="skip", showlegend=False, uid="hv-bounds",
        ))  # fmt: skip
        fig.add_trace(go.Scatter(
            x=[ref["size_bytes"]], y=[ref["val_accuracy"]], mode="markers", uid="hv-reference",
            name="Hypervolume reference", marker=dict(symbol="x-thin", size=14, line=dict(color="#24292f", width=2)),
            hovertemplate=(f"<b>Hypervolume reference</b><br>val {_fmt_acc(ref['val_accuracy'])}"
                           " (baseline − max drop)"
                           f"<br>size {_fmt_int(ref['size_bytes'])} B (×1)<extra></extra>"),
        ))  # fmt: skip
    if base is not None and _finite(base.get("val_accuracy")) and _finite(base.get("reference_bytes")):
        fig.add_trace(go.Scatter(
            x=[base["reference_bytes"]], y=[base["val_accuracy"]], mode="markers", uid="baseline",
            name="Baseline (uncompressed)", marker=dict(symbol="star", size=16, color="#24292f"),
            hovertemplate=(f"<b>Baseline</b><br>val {_fmt_acc(base['val_accuracy'])} · test "
                           f"{_fmt_acc(base['test_accuracy'])}<br>fp32 {_fmt_int(base['reference_bytes'])} B"
                           f" · packed {_fmt_int(base['packed_bytes'])} B<extra></extra>"),
        ))  # fmt: skip


def _fig_3d(go, data: ReportData) -> Any:
    third = data.metric_names[2]
    col = f"values_{third}"
    trials = _plottable(data.trials, "size_bytes", "val_accuracy", col)
    front = _plottable(data.front, "size_bytes", "val_accuracy", col)
    others = trials[~trials["pareto"]]
    fig = go.Figure(layout=_layout(go, title=dict(text=f"Three objectives — {len(front)} Pareto trials"),
                                   height=620))  # fmt: skip
    for sub, name, uid, marker in (
        (others, f"Other trials ({len(others)})", "dominated-3d", dict(color=_GREY, size=4, opacity=0.4)),
        (front, f"Pareto front ({len(front)})", "pareto-front-3d", dict(color=_BLUE, size=6)),
    ):
        fig.add_trace(go.Scatter3d(
            x=sub["size_bytes"], y=sub[col], z=sub["val_accuracy"], mode="markers", name=name, uid=uid,
            marker=marker, text=[_hover(r, data) for _, r in sub.iterrows()], hovertemplate="%{text}<extra></extra>",
        ))  # fmt: skip
    ticks = _size_ticks(trials["size_bytes"].min(), trials["size_bytes"].max()) if len(trials) else {}
    fig.update_layout(
        margin=dict(l=10, r=10, t=50, b=10),
        scene=dict(
            xaxis=dict(type="log", title="Size", **ticks), yaxis=dict(title=_metric_label(third)),
            zaxis=dict(title="Val accuracy", tickformat=".1%" if _acc_is_fraction(data) else None),
            aspectmode="cube", camera=dict(eye=dict(x=1.6, y=-1.6, z=0.9)),
        ),
    )  # fmt: skip
    return fig


def _fig_projections(go, data: ReportData) -> Any:
    from plotly.subplots import make_subplots

    third = f"values_{data.metric_names[2]}"
    label = _metric_label(data.metric_names[2])
    pairs = [("size_bytes", "val_accuracy"), ("size_bytes", third), (third, "val_accuracy")]
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.08,
                        subplot_titles=[f"{_axis_label(y, label)} vs {_axis_label(x, label)}" for x, y in pairs])
    trials = _plottable(data.trials, "size_bytes", "val_accuracy", third)
    front, others = trials[trials["pareto"]], trials[~trials["pareto"]]
    for i, (x, y) in enumerate(pairs, start=1):
        for sub, name, marker in ((others, "Other trials", dict(color=_GREY, size=6, opacity=0.4)),
                                  (front, "Pareto front", dict(color=_BLUE, size=8))):  # fmt: skip
            fig.add_trace(go.Scatter(
                x=sub[x], y=sub[y], mode="markers", name=name, uid=f"proj{i}-{'front' if sub is front else 'other'}",
                marker=marker, legendgroup=name, showlegend=i == 1, text=[_hover(r, data) for _, r in sub.iterrows()],
                hovertemplate="%{text}<extra></extra>",
            ), row=1, col=i)  # fmt: skip
        fig.update_xaxes(title_text=_axis_label(x, label), row=1, col=i, **_axis_style(trials, x))
        fig.update_yaxes(title_text=_axis_label(y, label), row=1, col=i, **_axis_style(trials, y))
    fig.update_layout(**_layout(go, title=dict(text="Pairwise projections"), height=420))
    return fig


def _axis_style(trials: pd.DataFrame, col: str) -> dict[str, Any]:
    if col == "size_bytes":
        return {"type": "log", **_size_ticks(trials[col].min(), trials[col].max())} if len(trials) else {"type": "log"}
    if col == "val_accuracy" and (trials[col].abs() <= 1).all():
        return {"tickformat": ".0%"}
    return {}


def _axis_label(col: str, third_label: str) -> str:
    return {"size_bytes": "Size (bytes)", "val_accuracy": "Val accuracy"}.get(col, third_label)


def _hypervolume_section(go, data: ReportData) -> str:
    ref = data.reference_point
    if ref is None:
        return '<p class="note">The study stores no <code>reference_point</code>; hypervolume is not defined.</p>'
    from plotly.subplots import make_subplots

    title = (f"Hypervolume {_fmt_num(data.hypervolume)} — reference point: val accuracy "
             f"{_fmt_acc(ref['val_accuracy'])}, ratio ×{2 ** ref['log2_ratio']:.3g} ({_fmt_bytes(ref['size_bytes'])})")
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=["by trial number", "by wall-clock time"])  # fmt: skip
    by_trial, by_time = data.hypervolume_by_trial, data.hypervolume_by_time
    fig.add_trace(go.Scatter(
        x=by_trial["number"], y=by_trial["hypervolume"], mode="lines", line=dict(shape="hv", color=_BLUE, width=2),
        name="by trial", uid="hv-by-trial", hovertemplate="trial %{x}<br>HV %{y:.4g}<extra></extra>",
    ), row=1, col=1)  # fmt: skip
    scale, unit = _time_unit(by_time["elapsed_s"])
    fig.add_trace(go.Scatter(
        x=by_time["elapsed_s"] / scale, y=by_time["hypervolume"], mode="lines", customdata=by_time["number"],
        line=dict(shape="hv", color=_PURPLE, width=2), name="by time", uid="hv-by-time",
        hovertemplate=f"%{{x:.3g}} {unit} (trial %{{customdata}})<br>HV %{{y:.4g}}<extra></extra>",
    ), row=1, col=2)  # fmt: skip
    fig.update_xaxes(title_text="Trial number", row=1, col=1)
    fig.update_xaxes(title_text=f"Elapsed ({unit})", row=1, col=2)
    fig.update_yaxes(title_text="Hypervolume (acc × log2 ratio)", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(rangemode="tozero", row=1, col=2)
    fig.update_layout(**_layout(go, title=dict(text=title, font=dict(size=15)), height=420, showlegend=False,
                              margin=dict(l=70, r=30, t=100, b=60)))  # fmt: skip
    note = ("Area dominated by feasible, fully fine-tuned trials on validation accuracy × log2(compression ratio), "
            "above the reference point stored in the study when it was created.")
    return f'<p class="note">{note}</p><div class="plot">{_fig_html(fig, "fig-hypervolume")}</div>'


def _time_unit(seconds: pd.Series) -> tuple[float, str]:
    top = pd.to_numeric(seconds, errors="coerce").max()
    if not _finite(top) or top < 180:
        return 1.0, "s"
    return (60.0, "min") if top < 3 * 3600 else (3600.0, "h")


_HEAT = {
    "sparsity": ("Sparsity", "Blues", False, 0.0, 1.0),
    "bits": ("Bit-width", "Blues", True, 1.0, 5.0),  # colour on log2(bits)
    "rank_fraction": ("Rank fraction (1 = no factorisation)", "Blues", True, 0.0, 1.0),
}


def _heatmap_section(go, data: ReportData) -> str:
    if not len(data.front) or not data.layers:
        return '<p class="note">No Pareto trials yet.</p>'
    labels = [
        f"#{int(r.number)} · {_fmt_bytes(r.size_bytes)} · {_fmt_acc(r.val_accuracy)}" for r in data.front.itertuples()
    ]
    figs = [_fig_heatmap(go, data.heatmaps[k], k, labels) for k in KNOBS]
    note = ("Rows: Pareto trials from smallest to largest; columns: layers in model order. "
            "Darker means more compression on every map.")
    return f'<p class="note">{note}</p>' + "".join(
        f'<div class="plot">{_fig_html(f, f"fig-heat-{k}")}</div>' for f, k in zip(figs, KNOBS)
    )


def _fig_heatmap(go, matrix: pd.DataFrame, knob: str, labels: list[str]) -> Any:
    title, scale, reverse, zmin, zmax = _HEAT[knob]
    values = matrix.to_numpy(dtype=float)
    if knob == "bits":
        z = np.log2(np.where(values > 0, values, np.nan))
        text = [[_fmt_num(v, ".0f") for v in row] for row in values]
        colorbar = dict(title="bits", tickvals=[1, 2, 3, 4, 5], ticktext=["2", "4", "8", "16", "32"])
    else:
        z = values
        text = [[_fmt_num(v, ".2f") for v in row] for row in values]
        colorbar = dict(title="", tickformat=".1f")
    fig = go.Figure(go.Heatmap(
        z=z, x=list(matrix.columns), y=labels, text=text, texttemplate="%{text}", colorscale=scale,
        reversescale=reverse, zmin=zmin, zmax=zmax, colorbar=colorbar, xgap=2, ygap=2, uid=f"heatmap-{knob}",
        hovertemplate="%{y}<br>%{x}: %{text}<extra></extra>",
    ))  # fmt: skip
    height = max(260, 130 + 30 * len(labels)) + (40 if len(matrix.columns) > 8 else 0)
    margin = dict(l=200, r=30, t=50, b=60)
    fig.update_layout(**_layout(go, title=dict(text=title), height=min(height, 1400), margin=margin))
    fig.update_yaxes(autorange="reversed", automargin=True)
    fig.update_xaxes(side="bottom", tickangle=-30 if len(matrix.columns) > 8 else 0, automargin=True)
    return fig


def _sensitivity_section(go, data: ReportData) -> str:
    scan = data.sensitivity
    if scan is None:
        return ('<p class="note">No sensitivity scan in this study (<code>sensitivity.enabled: false</code>); '
                '<code>compresstune sensitivity STUDY</code> measures one.</p>')
    values = scan.to_numpy(dtype=float)
    text = [["–" if not np.isfinite(v) else f"{v:+.3f}" for v in row] for row in values]
    top = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
    fig = go.Figure(go.Heatmap(
        z=values, x=list(scan.columns), y=list(scan.index), text=text, texttemplate="%{text}", colorscale="Reds",
        zmin=0.0, zmax=max(top, 1e-6), xgap=2, ygap=2, uid="heatmap-sensitivity", colorbar=dict(title="drop"),
        hovertemplate="%{y} at %{x}: accuracy drop %{text}<extra></extra>",
    ))  # fmt: skip
    height = max(260, 130 + 30 * len(scan.index))
    fig.update_layout(**_layout(go, height=min(height, 1400), margin=dict(l=160, r=30, t=30, b=80)))
    fig.update_yaxes(autorange="reversed", automargin=True)
    fig.update_xaxes(side="bottom", tickangle=-30, automargin=True)
    examples, base = scan.attrs.get("examples"), scan.attrs.get("baseline_accuracy")
    note = (f"Validation accuracy lost by compressing one layer alone, without fine-tuning, on {_esc(examples)} "
            f"validation examples (baseline {_fmt_acc(base)} on them); everything else untouched. The seed trials "
            "spend compression where these drops are small. A dash: the layer cannot take that setting.")
    return f'<p class="note">{note}</p><div class="plot">{_fig_html(fig, "fig-sensitivity")}</div>'


def _importance_section(go, data: ReportData) -> str:
    if not data.importances:
        return f'<p class="note">{_esc(data.importance_note or "No importances.")}</p>'
    from plotly.subplots import make_subplots

    names = list(data.importances)
    fig = make_subplots(rows=1, cols=len(names), horizontal_spacing=0.18,
                        subplot_titles=[_metric_label(n) for n in names])  # fmt: skip
    longest = 1
    for i, name in enumerate(names, start=1):
        top = list(data.importances[name].items())[:12][::-1]
        longest = max([longest, *(len(k) for k, _ in top)])
        fig.add_trace(go.Bar(
            x=[v for _, v in top], y=[k for k, _ in top], orientation="h", marker_color=_BLUE, uid=f"importance-{name}",
            name=name, hovertemplate="%{y}: %{x:.3f}<extra></extra>",
        ), row=1, col=i)  # fmt: skip
        fig.update_xaxes(title_text="fANOVA importance", rangemode="tozero", row=1, col=i)
        fig.update_yaxes(automargin=True, row=1, col=i)
    rows = max(len(v) for v in data.importances.values())
    fig.update_layout(**_layout(go, height=160 + 24 * min(rows, 12), showlegend=False,
                              margin=dict(l=30 + 7 * longest, r=30, t=60, b=60)))  # fmt: skip
    note = "fANOVA over fully fine-tuned COMPLETE trials, one chart per objective (top 12 parameters)."
    return f'<p class="note">{note}</p><div class="plot">{_fig_html(fig, "fig-importance")}</div>'


# --------------------------------------------------------------------- HTML


def _section(sid: str, title: str, body: str) -> tuple[str, str, str]:
    return sid, title, f'<section id="{sid}"><h2>{_esc(title)}</h2>{body}</section>'


def _kpi(label: str, value: str, sub: str = "") -> str:
    return (f'<div class="kpi"><div class="kpi-label">{_esc(label)}</div><div class="kpi-value">{_esc(value)}</div>'
            f'<div class="kpi-sub">{_esc(sub)}</div></div>')  # fmt: skip


def _header_html(data: ReportData) -> str:
    c, ref, base = data.counts, data.reference_point, data.baseline
    front = data.front
    stopped = c["pruned"] + c["stopped"]
    summary = f"{c['complete']} complete · {c['failed']} failed · {stopped} pruned/stopped"
    kpis = [_kpi("Trials", str(c["trials"]), summary)]
    kpis.append(_kpi("Pareto trials", str(c["front"]), f"{c['infeasible']} infeasible · {c['rejected']} rejected"))
    if len(front):
        within = front if ref is None else front[front["val_accuracy"] >= ref["val_accuracy"]]
        if len(within):
            best = within.loc[within["ratio"].astype(float).idxmax()]
            kpis.append(_kpi("Best compression", _fmt_ratio(best["ratio"]),
                             f"#{int(best['number'])} · {_fmt_bytes(best['size_bytes'])} · "
                             f"{_fmt_acc(best['val_accuracy'])}"))  # fmt: skip
        top = front.loc[front["val_accuracy"].astype(float).idxmax()]
        kpis.append(_kpi("Best accuracy", _fmt_acc(top["val_accuracy"]),
                         f"#{int(top['number'])} · {_fmt_bytes(top['size_bytes'])} · {_fmt_ratio(top['ratio'])}"))
    kpis.append(_kpi("Hypervolume", _fmt_num(data.hypervolume),
                     "" if ref is None else f"ref. {_fmt_acc(ref['val_accuracy'])} at ×{2 ** ref['log2_ratio']:.3g}"))
    if base is not None:
        kpis.append(_kpi("Baseline", _fmt_acc(base["val_accuracy"]), f"{_fmt_bytes(base['reference_bytes'])} fp32"))
    meta = " · ".join(_esc(x) for x in (data.started_at and f"started {_fmt_time(data.started_at)}", data.machine,
                                         f"wall time {_fmt_seconds(data.timing['wall_s'])}") if x)  # fmt: skip
    return (f'<header><h1>compresstune report <span class="study">{_esc(data.study_name)}</span></h1>'
            f'<div class="meta">{meta}</div><div class="kpis">{"".join(kpis)}</div></header>')  # fmt: skip


def _table_html(data: ReportData) -> str:
    front = data.front
    if not len(front):
        return '<p class="note">No feasible, fully fine-tuned trial yet.</p>'
    base_acc = (data.baseline or {}).get("val_accuracy", math.nan)
    extra = data.metric_names[2:]
    head = [("Trial", "num"), ("Size (B)", "num"), ("Ratio", "num"), ("Val acc", "num"), ("Test acc", "num"),
            ("Δ val vs baseline", "num"), *[(_metric_label(m), "num") for m in extra], ("KD T", "num"),
            ("KD α", "num"), ("Trial time", "num"), ("Export", "str")]  # fmt: skip
    rows = []
    for r in front.itertuples():
        n = int(r.number)
        kd = data.distillation.get(n, {})
        delta = float(r.val_accuracy) - base_acc if _finite(base_acc) else math.nan
        seed = ' <span class="tag">seed</span>' if r.seed_trial else ""
        cells = [
            (n, f"#{n}{seed}"), (r.size_bytes, _fmt_int(r.size_bytes)), (r.ratio, _fmt_ratio(r.ratio)),
            (r.val_accuracy, _fmt_acc(r.val_accuracy)), (r.test_accuracy, _fmt_acc(r.test_accuracy)),
            (delta, f"{delta * 100:+.2f} pp" if _finite(delta) else "—"),
            *[(getattr(r, f"values_{m}"), _fmt_num(getattr(r, f"values_{m}"))) for m in extra],
            (kd.get("temperature"), _fmt_num(kd.get("temperature"), ".3g")),
            (kd.get("alpha"), _fmt_num(kd.get("alpha"), ".3g")), (r.total_s, _fmt_seconds(r.total_s)),
        ]  # fmt: skip
        tds = "".join(f'<td data-sort="{_sort_key(v)}">{t}</td>' for v, t in cells)
        cmd = _esc(data.export_commands.get(n, ""))
        rows.append(f'<tr>{tds}<td data-sort="{n}"><code class="cmd">{cmd}</code></td></tr>')
    ths = "".join(f'<th data-type="{t}" title="Sort by {_esc(h)}">{_esc(h)}</th>' for h, t in head)
    return (f'<p class="note">Click a column header to sort. The export command writes the trial\'s compressed '
            f'model; <code>trials.csv</code> and <code>pareto.csv</code> sit next to this file.</p>'
            f'<div class="table-wrap"><table class="sortable" id="pareto-table"><thead><tr>{ths}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')  # fmt: skip


def _sort_key(value: Any) -> str:
    return repr(float(value)) if _finite(value) else ""


def _dl(items: Sequence[tuple[str, Any]]) -> str:
    return "<dl>" + "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in items if v not in (None, "")) + "</dl>"


def _run_html(data: ReportData) -> str:
    t, s, c = data.timing, data.settings, data.counts
    study = _dl([
        ("Study", data.study_name), ("Directory", s.get("study_dir")),
        ("Objectives", ", ".join(f"{m} {'↑' if d == 'maximize' else '↓'}"
                                 for m, d in zip(data.metric_names, data.directions))),
        ("Max accuracy drop", _fmt_num(s.get("max_accuracy_drop"))), ("Fingerprint", s.get("fingerprint")),
        ("Started", _fmt_time(data.started_at)), ("Machine", data.machine),
    ])  # fmt: skip
    time = _dl([
        ("Wall time", _fmt_seconds(t["wall_s"])), ("Trial time, sum", _fmt_seconds(t["trials_total_s"])),
        ("Per trial, mean", _fmt_seconds(t["trial_mean_s"])), ("Per trial, median", _fmt_seconds(t["trial_median_s"])),
        ("Apply, mean", _fmt_seconds(t["apply_mean_s"])), ("Fine-tune, mean", _fmt_seconds(t["finetune_mean_s"])),
        ("Evaluate, mean", _fmt_seconds(t["eval_mean_s"])),
    ])  # fmt: skip
    counts = _dl([(k.capitalize(), v) for k, v in c.items()])
    versions = _dl(sorted(data.versions.items()))
    config = _esc(json.dumps(s.get("config") or {}, indent=2, sort_keys=True, default=str))
    cards = "".join(f'<div class="card"><h3>{title}</h3>{body}</div>'
                    for title, body in (("Study", study), ("Time", time), ("Trials", counts), ("Versions", versions)))
    return (f'<div class="cards">{cards}</div>{_failures_html(data)}'
            f'<details><summary>Study configuration</summary><pre>{config}</pre></details>')  # fmt: skip


def _failures_html(data: ReportData) -> str:
    failed = data.trials[data.trials["state"] == "FAIL"]
    if not len(failed):
        return ""
    rows = "".join(
        f"<tr><td>#{int(r.number)}</td><td>{_esc(r.fail_reason if isinstance(r.fail_reason, str) else '—')}</td></tr>"
        for r in failed.itertuples()
    )
    return (f'<details><summary>Failed trials ({len(failed)})</summary><div class="table-wrap"><table class="plain">'
            f'<thead><tr><th>Trial</th><th>Reason</th></tr></thead><tbody>{rows}</tbody>'
            '</table></div></details>')  # fmt: skip


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style>
<script type="text/javascript">{plotlyjs}</script>
</head><body>
{header}
<nav>{nav}</nav>
<main>{body}</main>
<footer>Generated by compresstune. Self-contained: opens offline.</footer>
<script>{js}</script>
</body></html>
"""

_CSS = """
:root { --fg:#1f2328; --muted:#57606a; --line:#d0d7de; --bg:#f6f8fa; --blue:#1f6feb; }
* { box-sizing: border-box; }
body { margin:0; font-family:-apple-system,BlinkMacSystemFont,'Segoe UI',Helvetica,Arial,sans-serif;
       color:var(--fg); background:var(--bg); font-size:14px; line-height:1.5; }
header { background:#fff; border-bottom:1px solid var(--line); padding:24px 32px 20px; }
h1 { margin:0; font-size:22px; font-weight:600; }
h1 .study { color:var(--muted); font-weight:400; margin-left:8px; }
.meta { color:var(--muted); margin-top:4px; }
.kpis { display:flex; flex-wrap:wrap; gap:12px; margin-top:16px; }
.kpi { background:var(--bg); border:1px solid var(--line); border-radius:8px; padding:10px 16px; min-width:150px; }
.kpi-label { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.kpi-value { font-size:22px; font-weight:600; }
.kpi-sub { color:var(--muted); font-size:12px; }
nav { position:sticky; top:0; z-index:10; background:#fff; border-bottom:1px solid var(--line); padding:8px 32px; }
nav a { color:var(--blue); text-decoration:none; margin-right:20px; font-weight:500; }
main { max-width:1280px; margin:0 auto; padding:8px 32px 32px; }
section { background:#fff; border:1px solid var(--line); border-radius:8px; padding:16px 20px; margin-top:20px; }
h2 { font-size:17px; margin:0 0 6px; font-weight:600; }
h3 { font-size:13px; margin:0 0 8px; color:var(--muted); text-transform:uppercase; letter-spacing:.04em; }
.note { color:var(--muted); margin:0 0 10px; }
.plot { margin-top:8px; }
code { font-family:ui-monospace,SFMono-Regular,Menlo,monospace; font-size:12px; background:var(--bg);
       padding:1px 4px; border-radius:4px; }
code.cmd { user-select:all; white-space:nowrap; }
.table-wrap { overflow-x:auto; }
table { border-collapse:collapse; width:100%; font-variant-numeric:tabular-nums; }
th, td { padding:6px 10px; border-bottom:1px solid var(--line); text-align:right; white-space:nowrap; }
th:last-child, td:last-child { text-align:left; }
th { background:var(--bg); cursor:pointer; user-select:none; position:relative; font-weight:600; }
th:hover { background:#eaeef2; }
th[aria-sort=ascending]::after { content:" ▲"; font-size:10px; color:var(--blue); }
th[aria-sort=descending]::after { content:" ▼"; font-size:10px; color:var(--blue); }
tbody tr:hover { background:#f6f8fa; }
table.plain th { cursor:default; } table.plain td, table.plain th { text-align:left; white-space:normal; }
.tag { font-size:11px; background:#ddf4ff; color:#0969da; border-radius:10px; padding:0 6px; }
.cards { display:grid; grid-template-columns:2fr 1.2fr 1fr 1.2fr; gap:16px; }
@media (max-width: 1000px) { .cards { grid-template-columns:1fr 1fr; } }
.card { border:1px solid var(--line); border-radius:8px; padding:12px 16px; }

dl { display:grid; grid-template-columns:max-content 1fr; gap:4px 16px; margin:0; }
dt { color:var(--muted); } dd { margin:0; overflow-wrap:anywhere; }
details { margin-top:16px; } summary { cursor:pointer; font-weight:500; }
pre { background:var(--bg); border:1px solid var(--line); border-radius:6px; padding:12px; overflow:auto;
      font-size:12px; max-height:480px; }
footer { text-align:center; color:var(--muted); font-size:12px; padding:16px; }
"""

# Sorts a table's rows on header click: numbers by data-sort, text otherwise; blanks last.
_SORT_JS = """
(function () {
  document.querySelectorAll('table.sortable').forEach(function (table) {
    var heads = table.querySelectorAll('th');
    heads.forEach(function (th, col) {
      th.addEventListener('click', function () {
        var asc = th.getAttribute('aria-sort') !== 'ascending';
        heads.forEach(function (h) { h.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
        var numeric = th.dataset.type === 'num';
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        var key = function (row) {
          var cell = row.cells[col];
          var raw = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent;
          return numeric ? (raw === '' ? NaN : parseFloat(raw)) : cell.textContent.trim().toLowerCase();
        };
        rows.sort(function (a, b) {
          var x = key(a), y = key(b);
          if (numeric) {
            if (isNaN(x) || isNaN(y)) { return isNaN(x) - isNaN(y); }
            return asc ? x - y : y - x;
          }
          return asc ? x.localeCompare(y) : y.localeCompare(x);
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
  });
})();
"""
