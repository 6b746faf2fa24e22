"""The Python route: ``compresstune.search.run(model, task, ...)`` with a user's own task
(dict batches, a minimised metric), in-process and on Ray, and the command line on its
output folder afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from optuna.study import StudyDirection
from optuna.trial import TrialState

import compresstune as ct
from compresstune.errors import ConfigError, TaskError
from tests._tasks import DigitsNLL, digits_mlp

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = dict(space={"bits": [4, 8, 32], "rank_fraction": None, "sparsity": {"low": 0.0, "high": 0.8}},
                finetune={"steps": 12, "eval_every": 6, "lr": 0.005},
                constraints={"max_relative_drop": 0.5}, sensitivity={"enabled": False}, sampler="random", seed=0,
                progress=False)


@pytest.fixture(scope="module")
def task_and_model():
    task = DigitsNLL()
    return task, digits_mlp(task)


def cli(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the task's module must be importable, as a user's own is
    proc = subprocess.run([sys.executable, "-m", "compresstune.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def check_study(study, out: Path, trials: int) -> None:
    assert study.directions == [StudyDirection.MINIMIZE, StudyDirection.MINIMIZE]
    assert study.metric_names == ["val_nll", "size_bytes"]
    assert study.user_attrs["metric"] == {"name": "nll", "direction": "minimize", "task": "tests._tasks:DigitsNLL"}
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == trials, [(t.state, t.user_attrs.get("fail_reason")) for t in study.trials]
    base = study.user_attrs["baseline"]["val_accuracy"]
    assert 0.05 < base < 1.0  # the trained MLP's NLL, not an accuracy
    for t in done:
        assert t.values[0] == t.user_attrs["val_accuracy"] > 0 and t.user_attrs["test_accuracy"] > 0
        assert set(t.constraints) == {"metric_drop", "stopped"}
        # A drop of a minimised metric is a rise: the constraint is value - baseline - max drop (50 % of it here).
        assert t.constraints["metric_drop"] == pytest.approx(t.values[0] - base - 0.5 * base)
    ref = study.user_attrs["reference_point"]["val_accuracy"]
    assert ref == pytest.approx(base * 1.5)
    assert (out / "model.pt").exists() and (out / "task.pt").exists()


def test_a_custom_task_runs_in_process_and_the_cli_speaks_its_metric(task_and_model, tmp_path):
    task, model = task_and_model
    out = tmp_path / "mine"
    study, front = ct.search.run(model, task, trials=4, out=str(out), log=lambda m: None, **SETTINGS)
    check_study(study, out, 4)
    assert len(front) >= 1
    status = cli("status", str(out))
    assert "val_nll" in status and "metric: nll (lower is better)" in status and "val_accuracy" not in status
    cli("report", str(out))
    assert "val_nll" in (out / "trials.csv").read_text().splitlines()[0]
    from compresstune.search.pareto import hypervolume_series, reference_point, study_hypervolume

    series = hypervolume_series(pd.read_csv(out / "trials.csv"), reference_point(study), direction="minimize")
    assert series["hypervolume"].iloc[-1] == pytest.approx(study_hypervolume(study)) and study_hypervolume(study) > 0
    number = int(front["number"].iloc[0])
    exported = cli("export", str(out), "--trial", str(number), "--output", str(tmp_path / "small.ctz"))
    assert "checked: reloads and reproduces val nll" in exported, exported
    assert (tmp_path / "small.ctz").stat().st_size == front["size_bytes"].iloc[0]


@pytest.mark.ray
def test_a_custom_task_runs_on_ray_with_two_workers(task_and_model, tmp_path):
    import ray

    task, model = task_and_model
    out = tmp_path / "mine-ray"
    try:
        study, _ = ct.search.run(model, task, trials=4, out=str(out), workers=2, log=lambda m: None, **SETTINGS)
    finally:
        ray.shutdown()
    check_study(study, out, 4)
    hosts = {t.user_attrs["worker"]["pid"] for t in study.trials}
    assert os.getpid() not in hosts  # the trials ran in Ray's worker processes


def test_bad_input_fails_before_any_compute(task_and_model, tmp_path):
    task, model = task_and_model
    with pytest.raises(TaskError, match="must be a compresstune.Task"):
        ct.search.run(model, "digits", out=str(tmp_path / "a"))
    with pytest.raises(TaskError, match="must be a torch.nn.Module; got dict"):
        ct.search.run({"not": "a model"}, task, out=str(tmp_path / "b"))
    with pytest.raises(ConfigError, match=r"`finetune.steps`"):
        ct.search.run(model, task, finetune={"steps": -1}, out=str(tmp_path / "c"))
    with pytest.raises(ConfigError, match=r"early_stopping.enabled.*binomial"):
        ct.search.run(model, task, early_stopping={"enabled": True}, out=str(tmp_path / "d"), log=lambda m: None)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_a_study_file_names_a_task_factory(tmp_path):
    study = tmp_path / "nll.yaml"
    study.write_text(f"""
model: {{factory: "tests._tasks:digits_mlp", kwargs: {{steps: 60}}}}
task: {{factory: "tests._tasks:DigitsNLL", kwargs: {{batch_size: 64}}}}
space: {{bits: [4, 8], rank_fraction: null}}
finetune: {{steps: 6, eval_every: 3}}
constraints: {{max_relative_drop: 0.5}}
sensitivity: {{enabled: false}}
search: {{trials: 2, sampler: random, out: "{tmp_path / 'out'}"}}
""")
    printed = cli("run", str(study), "--no-progress")
    assert "val_nll" in printed and "test_nll" in printed, printed
    study = ct.search.load_study(tmp_path / "out")
    assert study.user_attrs["metric"]["name"] == "nll" and not (tmp_path / "out" / "model.pt").exists()


def test_a_cuda_device_without_cuda_is_refused_before_the_baseline(task_and_model, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    task, model = task_and_model
    with pytest.raises(ConfigError, match=r"`resources.device` must be 'auto' or 'cpu' here: 'cuda' was asked for"):
        ct.search.run(model, task, resources={"device": "cuda"}, out=str(tmp_path / "gpu"), log=lambda m: None)


def test_resuming_with_another_metric_is_refused(task_and_model, tmp_path):
    from compresstune.tasks import Classification

    task, model = task_and_model
    settings = {**SETTINGS, "finetune": {"steps": 2, "eval_every": 2}}
    ct.search.run(model, task, trials=1, out=str(tmp_path / "o"), log=lambda m: None, **settings)
    x, y = task.parts["val"]
    accuracy = Classification((x, y), (x, y))
    with pytest.raises(ConfigError, match=r"already exists for the metric 'nll' \(minimize\); this task's is 'accuracy'"):
        ct.search.run(model, accuracy, trials=1, out=str(tmp_path / "o"), log=lambda m: None, **settings)


def test_export_of_an_infeasible_trial_needs_force(task_and_model, tmp_path):
    from compresstune.search import SearchError, export_trial

    task, model = task_and_model
    settings = {**SETTINGS, "space": {"bits": 2, "sparsity": 0.9, "rank_fraction": None},
                "constraints": {"max_metric_drop": 0.0}, "finetune": {"steps": 2, "eval_every": 2}}
    study, _ = ct.search.run(model, task, trials=1, out=str(tmp_path / "o"), log=lambda m: None, **settings)
    trial = study.trials[0]
    assert trial.constraints["metric_drop"] > 0 and "artifact" in trial.user_attrs  # fine-tuned, then infeasible
    with pytest.raises(SearchError, match=r"trial 0 is infeasible: it breaks metric_drop by .*--force"):
        export_trial(tmp_path / "o", 0, tmp_path / "x.ctz")
    assert not (tmp_path / "x.ctz").exists()
    summary = export_trial(tmp_path / "o", 0, tmp_path / "x.ctz", force=True)
    assert "warning: infeasible, exported with --force: breaks metric_drop" in summary and (tmp_path / "x.ctz").exists()
