"""The report's data (trials frame, ReportData) and the files write_report produces."""

from __future__ import annotations

import base64
import json
import math
import re
import warnings

import numpy as np
import optuna
import pandas as pd
import pytest

from compresstune.search import report as report_mod
from compresstune.search.report import _data, _figures, _format
from compresstune.search.pareto import hypervolume_series, reference_point
from compresstune.search.report import ReportData, report_data, trials_frame, write_report


# ----------------------------------------------------------------- trials_frame


def test_trials_frame_has_one_row_per_trial_and_the_documented_columns(study, kit):
    df = trials_frame(study)
    assert df["number"].tolist() == list(range(len(study.trials)))
    for col in ("number", "state", "values_val_accuracy", "values_size_bytes", "size_bytes", "ratio",
                "val_accuracy", "test_accuracy", "feasible", "violated", "rejected", "stopped_at_rung", "seed_trial",
                "fail_reason", "total_s", "datetime_start", "datetime_complete", "pareto", "plan"):  # fmt: skip
        assert col in df.columns, col
    params = [c for c in df.columns if c.startswith("params_")]
    assert set(params) == {f"params_{k}" for k in kit.params_for(0)}


def test_trials_frame_flags(study, kit):
    df = trials_frame(study).set_index("number")
    assert set(df.index[df["pareto"]]) == kit.FRONT_NUMBERS
    assert df.loc[5, "state"] == "FAIL" and "out of memory" in df.loc[5, "fail_reason"]
    assert df.loc[6, "rejected"] == "budget" and df.loc[6, "violated"] == "accuracy_drop,max_size_bytes"
    assert not df.loc[4, "feasible"] and df.loc[4, "violated"] == "accuracy_drop"
    assert df.loc[8, "stopped_at_rung"] == 1 and df.loc[8, "violated"] == "stopped" and not df.loc[8, "pareto"]
    assert df.loc[9, "feasible"] and df.loc[9, "pareto"]  # Optuna 5 named constraints, read as well
    assert df.loc[0, "seed_trial"] and not df.loc[1, "seed_trial"]
    assert df.loc[11, "state"] == "PRUNED"
    assert df.loc[2, "ratio"] == pytest.approx(10.0)
    assert df.loc[2, "total_s"] == pytest.approx(13.5)
    expected = {0: "front", 3: "dominated", 4: "infeasible", 5: "failed", 6: "rejected", 7: "infeasible",
                8: "stopped", 11: "pruned"}  # fmt: skip
    assert {k: df.loc[k, "category"] for k in expected} == expected


def test_csv_round_trip_recovers_plans_and_hypervolume(study, tmp_path):
    df = trials_frame(study)
    path = tmp_path / "trials.csv"
    df.to_csv(path, index=False)
    back = pd.read_csv(path)
    assert back["number"].tolist() == df["number"].tolist()
    for original, read in zip(df["plan"], back["plan"]):
        if pd.isna(original):
            assert pd.isna(read)
        else:
            assert json.loads(read) == json.loads(original)
            assert read == original
    ref = reference_point(study)
    for by in ("number", "time"):
        a = hypervolume_series(df, ref, by=by)
        b = hypervolume_series(back, ref, by=by)
        pd.testing.assert_frame_equal(a, b)


def test_trials_frame_of_an_empty_study():
    study = optuna.create_study(directions=["maximize", "minimize"])
    df = trials_frame(study)
    assert df.empty and "pareto" in df.columns


# ----------------------------------------------------------------- report_data


def test_report_data_front_sorted_by_size(main_data, kit):
    data = main_data
    assert isinstance(data, ReportData)
    assert set(data.front["number"]) == kit.FRONT_NUMBERS
    assert data.front["size_bytes"].is_monotonic_increasing
    assert data.hypervolume == pytest.approx(kit.MAIN_HYPERVOLUME)
    assert data.front_2d["number"].tolist() == data.front["number"].tolist()
    assert data.hypervolume_front["number"].tolist()[0] == 2  # smallest point above the reference


def test_heatmaps_shape_order_and_values(main_data, kit):
    data = main_data
    assert data.layers == kit.LAYERS
    for knob in ("sparsity", "bits", "rank_fraction"):
        matrix = data.heatmaps[knob]
        assert matrix.shape == (len(data.front), len(kit.LAYERS))
        assert list(matrix.columns) == kit.LAYERS
        assert list(matrix.index) == data.front["number"].tolist()
    params = kit.params_for(2)
    assert data.heatmaps["sparsity"].loc[2, "fc2"] == pytest.approx(params["fc2:sparsity"])
    assert data.heatmaps["bits"].loc[2, "features.3"] == params["features.3:bits"]
    assert data.heatmaps["rank_fraction"].loc[2, "fc1"] == pytest.approx(params["fc1:rank_fraction"])
    # A layer without a rank and without a rank_fraction param is "no factorisation": 1.0.
    assert data.heatmaps["rank_fraction"].loc[2, "fc2"] == 1.0


def test_layers_follow_the_study_attr_then_plan_only_layers(study, kit, monkeypatch):
    monkeypatch.setattr(_data, "_importances", lambda *a: ({}, "skipped"))
    study.set_user_attr("layers", ["fc2", "fc1"])
    data = report_data(study)
    assert data.layers[:2] == ["fc2", "fc1"]
    assert set(data.layers) == set(kit.LAYERS)


def test_report_data_counts_reference_baseline_and_exports(main_data, kit):
    data = main_data
    assert data.counts == {
        "trials": 12, "complete": 10, "front": 4, "dominated": 2, "infeasible": 2, "rejected": 1,
        "stopped": 1, "replaced": 0, "failed": 1, "pruned": 1, "running": 0, "promoted": 0,
    }  # fmt: skip
    assert data.reference_point["val_accuracy"] == pytest.approx(0.87)
    assert data.reference_point["size_bytes"] == kit.REFERENCE_BYTES
    assert data.baseline["val_accuracy"] == pytest.approx(0.92)
    assert data.export_commands[9] == "compresstune export 'runs/my study' --trial 9 --output trial_9.ctz"
    assert set(data.export_commands) == kit.FRONT_NUMBERS
    assert data.versions["optuna"] == optuna.__version__ and data.machine == "test-box (2 cores)"
    assert data.settings["fingerprint"] == "abc123"
    assert data.distillation[2] == {"temperature": 3.0, "alpha": 0.5}
    assert data.timing["span_s"] == pytest.approx(235.0)  # first start to last end
    assert data.timing["wall_s"] == pytest.approx(220.0)  # time with a trial running: the idle gaps left out
    assert data.timing["trial_mean_s"] > 0


def test_export_dir_defaults(study, tmp_path, monkeypatch):
    monkeypatch.setattr(_data, "_importances", lambda *a: ({}, "skipped"))
    # report_data: the folder of the sqlite storage; write_report: the folder written into.
    data = report_data(study)
    assert data.export_commands[0] == f"compresstune export {tmp_path} --trial 0 --output trial_0.ctz"
    page = write_report(study, tmp_path / "out dir").read_text(encoding="utf-8")
    assert f"compresstune export &#x27;{tmp_path}/out dir&#x27; --trial 0" in page


def test_hypervolume_series_in_report_data(main_data, kit):
    data = main_data
    assert len(data.hypervolume_by_trial) == 12
    assert data.hypervolume_by_trial["hypervolume"].iloc[-1] == pytest.approx(kit.MAIN_HYPERVOLUME)
    assert data.hypervolume_by_time["elapsed_s"].is_monotonic_increasing


def test_importances_per_objective(main_data):
    data = main_data
    assert data.importance_note is None
    assert set(data.importances) == {"val_accuracy", "size_bytes"}
    for scores in data.importances.values():
        assert sum(scores.values()) == pytest.approx(1.0)
        assert all(type(v) is float for v in scores.values())


def test_importances_skipped_on_tiny_studies(kit):
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("reference_point", {"val_accuracy": 0.8, "log2_ratio": 0.0})
    study.add_trial(kit.complete_trial(0, 0.9, 1000, constraints=[-1.0]))
    data = report_data(study)
    assert data.importances == {}
    assert "at least 2" in data.importance_note


def test_importance_failure_never_crashes_the_report(study, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("fANOVA exploded")

    monkeypatch.setattr(optuna.importance, "get_param_importances", boom)
    data = report_data(study)
    assert data.importances == {}
    assert "fANOVA exploded" in data.importance_note


def test_report_data_three_objectives(study3, kit):
    data = report_data(study3)
    assert data.metric_names == ["val_accuracy", "size_bytes", "latency_ms"]
    assert sorted(data.front["number"]) == sorted(t.number for t in study3.best_trials)
    assert set(data.front_2d["number"]) == kit.FRONT_NUMBERS
    assert "latency_ms" in data.importances


def test_report_data_without_reference_point_or_baseline(kit):
    study = optuna.create_study(directions=["maximize", "minimize"])
    for k in range(3):
        study.add_trial(kit.complete_trial(k, 0.9 - k / 100, 1000 - 100 * k))
    data = report_data(study)
    assert data.reference_point is None and data.baseline is None and math.isnan(data.hypervolume)
    assert data.hypervolume_by_trial.empty


# ---------------------------------------------------------------- write_report


def decode(array) -> list:
    """Plotly >= 6 writes numpy arrays as base64 typed arrays ({"dtype", "bdata"})."""
    if isinstance(array, dict) and "bdata" in array:
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=np.dtype(array["dtype"])).tolist()
    return list(array)


def plotly_traces(page: str) -> list[dict]:
    """The trace dicts of every figure, from the Plotly.newPlot calls."""
    traces = []
    for match in re.finditer(r'Plotly\.newPlot\(\s*"[^"]+",\s*(\[.*?\]),\s*\{', page, flags=re.S):
        traces += json.loads(match.group(1))
    return traces


def test_write_report_files_and_html(main_report, kit):
    out, path = main_report.parent, main_report
    assert path.name == "report.html"
    page = path.read_text(encoding="utf-8")
    # plotly.js embedded exactly once, nothing fetched from the network.
    assert page.count("* plotly.js v") == 1
    assert "cdn.plot.ly" not in page.replace(_plotly_bundle(), "")
    assert not re.search(r"<script[^>]+src=", page)
    traces = {t.get("uid"): t for t in plotly_traces(page)}
    assert {"pareto-front", "dominated", "infeasible", "rejected", "stopped", "baseline",
            "hv-reference", "hv-region", "hv-by-trial", "hv-by-time", "heatmap-sparsity", "heatmap-bits",
            "heatmap-rank_fraction", "importance-val_accuracy"} <= set(traces)  # fmt: skip
    assert decode(traces["pareto-front"]["x"]) == [100_000, 200_000, 200_000, 500_000]
    assert len(decode(traces["pareto-front"]["y"])) == len(kit.FRONT_NUMBERS)
    assert traces["pareto-front"]["line"]["shape"] == "hv"
    assert "compresstune export" in page and 'id="pareto-table"' in page
    assert "reference point" in page
    assert "#5" in page and "RuntimeError: CUDA out of memory" in page  # failures are listed
    pareto = pd.read_csv(out / "pareto.csv")
    assert pareto["number"].tolist() == [2, 1, 9, 0]
    assert len(pd.read_csv(out / "trials.csv")) == 12


def _plotly_bundle() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def test_write_report_three_objectives(study3, tmp_path, monkeypatch):
    monkeypatch.setattr(_data, "_importances", lambda *a: ({}, "skipped"))
    page = write_report(study3, tmp_path / "r").read_text(encoding="utf-8")
    uids = {t.get("uid") for t in plotly_traces(page)}
    assert {"pareto-front", "pareto-front-3d", "pareto-front-2d", "proj1-front", "proj3-front"} <= uids
    assert "Latency (ms)" in page


def test_write_report_on_degenerate_studies(tmp_path, kit):
    empty = optuna.create_study(directions=["maximize", "minimize"])
    assert write_report(empty, tmp_path / "empty").exists()
    failed = optuna.create_study(directions=["maximize", "minimize"])
    for key, value in kit.study_attrs().items():
        failed.set_user_attr(key, value)
    failed.add_trial(kit.failed_trial(0))
    page = write_report(failed, tmp_path / "failed").read_text(encoding="utf-8")
    assert "1 failed" in page and "No Pareto trials yet" in page


def test_write_report_rejects_a_file_as_out_dir(study, tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(ValueError, match="`out_dir` must be a directory; got .*file.txt"):
        write_report(study, target)


def test_channels_heatmap_shows_the_kept_fraction_of_each_group(study, kit):
    data = report_data(study)
    assert list(data.channels.columns) == ["features.3"] and len(data.channels) == len(data.front)
    for number, kept in data.channels["features.3"].items():
        fraction = kit.params_for(number)["features.3:sparsity"]  # schema-1 plans: structured + sparsity
        assert kept == pytest.approx(max(1, 16 - round(fraction * 16)) / 16)
    page = _figures._heatmap_section(__import__("plotly.graph_objects").graph_objects, data)
    assert "fig-heat-channels" in page and "Channels kept per channel group" in page


def test_plan_hover_is_compact(kit):
    lines = _format._plan_lines(kit.plan_for(kit.params_for(2)), kit.LAYERS)
    assert lines[2] == "fc1 s0.05 b32 r16"
    assert lines[3].startswith("fc2 s0.20 b2 r—")
    assert lines[1].startswith("features.3 s0.00 c0.85 b")  # schema 1's flag: the sparsity is its channel fraction
    assert lines[-1] == "KD T=3 α=0.5"


def test_size_ticks_are_readable():
    ticks = _figures._size_ticks(20_000, 1_000_000)
    assert "1 MB" in ticks["ticktext"] and "50 kB" in ticks["ticktext"]
    assert _figures._size_ticks(np.nan, 10) == {}


def test_hostile_trials_never_crash_the_report(kit, tmp_path, monkeypatch):
    monkeypatch.setattr(_data, "_importances", lambda *a: ({}, "skipped"))
    study = optuna.create_study(directions=["maximize", "minimize"])
    for key, value in kit.study_attrs().items():
        study.set_user_attr(key, value)
    study.add_trial(kit.complete_trial(0, 0.90, 200_000, constraints=[-1.0], plan="not json"))
    study.add_trial(kit.complete_trial(1, 0.91, 300_000, constraints=[-1.0], plan=None))
    extra_layer = json.dumps({"schema_version": 1, "layers": {"head": {"sparsity": 0.5, "bits": 4, "rank": 3}}})
    study.add_trial(kit.complete_trial(2, 0.89, 100_000, constraints=[-1.0], plan=extra_layer))
    study.add_trial(kit.complete_trial(3, float("inf"), 400_000, constraints=[-1.0], test_accuracy=float("nan")))
    study.add_trial(kit.complete_trial(4, 0.95, 50_000, constraints=[float("inf")]))
    data = report_data(study)
    assert data.layers == [*kit.LAYERS, "head"]
    assert data.heatmaps["bits"].shape == (len(data.front), len(kit.LAYERS) + 1)
    row = data.heatmaps["rank_fraction"].loc[2]
    assert row["head"] != row["head"]  # a rank without a rank_fraction param is unknown: NaN
    assert data.heatmaps["sparsity"].loc[0].isna().all()
    assert 4 not in set(data.front["number"])
    page = report_mod.render_html(data)
    assert "pareto-front" in page
    trials = trials_frame(study)
    trials.to_csv(tmp_path / "t.csv", index=False)
    assert len(pd.read_csv(tmp_path / "t.csv")) == 5


def test_the_sensitivity_scan_is_a_heatmap_of_drops(study, tmp_path, monkeypatch):
    monkeypatch.setattr(_data, "_importances", lambda *a: ({}, "skipped"))
    assert report_data(study).sensitivity is None
    page = write_report(study, tmp_path / "without").read_text(encoding="utf-8")
    assert "No sensitivity scan in this study" in page
    scan = {"layers": ["fc1", "fc2"], "settings": ["sparsity 0.5", "bits 2"], "examples": 360,
            "baseline_accuracy": 0.97, "drop": [[0.01, 0.4], [0.002, None]]}
    study.set_user_attr("sensitivity", scan)
    data = report_data(study)
    assert data.sensitivity.loc["fc1", "bits 2"] == 0.4 and np.isnan(data.sensitivity.loc["fc2", "bits 2"])
    assert data.sensitivity.attrs == {"examples": 360, "baseline_accuracy": 0.97}
    page = write_report(study, tmp_path / "with").read_text(encoding="utf-8")
    heat = {t.get("uid"): t for t in plotly_traces(page)}["heatmap-sensitivity"]
    assert heat["y"] == ["fc1", "fc2"] and heat["x"] == ["sparsity 0.5", "bits 2"]
    assert heat["text"] == [["+0.010", "+0.400"], ["+0.002", "–"]] and "360 validation examples" in page


# ------------------------------------------------------ a minimised metric (perplexity)

PPL_BASELINE, PPL_MAX_DROP = 20.0, 2.0
PPL_REF = PPL_BASELINE + PPL_MAX_DROP  # minimised: the reference is worse, i.e. higher
# (number, perplexity, size, extra); the constraint layout is [metric_drop, stopped].
PPL_TRIALS = [
    (0, 20.5, 500_000, {}),  # front
    (1, 21.0, 200_000, {}),  # front
    (2, 21.8, 100_000, {}),  # front; the whole front if perplexity were maximised
    (3, 21.5, 300_000, {}),  # dominated by 1 (lower perplexity, smaller)
    (4, 23.0, 50_000, {}),  # infeasible: above baseline + max drop
    (5, 19.0, 60_000, {"stopped_at_rung": 1}),  # stopped early; would dominate everything
    (6, 20.8, 700_000, {}),  # dominated by 0
    (7, 80.0, 950_000, {"rejected": "budget"}),  # not fine-tuned; far above the interesting range
]
PPL_FRONT = [2, 1, 0]  # by size
# Staircase on (-perplexity, log2 ratio) above (-22, 0): trials 2, 1, 0.
PPL_HYPERVOLUME = ((PPL_REF - 21.8) * math.log2(10) + (21.8 - 21.0) * math.log2(5)
                   + (21.0 - 20.5) * math.log2(2))  # fmt: skip


def perplexity_study(kit, *, third: bool = False) -> optuna.Study:
    """A study of a minimised metric laid out as the controller writes it (in memory)."""
    directions = ["minimize", "minimize"] + (["minimize"] if third else [])
    study = optuna.create_study(directions=directions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["val_perplexity", "size_bytes"] + (["latency_ms"] if third else []))
    attrs = kit.study_attrs()
    attrs.update(
        record_schema=3,
        config={"model": "studies/tiny.py:build", "n_trials": 8, "constraints": {"max_metric_drop": PPL_MAX_DROP}},
        baseline={"val_accuracy": PPL_BASELINE, "test_accuracy": 20.6, "reference_bytes": kit.REFERENCE_BYTES,
                  "packed_bytes": 1_000_200},
        metric={"name": "perplexity", "direction": "minimize", "task": "compresstune.tasks:LanguageModeling"},
        reference_point={"val_accuracy": PPL_REF, "log2_ratio": 0.0},
        max_accuracy_drop=PPL_MAX_DROP,
        constraint_names=["metric_drop", "stopped"],
    )  # fmt: skip
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    for number, ppl, size, extra in PPL_TRIALS:
        constraints = [round(ppl - PPL_REF, 6), 1.0 if "stopped_at_rung" in extra else 0.0]
        latency = 1.0 + size / 100_000 if third else None
        study.add_trial(kit.complete_trial(number, ppl, size, constraints=constraints, third=latency,
                                           curve=[[0, 40.0], [100, ppl]], **extra))  # fmt: skip
    return study


def test_a_minimised_metric_picks_the_low_perplexity_front(kit, monkeypatch):
    from compresstune.search.pareto import study_hypervolume

    monkeypatch.setattr(_data, "_importances", lambda *a: ({}, "skipped"))
    study = perplexity_study(kit)
    data = report_data(study)
    assert (data.metric, data.direction) == ("perplexity", "minimize")
    assert data.front["number"].tolist() == PPL_FRONT
    df = data.trials.set_index("number")
    assert df.loc[3, "category"] == "dominated" and df.loc[6, "category"] == "dominated"
    assert df.loc[4, "category"] == "infeasible" and df.loc[4, "violated"] == "metric_drop"
    assert df.loc[5, "category"] == "stopped" and df.loc[7, "category"] == "rejected"
    assert data.hypervolume == pytest.approx(PPL_HYPERVOLUME)
    assert data.hypervolume == pytest.approx(study_hypervolume(study))
    assert data.hypervolume_by_trial["hypervolume"].iloc[-1] == pytest.approx(PPL_HYPERVOLUME)
    assert data.hypervolume_by_time["hypervolume"].iloc[-1] == pytest.approx(PPL_HYPERVOLUME)
    assert data.hypervolume_front["number"].tolist() == PPL_FRONT
    assert data.reference_point["val_accuracy"] == pytest.approx(PPL_REF)


def test_a_minimised_metric_front_2d_of_three_objectives(kit, monkeypatch):
    monkeypatch.setattr(_data, "_importances", lambda *a: ({}, "skipped"))
    data = report_data(perplexity_study(kit, third=True))
    assert data.metric_names == ["val_perplexity", "size_bytes", "latency_ms"]
    assert data.front_2d["number"].tolist() == PPL_FRONT


def test_a_minimised_metric_report_speaks_perplexity(kit, tmp_path):
    study = perplexity_study(kit)
    study.set_user_attr("sensitivity", {
        "layers": ["fc1", "fc2"], "settings": ["sparsity 0.5", "bits 2"], "examples": 64,
        "baseline_accuracy": 19.7, "drop": [[0.01, 0.4], [0.002, None]], "metric": "perplexity",
        "drop_unit": "relative",
    })  # fmt: skip
    path = write_report(study, tmp_path / "r")
    page = path.read_text(encoding="utf-8").replace(_plotly_bundle(), "")
    assert "perplexity" in page and "lower is better" in page
    assert "accuracy" not in page.lower()  # nowhere: titles, hovers, headers, notes, settings
    layouts = [json.loads(m.group(1)) for m in
               re.finditer(r'Plotly\.newPlot\(\s*"[^"]+",\s*\[.*?\],\s*(\{.*?\}),\s*\{"displaylogo"', page, flags=re.S)]
    titles = [ax["title"]["text"] for lay in layouts for k, ax in lay.items()
              if k.startswith(("xaxis", "yaxis")) and isinstance(ax, dict) and "title" in ax]
    assert "Validation perplexity (lower is better)" in titles
    assert not any("acc" in t.lower() for t in titles)
    assert "Max perplexity drop" in page and "Val perplexity" in page and "Best perplexity" in page
    assert "perplexity drop (relative)" in page  # the sensitivity hover
    traces = {t.get("uid"): t for t in plotly_traces(page)}
    assert decode(traces["pareto-front"]["x"]) == [100_000, 200_000, 500_000]
    assert decode(traces["pareto-front"]["y"]) == pytest.approx([21.8, 21.0, 20.5])
    assert decode(traces["hv-reference"]["y"]) == pytest.approx([PPL_REF])
    assert decode(traces["hv-bounds"]["y"])[-1] < PPL_REF  # the bound runs towards better: down
    assert decode(traces["baseline"]["y"]) == pytest.approx([PPL_BASELINE])
    lo, hi = layouts[0]["yaxis"]["range"]  # the view keeps the front, reference and baseline, not trial 7
    assert lo < 20.0 and PPL_REF < hi < 80.0
    assert "trial(s) with high perplexity lie above the initial view" in page
    trials = pd.read_csv(tmp_path / "r" / "trials.csv")
    assert {"val_perplexity", "test_perplexity"} <= set(trials.columns)
    assert not {"val_accuracy", "test_accuracy"} & set(trials.columns)
    pareto = pd.read_csv(tmp_path / "r" / "pareto.csv")
    assert pareto["number"].tolist() == PPL_FRONT
    assert pareto["val_perplexity"].tolist() == pytest.approx([21.8, 21.0, 20.5])


def test_a_minimised_metric_table_deltas_and_formatting(kit, monkeypatch):
    monkeypatch.setattr(_data, "_importances", lambda *a: ({}, "skipped"))
    data = report_data(perplexity_study(kit))
    table = _figures._table_html(data)
    assert "Δ val vs baseline (lower is better)" in table and "pp" not in table
    assert "+1.8<" in table  # trial 2: 21.8 - 20.0, in the metric's units
    assert "21.8" in _format._hover(data.front.iloc[0], data) and "%" not in _format._hover(data.front.iloc[0], data)
    assert not _format._acc_is_fraction(data)


def test_running_time_leaves_out_the_gap_between_two_runs_of_a_resumed_study():
    from compresstune.search.report._data import _running_seconds

    t = pd.Timestamp("2026-01-01 10:00:00")
    s = pd.Timedelta(seconds=1)
    frame = pd.DataFrame({  # run 1: two overlapping trials over 0-100 s; run 2, an hour later: 50 s
        "datetime_start": [t, t + 30 * s, t + 3700 * s],
        "datetime_complete": [t + 60 * s, t + 100 * s, t + 3750 * s]})
    assert _running_seconds(frame) == 150.0


def test_the_pareto_table_has_a_test_difference_column_and_the_baseline_card_its_test_metric(study, tmp_path):
    html = write_report(study, tmp_path).read_text()
    assert "Δ test vs baseline" in html and "stopped early" in html and "pruned/stopped" not in html
    base = study.user_attrs["baseline"]
    assert f"test {100 * base['test_accuracy']:.1f}" in html or f"test {base['test_accuracy']:.4f}" in html
    assert '<td class="cmd"' in html and "Running time" in html
