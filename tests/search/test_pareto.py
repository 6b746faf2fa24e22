"""Pareto mask, hypervolume and the study-level front, against hand computation,
brute force, and Optuna's own ``study.best_trials``."""

from __future__ import annotations

import itertools
import math

import numpy as np
import optuna
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compresstune.search.pareto import (
    front,
    hypervolume_2d,
    hypervolume_series,
    pareto_mask,
    reference_point,
    study_hypervolume,
)

MAX_MIN = ["maximize", "minimize"]
REF = {"val_accuracy": 0.87, "log2_ratio": 0.0}


# ----------------------------------------------------------------- pareto_mask


def brute_force_mask(points: np.ndarray, directions: list[str]) -> list[bool]:
    signs = [-1 if d == "maximize" else 1 for d in directions]
    loss = [[s * v for s, v in zip(signs, p)] for p in points.tolist()]
    out = []
    for i, p in enumerate(loss):
        if any(math.isnan(v) for v in p):
            out.append(False)
            continue
        dominated = any(
            all(a <= b for a, b in zip(q, p)) and any(a < b for a, b in zip(q, p))
            for j, q in enumerate(loss)
            if j != i and not any(math.isnan(v) for v in q)
        )
        out.append(not dominated)
    return out


def test_pareto_mask_hand_cases():
    points = [[0.90, 100], [0.80, 50], [0.70, 80], [0.90, 120], [0.95, 400]]
    assert pareto_mask(points, MAX_MIN).tolist() == [True, True, False, False, True]


def test_pareto_mask_keeps_identical_points():
    assert pareto_mask([[1, 2], [1, 2], [0, 3]], ["maximize", "minimize"]).tolist() == [True, True, False]


def test_pareto_mask_accepts_optuna_directions():
    directions = [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert pareto_mask([[1, 1], [0, 2]], directions).tolist() == [True, False]


def test_pareto_mask_nan_rows_are_never_on_front_and_never_dominate():
    mask = pareto_mask([[np.nan, 1], [0.5, 10], [0.4, np.nan]], MAX_MIN)
    assert mask.tolist() == [False, True, False]


def test_pareto_mask_inf_compares_normally():
    assert pareto_mask([[np.inf, 5], [1.0, 5]], MAX_MIN).tolist() == [True, False]


def test_pareto_mask_empty():
    assert pareto_mask(np.empty((0, 2)), MAX_MIN).shape == (0,)
    assert pareto_mask([], MAX_MIN).shape == (0,)


def test_pareto_mask_rejects_bad_shape_and_direction():
    with pytest.raises(ValueError, match=r"`points` must have shape \(n, 2\).*\(3,\)"):
        pareto_mask([1, 2, 3], MAX_MIN)
    with pytest.raises(ValueError, match=r"`directions\[1\]`.*'up'"):
        pareto_mask([[1, 2]], ["maximize", "up"])


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    n=st.integers(0, 25),
    d=st.integers(1, 3),
)
def test_pareto_mask_matches_brute_force(data, n, d):
    # Small integer grid so that ties and duplicates are frequent.
    values = data.draw(st.lists(st.lists(st.integers(0, 4), min_size=d, max_size=d), min_size=n, max_size=n))
    directions = data.draw(st.lists(st.sampled_from(["maximize", "minimize"]), min_size=d, max_size=d))
    points = np.asarray(values, dtype=float).reshape(n, d)
    if n and data.draw(st.booleans()):
        points[data.draw(st.integers(0, n - 1)), 0] = np.nan
    assert pareto_mask(points, directions).tolist() == brute_force_mask(points, directions)


def test_pareto_mask_blocks_give_the_same_answer(monkeypatch):
    import compresstune.search.pareto as pareto

    rng = np.random.default_rng(0)
    points = rng.integers(0, 20, size=(300, 2)).astype(float)
    full = pareto_mask(points, MAX_MIN)
    monkeypatch.setattr(pareto, "_MASK_BLOCK_CELLS", 7)
    assert pareto_mask(points, MAX_MIN).tolist() == full.tolist()


# -------------------------------------------------------------- hypervolume_2d


def brute_force_hypervolume(acc, lr, ref_a, ref_r) -> float:
    """Exact area by coordinate compression: sum the grid cells that some point covers."""
    pts = [(a, r) for a, r in zip(acc, lr) if a > ref_a and r > ref_r]
    xs = sorted({ref_a, *(a for a, _ in pts)})
    ys = sorted({ref_r, *(r for _, r in pts)})
    area = 0.0
    for (x0, x1), (y0, y1) in itertools.product(zip(xs, xs[1:]), zip(ys, ys[1:])):
        if any(a >= x1 and r >= y1 for a, r in pts):
            area += (x1 - x0) * (y1 - y0)
    return area


def test_hypervolume_single_rectangle():
    assert hypervolume_2d([0.9], [2.0], ref_acc=0.8) == pytest.approx(0.1 * 2.0)


def test_hypervolume_two_overlapping_rectangles():
    # [0.8,0.9]x[0,1] union [0.8,0.85]x[0,3] = 0.1*1 + 0.05*(3-1)
    assert hypervolume_2d([0.9, 0.85], [1.0, 3.0], ref_acc=0.8) == pytest.approx(0.2)


def test_hypervolume_dominated_and_duplicate_points_add_nothing():
    base = hypervolume_2d([0.9, 0.85], [1.0, 3.0], ref_acc=0.8)
    more = hypervolume_2d([0.9, 0.85, 0.84, 0.9, 0.85], [1.0, 3.0, 2.0, 1.0, 3.0], ref_acc=0.8)
    assert more == pytest.approx(base)


def test_hypervolume_points_not_strictly_better_than_reference_contribute_nothing():
    acc = [0.8, 0.95, 0.7, 0.99]
    lr = [5.0, 0.0, 4.0, -1.0]  # on the acc edge, on the ratio edge, below, negative ratio
    assert hypervolume_2d(acc, lr, ref_acc=0.8) == 0.0
    assert hypervolume_2d([], [], ref_acc=0.8) == 0.0


def test_hypervolume_non_reference_origin_and_nonfinite_points():
    hv = hypervolume_2d([0.9, np.nan, 0.95, 0.99], [3.0, 9.0, np.inf, 2.0], ref_acc=0.5, ref_log2_ratio=1.0)
    assert hv == pytest.approx((0.9 - 0.5) * (3 - 1) + (0.99 - 0.9) * (2 - 1))


def test_hypervolume_rejects_bad_input():
    with pytest.raises(ValueError, match="`acc` and `log2_ratio` must have the same length; got 2 and 1"):
        hypervolume_2d([0.9, 0.8], [1.0], ref_acc=0.5)
    with pytest.raises(ValueError, match="`ref_acc` must be a finite number; got nan"):
        hypervolume_2d([0.9], [1.0], ref_acc=float("nan"))
    with pytest.raises(ValueError, match="`ref_log2_ratio` must be a finite number; got 'x'"):
        hypervolume_2d([0.9], [1.0], ref_acc=0.5, ref_log2_ratio="x")
    with pytest.raises(ValueError, match="`acc` must be one-dimensional"):
        hypervolume_2d([[0.9]], [1.0], ref_acc=0.5)


@settings(max_examples=150, deadline=None)
@given(
    pts=st.lists(st.tuples(st.integers(0, 10), st.integers(-2, 8)), max_size=15),
    ref=st.tuples(st.integers(0, 5), st.integers(-1, 2)),
)
def test_hypervolume_matches_brute_force(pts, ref):
    acc = [a / 10 for a, _ in pts]
    lr = [float(r) for _, r in pts]
    expected = brute_force_hypervolume(acc, lr, ref[0] / 10, float(ref[1]))
    assert hypervolume_2d(acc, lr, ref[0] / 10, float(ref[1])) == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------- hypervolume_series


def series_frame() -> pd.DataFrame:
    start = pd.Timestamp("2026-01-01 00:00:00")
    return pd.DataFrame(
        {
            "number": [0, 1, 2, 3, 4],
            "state": ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"],
            "val_accuracy": [0.9, 0.95, np.nan, 0.99, 0.97],
            "ratio": [4.0, 2.0, np.nan, 8.0, 16.0],
            "feasible": [True, True, True, False, True],
            "rejected": [None, None, None, None, None],
            "stopped_at_rung": [None, None, None, None, 1],
            "datetime_start": [start + pd.Timedelta(seconds=s) for s in (0, 1, 2, 3, 4)],
            "datetime_complete": [start + pd.Timedelta(seconds=s) for s in (50, 10, 20, 30, 40)],
        }
    )


def test_hypervolume_series_by_number():
    out = hypervolume_series(series_frame(), {"val_accuracy": 0.8, "log2_ratio": 0.0})
    assert list(out.columns) == ["number", "hypervolume", "elapsed_s"]
    assert out["number"].tolist() == [0, 1, 2, 3, 4]
    # trial 3 is infeasible and trial 4 stopped: neither counts.
    assert out["hypervolume"].tolist() == pytest.approx([0.2, 0.25, 0.25, 0.25, 0.25])
    assert out["elapsed_s"].tolist() == [50, 10, 20, 30, 40]


def test_hypervolume_series_by_time_follows_completion_order():
    out = hypervolume_series(series_frame(), (0.8, 0.0), by="time")
    assert out["number"].tolist() == [1, 2, 3, 4, 0]
    assert out["hypervolume"].tolist() == pytest.approx([0.15, 0.15, 0.15, 0.15, 0.25])
    assert out["elapsed_s"].is_monotonic_increasing


def test_hypervolume_series_is_non_decreasing_on_the_study(study, kit):
    from compresstune.search.report import trials_frame

    df = trials_frame(study)
    for by in ("number", "time"):
        series = hypervolume_series(df, reference_point(study), by=by)
        assert series["hypervolume"].is_monotonic_increasing
        assert series["hypervolume"].iloc[-1] == pytest.approx(kit.MAIN_HYPERVOLUME)


def test_hypervolume_series_rejects_bad_arguments():
    df = series_frame()
    with pytest.raises(ValueError, match="`by` must be 'number' or 'time'; got 'trial'"):
        hypervolume_series(df, REF, by="trial")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['val_accuracy'\]"):
        hypervolume_series(df.drop(columns="val_accuracy"), REF)
    with pytest.raises(ValueError, match="`ref` must be a mapping"):
        hypervolume_series(df, 0.8)
    with pytest.raises(ValueError, match="`trials_df` must be a pandas DataFrame; got list"):
        hypervolume_series([], REF)


# -------------------------------------------------------------- study helpers


def test_study_hypervolume_is_the_hand_computed_staircase(study, kit):
    assert study_hypervolume(study) == pytest.approx(kit.MAIN_HYPERVOLUME)


def test_front_on_the_main_study_equals_optuna_best_trials(study, kit):
    df = front(study)
    assert set(df["number"]) == kit.FRONT_NUMBERS
    assert df["number"].tolist() == [2, 1, 9, 0]  # by size, ties by number
    assert sorted(df["number"]) == sorted(t.number for t in study.best_trials)


def test_front_excludes_stopped_and_rejected_trials_even_without_a_constraint(kit):
    # A writer that forgot the "stopped" constraint: Optuna would put trial 1 on the front.
    study = optuna.create_study(directions=MAX_MIN)
    study.add_trial(kit.complete_trial(0, 0.90, 500))
    study.add_trial(kit.complete_trial(1, 0.95, 100, stopped_at_rung=2))
    study.add_trial(kit.complete_trial(2, 0.99, 50, rejected="budget"))
    assert {t.number for t in study.best_trials} == {2}
    assert front(study)["number"].tolist() == [0]


def test_trial_without_constraints_is_feasible_next_to_constrained_ones(kit):
    study = optuna.create_study(directions=MAX_MIN)
    study.add_trial(kit.complete_trial(0, 0.90, 500, constraints=None))
    study.add_trial(kit.complete_trial(1, 0.95, 100, constraints=[0.5]))
    study.add_trial(kit.complete_trial(2, 0.80, 100, constraints=[-0.5], new_constraint_format=False))
    assert sorted(front(study)["number"]) == sorted(t.number for t in study.best_trials) == [0, 2]


def test_front_three_objectives_equals_best_trials(study3, kit):
    assert sorted(front(study3)["number"]) == sorted(t.number for t in study3.best_trials)
    two_d = front(study3, objectives=["val_accuracy", "size_bytes"])
    assert set(two_d["number"]) == kit.FRONT_NUMBERS


def test_front_rejects_unknown_objective(study):
    with pytest.raises(ValueError, match=r"`objectives` must be a non-empty subset of .*got \['latency_ms'\]"):
        front(study, objectives=["latency_ms"])


@pytest.mark.parametrize("seed", range(6))
def test_front_equals_best_trials_on_random_studies(seed, kit):
    rng = np.random.default_rng(seed)
    directions = ["maximize", "minimize"] + (["minimize"] if seed % 2 else [])
    study = optuna.create_study(directions=directions)
    for k in range(40):
        acc = float(rng.choice([0.8, 0.85, 0.9, rng.uniform(0.5, 1.0)]))
        size = int(rng.choice([1000, 2000, rng.integers(500, 5000)]))
        constraints = [float(rng.choice([-1.0, -0.5, 0.5])), 0.0] if seed >= 2 else None
        third = float(rng.integers(1, 5)) if seed % 2 else None
        study.add_trial(kit.complete_trial(k, acc, size, constraints=constraints, third=third,
                                           new_constraint_format=seed == 5))  # fmt: skip
    assert sorted(front(study)["number"]) == sorted(t.number for t in study.best_trials)


def test_reference_point_fallback_and_missing():
    class Attrs:
        def __init__(self, attrs):
            self.user_attrs = attrs

    assert reference_point(Attrs({"baseline": {"val_accuracy": 0.9}, "max_accuracy_drop": 0.02})) == {
        "val_accuracy": pytest.approx(0.88),
        "log2_ratio": 0.0,
    }
    with pytest.raises(ValueError, match="`reference_point` must be"):
        reference_point(Attrs({}))
    with pytest.raises(ValueError, match="`reference_point.val_accuracy` must be a finite number; got None"):
        reference_point(Attrs({"reference_point": {"val_accuracy": None}}))


def test_empty_study_has_zero_hypervolume_and_empty_front():
    study = optuna.create_study(directions=MAX_MIN)
    study.set_user_attr("reference_point", REF)
    assert study_hypervolume(study) == 0.0
    assert front(study).empty
