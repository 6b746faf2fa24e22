"""The report's figures (plotly) and HTML sections."""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from compresstune.search.report._data import ReportData
from compresstune.search.report._format import (_acc_is_fraction, _better, _esc, _finite, _fmt_acc, _fmt_bytes,
                                                _fmt_int, _fmt_num, _fmt_ratio, _fmt_seconds, _fmt_time, _fmt_val,
                                                _hover, _is_accuracy, _metric_label, _metric_words, _minimize,
                                                _val_short, _val_title)


KNOBS = ("sparsity", "bits", "rank_fraction")
# fANOVA's defaults (64 trees, depth 64) take tens of seconds on a few hundred trials with
# dozens of per-layer params; 32 trees of depth 8 keep the top ranks in a few seconds.
_FANOVA_TREES, _FANOVA_DEPTH = 32, 8
_PARAM_PREFIX = "params_"


_FONT = "-apple-system, BlinkMacSystemFont, 'Segoe UI', Helvetica, Arial, sans-serif"
_BLUE, _GREY, _RED, _AMBER, _PURPLE = "#1f6feb", "#8c959f", "#cf222e", "#bf8700", "#8250df"
_CATEGORY_STYLE = {
    "dominated": ("Dominated", dict(color=_GREY, size=7, opacity=0.45, symbol="circle")),
    "infeasible": ("Infeasible", dict(color=_RED, size=7, opacity=0.45, symbol="x")),
    "rejected": ("Rejected: over a budget (before training)", dict(color=_AMBER, size=7, opacity=0.5, symbol="triangle-down")),
    "stopped": ("Stopped early", dict(color=_PURPLE, size=7, opacity=0.5, symbol="circle-open")),
    "replaced": ("Short fine-tune, replaced by its promotion", dict(color=_GREY, size=7, opacity=0.4,
                                                                   symbol="diamond-open")),
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
                       ("replaced", "replaced by their promotion"), ("pruned", "pruned"), ("failed", "failed"),
                       ("running", "running")):  # fmt: skip
        if c[key]:
            bits.append(f"{c[key]} {label}")
    return f"Validation {_metric_words(data)} vs model size — {c['trials']} trials: " + " · ".join(bits)


def _front_section(go, data: ReportData) -> str:
    parts = [_fig_html(_fig_front(go, data), "fig-front")]
    if len(data.metric_names) > 2:
        parts.append(_fig_html(_fig_3d(go, data), "fig-front-3d"))
        parts.append(_fig_html(_fig_projections(go, data), "fig-projections"))
    words, low = _esc(_metric_words(data)), _minimize(data)
    note = (
        "Bold blue: the feasible Pareto front, fully fine-tuned trials only; faint: dominated, infeasible, "
        f"rejected and early-stopped trials. The shaded area is the hypervolume region {'below' if low else 'above'} "
        f"the reference point (baseline {words} {'+' if low else '−'} maximum drop, uncompressed size). "
        "Hover a point for its per-layer plan (<code>s</code> sparsity, <code>b</code> bits, <code>r</code> rank)."
    )
    view = _accuracy_view(data, _plottable(data.trials, "size_bytes", "val_accuracy"))
    values = pd.to_numeric(data.trials["val_accuracy"], errors="coerce")
    hidden = 0 if view is None else int((values > view[1]).sum() if low else (values < view[0]).sum())
    if hidden:
        note += (f" {hidden} trial(s) with {'high' if low else 'low'} {words} lie {'above' if low else 'below'} "
                 "the initial view; double-click the plot to see all.")
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
    _add_reference_and_baseline(go, fig, data, trials)
    _add_front_trace(go, fig, data)
    pct = _acc_is_fraction(data)
    sizes = [*trials["size_bytes"], *_reference_sizes(data)]
    ticks = _size_ticks(min(sizes), max(sizes)) if sizes else {}
    fig.update_xaxes(type="log", title_text="Model size (log scale)", **ticks)
    fig.update_yaxes(title_text=_val_title(data), tickformat=".1%" if pct else None,
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
    sign = -1.0 if _minimize(data) else 1.0  # the view is worked out with higher = better
    focus = list(data.front["val_accuracy"])
    focus += [v.get("val_accuracy") for v in (data.reference_point, data.baseline) if v]
    focus = [sign * float(v) for v in focus if _finite(v)]
    every = [sign * float(v) for v in trials["val_accuracy"] if _finite(v)] + focus
    if not focus or not every:
        return None
    lo, hi = min(focus), max(every)
    span = max(hi - lo, 1e-3)
    lo = max(min(every), lo - 0.6 * span)
    view = [lo - 0.06 * span, hi + 0.06 * span]
    return view if sign > 0 else [-view[1], -view[0]]


def _add_front_trace(go, fig: Any, data: ReportData) -> None:
    front = _plottable(data.front, "size_bytes", "val_accuracy")
    three = len(data.metric_names) > 2
    if three:
        step = _plottable(data.front_2d, "size_bytes", "val_accuracy")
        fig.add_trace(go.Scatter(
            x=step["size_bytes"], y=step["val_accuracy"], mode="lines", line=dict(color=_BLUE, width=1.5, dash="dash",
            shape="hv"), name=f"{_metric_words(data).capitalize()}/size front", uid="pareto-front-2d", hoverinfo="skip",
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


def _add_reference_and_baseline(go, fig: Any, data: ReportData, trials: pd.DataFrame) -> None:
    ref, base = data.reference_point, data.baseline
    if ref is not None and _finite(ref.get("size_bytes")):
        sizes = pd.concat([trials["size_bytes"], pd.Series([ref["size_bytes"]])]).astype(float)
        accs = pd.concat([trials["val_accuracy"], pd.Series([ref["val_accuracy"]])]).astype(float)
        if base is not None and _finite(base.get("val_accuracy")):
            accs = pd.concat([accs, pd.Series([base["val_accuracy"]])])
        pad = 0.02 * max(accs.max() - accs.min(), 1e-3)
        # The bound runs from the reference towards better values: up, or down for a minimised metric.
        x_lo, y_end = sizes.min() / 1.6, accs.min() - pad if _minimize(data) else accs.max() + pad
        fig.add_trace(go.Scatter(
            x=[x_lo, ref["size_bytes"], ref["size_bytes"]], y=[ref["val_accuracy"]] * 2 + [y_end], mode="lines",
            line=dict(color="#57606a", width=1, dash="dot"), hoverinfo="skip", showlegend=False, uid="hv-bounds",
        ))  # fmt: skip
        fig.add_trace(go.Scatter(
            x=[ref["size_bytes"]], y=[ref["val_accuracy"]], mode="markers", uid="hv-reference",
            name="Hypervolume reference", marker=dict(symbol="x-thin", size=14, line=dict(color="#24292f", width=2)),
            hovertemplate=(f"<b>Hypervolume reference</b><br>val {_fmt_val(data, ref['val_accuracy'])}"
                           f" (baseline {'+' if _minimize(data) else '−'} max drop)"
                           f"<br>size {_fmt_int(ref['size_bytes'])} B (×1)<extra></extra>"),
        ))  # fmt: skip
    if base is not None and _finite(base.get("val_accuracy")) and _finite(base.get("reference_bytes")):
        fig.add_trace(go.Scatter(
            x=[base["reference_bytes"]], y=[base["val_accuracy"]], mode="markers", uid="baseline",
            name="Baseline (uncompressed)", marker=dict(symbol="star", size=16, color="#24292f"),
            hovertemplate=(f"<b>Baseline</b><br>val {_fmt_val(data, base['val_accuracy'])} · test "
                           f"{_fmt_val(data, base['test_accuracy'])}<br>fp32 {_fmt_int(base['reference_bytes'])} B"
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
            zaxis=dict(title=_val_short(data), tickformat=".1%" if _acc_is_fraction(data) else None),
            aspectmode="cube", camera=dict(eye=dict(x=1.6, y=-1.6, z=0.9)),
        ),
    )  # fmt: skip
    return fig


def _fig_projections(go, data: ReportData) -> Any:
    from plotly.subplots import make_subplots

    third = f"values_{data.metric_names[2]}"
    label = _metric_label(data.metric_names[2])
    pairs = [("size_bytes", "val_accuracy"), ("size_bytes", third), (third, "val_accuracy")]
    val, pct = _val_short(data), _is_accuracy(data)
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.08,
                        subplot_titles=[f"{_axis_label(y, label, val)} vs {_axis_label(x, label, val)}"
                                        for x, y in pairs])
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
        fig.update_xaxes(title_text=_axis_label(x, label, val), row=1, col=i, **_axis_style(trials, x, pct))
        fig.update_yaxes(title_text=_axis_label(y, label, val), row=1, col=i, **_axis_style(trials, y, pct))
    fig.update_layout(**_layout(go, title=dict(text="Pairwise projections"), height=420))
    return fig


def _axis_style(trials: pd.DataFrame, col: str, percent: bool = True) -> dict[str, Any]:
    """``percent``: the metric is accuracy, shown as a percentage when every value is in [0, 1]."""
    if col == "size_bytes":
        return {"type": "log", **_size_ticks(trials[col].min(), trials[col].max())} if len(trials) else {"type": "log"}
    if col == "val_accuracy" and percent and (trials[col].abs() <= 1).all():
        return {"tickformat": ".0%"}
    return {}


def _axis_label(col: str, third_label: str, metric_label: str = "Val accuracy") -> str:
    return {"size_bytes": "Size (bytes)", "val_accuracy": metric_label}.get(col, third_label)


def _hypervolume_section(go, data: ReportData) -> str:
    ref = data.reference_point
    if ref is None:
        return '<p class="note">The study stores no <code>reference_point</code>; hypervolume is not defined.</p>'
    from plotly.subplots import make_subplots

    title = (f"Hypervolume {_fmt_num(data.hypervolume)} — reference point: val {_esc(_metric_words(data))} "
             f"{_fmt_val(data, ref['val_accuracy'])}, ratio ×{2 ** ref['log2_ratio']:.3g} "
             f"({_fmt_bytes(ref['size_bytes'])})")
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
    unit = "acc" if _is_accuracy(data) else _esc(_metric_words(data))
    fig.update_yaxes(title_text=f"Hypervolume ({unit} × log2 ratio)", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(rangemode="tozero", row=1, col=2)
    fig.update_layout(**_layout(go, title=dict(text=title, font=dict(size=15)), height=420, showlegend=False,
                              margin=dict(l=70, r=30, t=100, b=60)))  # fmt: skip
    if _is_accuracy(data):
        axis = "validation accuracy"
    else:
        axis = (f"validation {_esc(_metric_words(data))} ({_better(data)}"
                + ("; measured downwards from the reference" if _minimize(data) else "") + ")")
    note = (f"Area dominated by feasible, fully fine-tuned trials on {axis} × log2(compression ratio), "
            f"{'beyond' if _minimize(data) else 'above'} the reference point stored in the study when it was created.")
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
    "channels": ("Channels kept per channel group (structured pruning)", "Blues", True, 0.0, 1.0),
}


def _heatmap_section(go, data: ReportData) -> str:
    if not len(data.front) or not data.layers:
        return '<p class="note">No Pareto trials yet.</p>'
    labels = [
        f"#{int(r.number)} · {_fmt_bytes(r.size_bytes)} · {_fmt_val(data, r.val_accuracy)}"
        for r in data.front.itertuples()
    ]
    figs = [_fig_heatmap(go, data.heatmaps[k], k, labels) for k in KNOBS]
    keys = list(KNOBS)
    if data.channels is not None:
        figs.append(_fig_heatmap(go, data.channels, "channels", labels))
        keys.append("channels")
    note = ("Rows: Pareto trials from smallest to largest; columns: layers in model order (channel groups, named "
            "by their first layer, on the channels map). Darker means more compression on every map.")
    return f'<p class="note">{note}</p>' + "".join(
        f'<div class="plot">{_fig_html(f, f"fig-heat-{k}")}</div>' for f, k in zip(figs, keys)
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
    metric = str(scan.attrs.get("metric") or getattr(data, "metric", "accuracy"))
    relative = scan.attrs.get("drop_unit") == "relative"
    words = _esc(metric.replace("_", " "))
    values = scan.to_numpy(dtype=float)
    text = [["–" if not np.isfinite(v) else f"{v:+.3f}" for v in row] for row in values]
    top = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
    fig = go.Figure(go.Heatmap(
        z=values, x=list(scan.columns), y=list(scan.index), text=text, texttemplate="%{text}", colorscale="Reds",
        zmin=0.0, zmax=max(top, 1e-6), xgap=2, ygap=2, uid="heatmap-sensitivity",
        colorbar=dict(title="relative drop" if relative else "drop"),
        hovertemplate=f"%{{y}} at %{{x}}: {words} drop{' (relative)' if relative else ''} %{{text}}<extra></extra>",
    ))  # fmt: skip
    height = max(260, 130 + 30 * len(scan.index))
    fig.update_layout(**_layout(go, height=min(height, 1400), margin=dict(l=160, r=30, t=30, b=80)))
    fig.update_yaxes(autorange="reversed", automargin=True)
    fig.update_xaxes(side="bottom", tickangle=-30, automargin=True)
    examples, base = scan.attrs.get("examples"), scan.attrs.get("baseline_accuracy")
    if metric == "accuracy" and not relative:
        lost, base_text = "Validation accuracy lost", _fmt_acc(base)
    else:
        low = metric == getattr(data, "metric", "accuracy") and _minimize(data)
        how = f" ({_better(data)}, so a drop is a rise)" if low else ""
        unit = ", as a fraction of the baseline," if relative else ""
        lost, base_text = f"How much worse validation {words} gets{how}{unit}", _fmt_num(base)
    note = (f"{lost} by compressing one layer alone, without fine-tuning, on {_esc(examples)} "
            f"validation examples (baseline {base_text} on them); everything else untouched. The seed trials "
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
    summary = f"{c['complete']} complete · {c['failed']} failed · {stopped} stopped early"
    kpis = [_kpi("Trials", str(c["trials"]), summary)]
    kpis.append(_kpi("Pareto trials", str(c["front"]), f"{c['infeasible']} infeasible · {c['rejected']} rejected"))
    low = _minimize(data)
    if len(front):
        acc = front["val_accuracy"].astype(float)
        within = front if ref is None else front[acc <= ref["val_accuracy"] if low else acc >= ref["val_accuracy"]]
        if len(within):
            best = within.loc[within["ratio"].astype(float).idxmax()]
            kpis.append(_kpi("Best compression", _fmt_ratio(best["ratio"]),
                             f"#{int(best['number'])} · {_fmt_bytes(best['size_bytes'])} · "
                             f"{_fmt_val(data, best['val_accuracy'])}"))  # fmt: skip
        if acc.notna().any():
            top = front.loc[acc.idxmin() if low else acc.idxmax()]
            label = "Best accuracy" if _is_accuracy(data) else f"Best {_metric_words(data)} ({_better(data)})"
            kpis.append(_kpi(label, _fmt_val(data, top["val_accuracy"]),
                             f"#{int(top['number'])} · {_fmt_bytes(top['size_bytes'])} · {_fmt_ratio(top['ratio'])}"))
    kpis.append(_kpi("Hypervolume", _fmt_num(data.hypervolume),
                     "" if ref is None else
                     f"ref. {_fmt_val(data, ref['val_accuracy'])} at ×{2 ** ref['log2_ratio']:.3g}"))
    if base is not None:
        test = base.get("test_accuracy")
        kpis.append(_kpi("Baseline", _fmt_val(data, base["val_accuracy"]),
                         (f"test {_fmt_val(data, test)} · " if test is not None else "")
                         + f"{_fmt_bytes(base['reference_bytes'])} fp32"))
    meta = " · ".join(_esc(x) for x in (data.started_at and f"started {_fmt_time(data.started_at)}", data.machine,
                                         f"running time {_fmt_seconds(data.timing['wall_s'])}") if x)  # fmt: skip
    return (f'<header><h1>compresstune report <span class="study">{_esc(data.study_name)}</span></h1>'
            f'<div class="meta">{meta}</div><div class="kpis">{"".join(kpis)}</div></header>')  # fmt: skip


def _table_html(data: ReportData) -> str:
    front = data.front
    if not len(front):
        return '<p class="note">No feasible, fully fine-tuned trial yet.</p>'
    base_acc = (data.baseline or {}).get("val_accuracy", math.nan)
    base_test = (data.baseline or {}).get("test_accuracy", math.nan)
    base_test = math.nan if base_test is None else base_test
    extra = data.metric_names[2:]
    if _is_accuracy(data):
        val_h, test_h, delta_h, dtest_h = "Val acc", "Test acc", "Δ val vs baseline", "Δ test vs baseline"
    else:
        words = _metric_words(data)
        val_h, test_h = f"Val {words}", f"Test {words}"
        delta_h, dtest_h = f"Δ val vs baseline ({_better(data)})", f"Δ test vs baseline ({_better(data)})"
    head = [("Trial", "num"), ("Size (B)", "num"), ("Ratio", "num"), (val_h, "num"), (test_h, "num"),
            (delta_h, "num"), (dtest_h, "num"), *[(_metric_label(m), "num") for m in extra], ("KD T", "num"),
            ("KD α", "num"), ("Trial time", "num"), ("Export", "str")]  # fmt: skip
    labels = {"macs": "MACs", "onnx_bytes": "ONNX (B)", "onnx_latency_ms": "ONNX Runtime ms"}
    onnx = [c for c in labels if c in front.columns and front[c].notna().any() and c not in extra]
    head[3:3] = [(labels[c], "num") for c in onnx]
    rows = []
    for r in front.itertuples():
        n = int(r.number)
        kd = data.distillation.get(n, {})
        delta = float(r.val_accuracy) - base_acc if _finite(base_acc) else math.nan
        test = float(r.test_accuracy) if r.test_accuracy is not None else math.nan
        dtest = test - base_test if _finite(base_test) and _finite(test) else math.nan
        seed = ' <span class="tag">seed</span>' if r.seed_trial else ""
        if _finite(r.promoted_from):
            seed += f' <span class="tag">promoted from #{int(r.promoted_from)}</span>'
        if _finite(getattr(r, "refined_from", None)):
            seed += f' <span class="tag">refined from #{int(r.refined_from)}</span>'

        cells = [
            (n, f"#{n}{seed}"), (r.size_bytes, _fmt_int(r.size_bytes)), (r.ratio, _fmt_ratio(r.ratio)),
            *[(getattr(r, c), _fmt_int(getattr(r, c)) if c in ("macs", "onnx_bytes") else _fmt_num(getattr(r, c)))
              for c in onnx],
            (r.val_accuracy, _fmt_val(data, r.val_accuracy)), (r.test_accuracy, _fmt_val(data, r.test_accuracy)),
            (delta, _fmt_delta(data, delta)), (dtest, _fmt_delta(data, dtest)),
            *[(getattr(r, f"values_{m}"), _fmt_num(getattr(r, f"values_{m}"))) for m in extra],
            (kd.get("temperature"), _fmt_num(kd.get("temperature"), ".3g")),
            (kd.get("alpha"), _fmt_num(kd.get("alpha"), ".3g")), (r.total_s, _fmt_seconds(r.total_s)),
        ]  # fmt: skip
        tds = "".join(f'<td data-sort="{_sort_key(v)}">{t}</td>' for v, t in cells)
        cmds = [c for c in (data.export_commands.get(n, ""), data.onnx_commands.get(n, "")) if c]
        code = "<br>".join(f'<code class="cmd">{_esc(c)}</code>' for c in cmds)
        rows.append(f'<tr>{tds}<td class="cmd" data-sort="{n}">{code}</td></tr>')
    ths = "".join(f'<th data-type="{t}" title="Sort by {_esc(h)}">{_esc(h)}</th>' for h, t in head)
    return (f'<p class="note">Click a column header to sort. The export commands write the trial\'s compressed '
            f'model (the .ctz artifact, or one ONNX file with its weights at their codes); <code>trials.csv</code> and <code>pareto.csv</code> sit next to this file.</p>'
            f'<div class="table-wrap"><table class="sortable" id="pareto-table"><thead><tr>{ths}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')  # fmt: skip


def _fmt_delta(data: ReportData, delta: float) -> str:
    """Value minus baseline: percentage points for accuracy, the metric's units otherwise."""
    if not _finite(delta):
        return "—"
    return f"{delta * 100:+.2f} pp" if _is_accuracy(data) else f"{delta:+.4g}"


def _sort_key(value: Any) -> str:
    return repr(float(value)) if _finite(value) else ""


def _dl(items: Sequence[tuple[str, Any]]) -> str:
    return "<dl>" + "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in items if v not in (None, "")) + "</dl>"


def _run_html(data: ReportData) -> str:
    t, s, c = data.timing, data.settings, data.counts
    study = _dl([
        ("Study", data.study_name), ("Directory", s.get("study_dir")),
        ("Metric", None if _is_accuracy(data) else f"{_metric_words(data)} ({_better(data)})"),
        ("Objectives", ", ".join(f"{m} {'↑' if d == 'maximize' else '↓'}"
                                 for m, d in zip(data.metric_names, data.directions))),
        (f"Max {_metric_words(data)} drop", _fmt_num(s.get("max_accuracy_drop"))),
        ("Fingerprint", s.get("fingerprint")),
        ("Started", _fmt_time(data.started_at)), ("Machine", data.machine),
    ])  # fmt: skip
    time = _dl([
        ("Running time", _fmt_seconds(t["wall_s"])), ("Span, first start to last end", _fmt_seconds(t.get("span_s"))),
        ("Trial time, sum", _fmt_seconds(t["trials_total_s"])),
        ("Per trial, mean", _fmt_seconds(t["trial_mean_s"])), ("Per trial, median", _fmt_seconds(t["trial_median_s"])),
        ("Apply, mean", _fmt_seconds(t["apply_mean_s"])), ("Fine-tune, mean", _fmt_seconds(t["finetune_mean_s"])),
        ("Evaluate, mean", _fmt_seconds(t["eval_mean_s"])),
    ])  # fmt: skip
    labels = {"stopped": "Stopped early", "pruned": "Stopped early (Optuna PRUNED, older studies)",
              "replaced": "Replaced by their promotion", "promoted": "Promoted (longer fine-tune)"}
    counts = _dl([(labels.get(k, k.capitalize()), v) for k, v in c.items()])
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
