"""Formatting of numbers, sizes and plans for the report's HTML and hover text."""

from __future__ import annotations

import html
import math
from typing import Any, Sequence

import pandas as pd

from compresstune.search import pareto as _pareto
from compresstune.search.report._data import ReportData, _parse_plan


KNOBS = ("sparsity", "bits", "rank_fraction")
# fANOVA's defaults (64 trees, depth 64) take tens of seconds on a few hundred trials with
# dozens of per-layer params; 32 trees of depth 8 keep the top ranks in a few seconds.
_FANOVA_TREES, _FANOVA_DEPTH = 32, 8
_PARAM_PREFIX = "params_"





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
        "macs": "MACs",
        "onnx_bytes": "ONNX file size (bytes)",
        "onnx_latency_ms": "ONNX Runtime latency (ms)",
    }
    if name not in labels and name.startswith("val_") and len(name) > 4:
        return f"Validation {name[4:].replace('_', ' ')}"
    return labels.get(name, name.replace("_", " "))


# The study's metric in words. An accuracy study keeps the report's original wording;
# any other metric is named, with its direction where that matters.


def _is_accuracy(data: ReportData) -> bool:
    return getattr(data, "metric", "accuracy") == "accuracy"


def _minimize(data: ReportData) -> bool:
    return getattr(data, "direction", "maximize") == "minimize"


def _metric_words(data: ReportData) -> str:
    """``"accuracy"``, ``"perplexity"``, ``"token accuracy"``."""
    return str(getattr(data, "metric", "accuracy")).replace("_", " ")


def _better(data: ReportData) -> str:
    return "lower is better" if _minimize(data) else "higher is better"


def _val_title(data: ReportData) -> str:
    """The metric axis: ``Validation accuracy`` or ``Validation perplexity (lower is better)``."""
    if _is_accuracy(data):
        return "Validation accuracy"
    return f"Validation {_metric_words(data)} ({_better(data)})"


def _val_short(data: ReportData) -> str:
    """``Val accuracy`` or ``Val perplexity``."""
    return f"Val {_metric_words(data)}"


def _fmt_val(data: ReportData, value: Any) -> str:
    """A value of the study's metric: a percentage for accuracy, 4 significant digits otherwise."""
    return _fmt_acc(value) if _is_accuracy(data) else _fmt_num(value)


def _channel_text(spec: dict, sparsity: float) -> str:
    """`` c0.50`` for a layer losing half its channels (schema 2 fraction, or schema 1's flag)."""
    structured = spec.get("structured")
    if structured is True:
        return f" c{sparsity:.2f}"
    fraction = _pareto._float_or_nan(structured) if structured not in (None, False) else 0.0
    return f" c{fraction:.2f}" if fraction > 0 else ""


def _plan_lines(plan: Any, layers: Sequence[str], limit: int = 14) -> list[str]:
    """``fc1 s0.90 b4 r—`` per layer, in model order, capped at ``limit`` lines."""
    parsed = _parse_plan(plan)
    specs = parsed.get("layers") or {}
    lines = []
    for name in [n for n in layers if n in specs] + [n for n in specs if n not in layers]:
        spec = specs[name] or {}
        rank = spec.get("rank")
        sparsity = _pareto._float_or_nan(spec.get("sparsity"))
        channels = _channel_text(spec, sparsity)
        if spec.get("structured") is True:  # schema 1: `sparsity` was the channel fraction
            sparsity = 0.0
        rank_text = "—" if rank is None else rank
        lines.append(f"{name} s{sparsity:.2f}{channels} b{spec.get('bits', '?')} r{rank_text}")
    if len(lines) > limit:
        lines = lines[:limit] + [f"… {len(lines) - limit} more layers"]
    if "temperature" in parsed or "alpha" in parsed:
        lines.append(f"KD T={_fmt_num(parsed.get('temperature'), '.3g')} α={_fmt_num(parsed.get('alpha'), '.3g')}")
    return lines


def _hover(row: pd.Series, data: ReportData) -> str:
    parts = [
        f"<b>Trial #{int(row['number'])}</b>",
        f"size {_fmt_int(row['size_bytes'])} B ({_fmt_ratio(row['ratio'])})",
        f"val {_fmt_val(data, row['val_accuracy'])} · test {_fmt_val(data, row['test_accuracy'])}"
        + ("" if _is_accuracy(data) else f" ({_esc(_metric_words(data))})"),
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
    """Whether the metric axis reads as a percentage: accuracy with every value in [0, 1]."""
    if not _is_accuracy(data):
        return False
    acc = pd.to_numeric(data.trials["val_accuracy"], errors="coerce").dropna()
    return bool(len(acc) == 0 or acc.abs().max() <= 1.0)


# -------------------------------------------------------------------- figures
