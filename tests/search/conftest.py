"""Real Optuna studies laid out exactly as the compresstune controller writes them."""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

LAYERS = ["features.0", "features.3", "fc1", "fc2"]
REFERENCE_BYTES = 1_000_000
BASELINE_ACC = 0.92
MAX_DROP = 0.05
REF_ACC = BASELINE_ACC - MAX_DROP
MAX_SIZE = 800_000
CONSTRAINT_NAMES = ["accuracy_drop", "max_size_bytes", "stopped"]
T0 = dt.datetime(2026, 1, 2, 10, 0, 0)



@pytest.fixture(autouse=True)
def _quiet_optuna():
    """Silence "A new study created" lines, and restore the verbosity afterwards."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    optuna.logging.set_verbosity(before)


def distributions() -> dict[str, Any]:
    dists: dict[str, Any] = {}
    for layer in LAYERS:
        dists[f"{layer}:sparsity"] = FloatDistribution(0.0, 0.95)
        dists[f"{layer}:bits"] = CategoricalDistribution([2, 4, 8, 16, 32])
    dists["fc1:rank_fraction"] = FloatDistribution(0.1, 1.0)
    dists["distill:temperature"] = FloatDistribution(1.0, 8.0)
    dists["distill:alpha"] = FloatDistribution(0.0, 1.0)
    return dists


def params_for(k: int) -> dict[str, Any]:
    """Deterministic, varied parameters for the k-th hand-made trial."""
    params: dict[str, Any] = {}
    for j, layer in enumerate(LAYERS):
        params[f"{layer}:sparsity"] = round(((k * 7 + j * 3) % 19) / 20, 2)
        params[f"{layer}:bits"] = [2, 4, 8, 16, 32][(k + j) % 5]
    params["fc1:rank_fraction"] = [1.0, 0.5, 0.25, 0.75][k % 4]
    params["distill:temperature"] = 1.0 + (k % 7)
    params["distill:alpha"] = round((k % 5) / 4, 2)
    return params


def plan_for(params: dict[str, Any]) -> str:
    layers = {}
    for layer in LAYERS:
        rank = None
        if layer == "fc1" and params["fc1:rank_fraction"] < 1.0:
            rank = max(1, round(params["fc1:rank_fraction"] * 64))
        layers[layer] = {
            "sparsity": params[f"{layer}:sparsity"],
            "bits": params[f"{layer}:bits"],
            "rank": rank,
            "structured": layer == "features.3",
        }
    return json.dumps(
        {
            "schema_version": 1,
            "temperature": params["distill:temperature"],
            "alpha": params["distill:alpha"],
            "layers": layers,
        }
    )


def study_attrs(*, third: str | None = None) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "compresstune_version": "0.1.0",
        "config": {"model": "studies/tiny.py:build", "n_trials": 12, "max_accuracy_drop": MAX_DROP},
        "fingerprint": "abc123",
        "baseline": {
            "val_accuracy": BASELINE_ACC,
            "test_accuracy": 0.915,
            "reference_bytes": REFERENCE_BYTES,
            "packed_bytes": 1_000_200,
        },
        "reference_point": {"val_accuracy": BASELINE_ACC - MAX_DROP, "log2_ratio": 0.0},
        "max_accuracy_drop": MAX_DROP,
        "constraint_names": CONSTRAINT_NAMES,
        "layers": LAYERS,
        "channel_groups": {"features.3": {"layers": ["features.3"], "regions": [[0, 16]]}},
        "started_at": T0.isoformat(),
        "machine": "test-box (2 cores)",
        "versions": {"compresstune": "0.1.0", "torch": "2.13.0", "optuna": optuna.__version__, "ray": "none",
                     "python": "3.11"},  # fmt: skip
    }
    if third:
        attrs["config"]["third_objective"] = third
    return attrs


def complete_trial(k: int, acc: float, size: int, *, constraints: list[float] | None = None,
                   third: float | None = None, new_constraint_format: bool = False,
                   **user: Any) -> optuna.trial.FrozenTrial:  # fmt: skip
    """A COMPLETE trial as the controller records it; ``constraints=None`` sets none."""
    params = params_for(k)
    values = [acc, float(size)] + ([third] if third is not None else [])
    attrs = {
        "plan": plan_for(params),
        "size_bytes": size,
        "ratio": REFERENCE_BYTES / size,
        "val_accuracy": acc,
        "test_accuracy": round(acc - 0.004, 6),
        "curve": [[0, 0.5], [100, acc]],
        "timings": {"apply_s": 0.5, "finetune_s": 10.0 + k, "eval_s": 1.0, "total_s": 11.5 + k},
        "artifact": f"artifacts/trial_{k:05d}.ctz",
        **user,
    }
    system: dict[str, Any] = {}
    named = None
    if constraints is not None:
        attrs["constraints"] = list(constraints)
        if new_constraint_format:  # Optuna >= 5 trial.set_constraint(name, value)
            named = dict(zip(CONSTRAINT_NAMES, constraints))
        else:  # the list the controller writes, which every Optuna version reads
            system["constraints"] = list(constraints)
    return _timed(create_trial(
        state=TrialState.COMPLETE, values=values, params=params, distributions=distributions(),
        user_attrs=attrs, system_attrs=system, constraints=named,
    ), k)  # fmt: skip


def writer_constraints(acc: float, size: int, *, stopped: bool = False) -> list[float]:
    """The controller's layout: [accuracy_drop, max_size_bytes, stopped]; positive = violated."""
    return [round(REF_ACC - acc, 6), float(size - MAX_SIZE), 1.0 if stopped else 0.0]


def _timed(trial: optuna.trial.FrozenTrial, k: int) -> optuna.trial.FrozenTrial:
    # Trials finish out of number order, so "by time" differs from "by number".
    trial.datetime_start = T0 + dt.timedelta(seconds=20 * k)
    trial.datetime_complete = T0 + dt.timedelta(seconds=20 * k + 15 + (30 if k % 3 == 0 else 0))
    return trial


def failed_trial(k: int) -> optuna.trial.FrozenTrial:
    reason = "RuntimeError: CUDA out of memory"
    return _timed(create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": reason}), k)


def pruned_trial(k: int) -> optuna.trial.FrozenTrial:
    return _timed(create_trial(state=TrialState.PRUNED), k)


# (number, acc, size, extra) of the main two-objective study; hand-checked in the tests.
MAIN_TRIALS = [
    (0, 0.91, 500_000, {"seed_trial": True}),  # front
    (1, 0.90, 200_000, {}),  # front (tied with 9)
    (2, 0.88, 100_000, {}),  # front
    (3, 0.89, 300_000, {}),  # dominated by 1
    (4, 0.85, 50_000, {}),  # infeasible: below baseline - max drop
    (5, None, None, {"_fail": True}),
    (6, 0.50, 950_000, {"rejected": "budget"}),  # over the size budget, not fine-tuned
    (7, 0.80, 30_000, {}),  # infeasible; the smallest point, on the front if it counted
    (8, 0.93, 60_000, {"stopped_at_rung": 1}),  # stopped early (infeasible); would dominate everything
    (9, 0.90, 200_000, {"_new_format": True}),  # identical to 1: both on the front
    (10, 0.88, 700_000, {}),  # dominated by 0
    (11, None, None, {"_pruned": True}),
]
FRONT_NUMBERS = {0, 1, 2, 9}
# Staircase over eligible points above the reference (0.87, 0): trials 2, 1 (=9), 0.
MAIN_HYPERVOLUME = (0.88 - 0.87) * math.log2(10) + (0.90 - 0.88) * math.log2(5) + (0.91 - 0.90) * math.log2(2)


def build_study(path: Path | None, *, third: str | None = None, name: str = "tiny") -> optuna.Study:
    """The main study in ``path/study.db`` (in memory when ``path`` is None)."""
    directions = ["maximize", "minimize"] + (["minimize"] if third else [])
    storage = None if path is None else f"sqlite:///{path}/study.db"
    study = optuna.create_study(directions=directions, storage=storage, study_name=name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["val_accuracy", "size_bytes"] + ([third] if third else []))
    for key, value in study_attrs(third=third).items():
        study.set_user_attr(key, value)
    for number, acc, size, extra in MAIN_TRIALS:
        extra = dict(extra)
        if extra.pop("_fail", False):
            study.add_trial(failed_trial(number))
            continue
        if extra.pop("_pruned", False):
            study.add_trial(pruned_trial(number))
            continue
        new_format = extra.pop("_new_format", False)
        constraints = writer_constraints(acc, size, stopped="stopped_at_rung" in extra)
        latency = 1.0 + (size / 100_000) * (1.5 if number % 2 else 0.5) if third else None
        study.add_trial(complete_trial(number, acc, size, constraints=constraints, third=latency,
                                       new_constraint_format=new_format, **extra))  # fmt: skip
    return study


@pytest.fixture(scope="session")
def _study_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Build each study once per session (sqlite setup costs about a second)."""
    files = {}
    with warnings.catch_warnings():
        for key, kwargs in {"main": {}, "three": {"third": "latency_ms"}}.items():
            folder = tmp_path_factory.mktemp(f"study_{key}")
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            build_study(folder, **kwargs)
            files[key] = folder / "study.db"
    return files


def _fresh_copy(files: dict[str, Path], key: str, tmp_path: Path) -> optuna.Study:
    shutil.copyfile(files[key], tmp_path / "study.db")
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/study.db")


@pytest.fixture(scope="session")
def main_data(_study_files: dict[str, Path]):
    """``report_data`` of the main study, computed once (read-only: do not mutate)."""
    from compresstune.search.report import report_data

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{_study_files['main']}")
    return report_data(study, study_dir="runs/my study")


@pytest.fixture(scope="session")
def main_report(main_data, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``report.html`` (with the CSVs) of the main study, written once; returns its path.

    Reuses ``main_data``; ``write_report`` itself is exercised on the other studies.
    """
    from compresstune.search.report._html import _write_files

    return _write_files(main_data, tmp_path_factory.mktemp("report"))


@pytest.fixture
def study(_study_files: dict[str, Path], tmp_path: Path) -> optuna.Study:
    """The main two-objective study, with failed, pruned, rejected, infeasible and stopped
    trials; a private copy in ``tmp_path/study.db``."""
    return _fresh_copy(_study_files, "main", tmp_path)


@pytest.fixture
def study3(_study_files: dict[str, Path], tmp_path: Path) -> optuna.Study:
    """Three objectives: val_accuracy, size_bytes, latency_ms."""
    return _fresh_copy(_study_files, "three", tmp_path)


@pytest.fixture
def kit() -> SimpleNamespace:
    """The builders and hand-computed expectations, for tests (conftest is not importable
    under ``--import-mode=importlib``)."""
    return SimpleNamespace(
        LAYERS=LAYERS,
        FRONT_NUMBERS=FRONT_NUMBERS,
        MAIN_HYPERVOLUME=MAIN_HYPERVOLUME,
        REFERENCE_BYTES=REFERENCE_BYTES,
        build_study=build_study,
        complete_trial=complete_trial,
        writer_constraints=writer_constraints,
        failed_trial=failed_trial,
        params_for=params_for,
        plan_for=plan_for,
        study_attrs=study_attrs,
    )
