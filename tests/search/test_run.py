"""End-to-end runs of the controller on the real digits data with tiny budgets:
resume, failures, interrupts (Ctrl-C, SIGTERM, SIGKILL), config changes, export,
status and Optuna's own CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState

import compresstune as ct
from compresstune.cli import main
from compresstune.search.config import load_config
from compresstune.search import SearchError, export_trial, load_study, run, status_text

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

FLAKY = '''
"""Test-only study module: trial k of the process fails in a chosen way while fine-tuning."""
import os
import re
import torch
from studies import digits

MODES = os.environ.get("FLAKY_MODES", "").split(",")
_seen = []


class Flaky(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        if self.training:
            if id(self) not in _seen:
                _seen.append(id(self))
            mode = MODES[_seen.index(id(self))] if _seen.index(id(self)) < len(MODES) else ""
            if mode == "raise":
                raise RuntimeError("boom from the test model")
            if mode == "nan":
                return self.inner(x) * float("nan")
        return self.inner(x)


def data():
    return digits.data()


def baseline(*, data, cache_dir):
    return Flaky(digits.baseline(data=data, cache_dir=cache_dir))
'''


def write_study(folder: Path, *, trials: int = 4, steps: int = 10, module: str = "studies.digits",
                extra: str = "", name: str = "tiny") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: {name}
        model: {{factory: "{module}:baseline"}}
        data: {{factory: "{module}:data"}}
        space:
          sparsity: {{low: 0.0, high: 0.9}}
          bits: [4, 8, 32]
          rank_fraction: [0.5, 1.0]
        finetune: {{steps: {steps}, batch_size: 32, eval_every: 5}}
        constraints: {{max_accuracy_drop: 0.05}}
        search: {{trials: {trials}, seed: 1, out: "{folder / 'out'}"}}
        """) + extra)
    return path


def cli(*args: str, cwd: Path = ROOT, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "compresstune.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600, **kw)


def states(out: Path) -> dict[str, int]:
    study = load_study(out)
    trials = study.get_trials(deepcopy=False)
    return {s.name: sum(t.state == s for t in trials) for s in TrialState}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One real study of 5 trials, shared by the read-only tests below."""
    folder = tmp_path_factory.mktemp("finished")
    study_file = write_study(folder, trials=5)
    cfg = load_config(study_file)
    study, front = run(cfg, progress=False, study_file=str(study_file), log=lambda m: None)
    return folder / "out"


def test_run_records_everything_a_trial_needs(finished: Path) -> None:
    study = load_study(finished)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 5
    assert study.metric_names == ["val_accuracy", "size_bytes"]
    assert study.user_attrs["reference_point"]["val_accuracy"] == pytest.approx(
        study.user_attrs["baseline"]["val_accuracy"] - 0.05)
    for t in done:
        attrs = t.user_attrs
        plan = ct.CompressionPlan.from_json(attrs["plan"])
        assert set(plan.layers) <= set(study.user_attrs["layers"])
        assert attrs["size_bytes"] == t.values[1]
        assert attrs["val_accuracy"] == t.values[0]
        assert 0 <= attrs["test_accuracy"] <= 1
        assert attrs["curve"] and attrs["curve"][-1][0] == 10
        assert set(attrs["timings"]) == {"apply_s", "finetune_s", "eval_s", "total_s"}
        assert set(t.constraints) == {"accuracy_drop", "stopped"}
        artifact = finished / attrs["artifact"]
        assert os.path.getsize(artifact) == attrs["size_bytes"]
    assert (finished / "report.html").exists() and (finished / "trials.csv").exists()


def test_best_trials_are_feasible_and_match_the_front(finished: Path) -> None:
    study = load_study(finished)
    from compresstune.search.pareto import front

    best = {t.number for t in study.best_trials}
    assert best == set(front(study)["number"])
    assert all(all(v <= 0 for v in t.constraints.values()) for t in study.best_trials)


def test_optuna_cli_lists_the_same_pareto_set(finished: Path) -> None:
    pointer = json.loads((finished / "study.json").read_text())
    optuna_cli = Path(PYTHON).with_name("optuna")
    res = subprocess.run([str(optuna_cli), "best-trials", "--study-name", pointer["study_name"], "--storage",
                          pointer["storage"], "-f", "json"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    listed = {row["number"] for row in json.loads(res.stdout)}
    assert listed == {t.number for t in load_study(finished).best_trials}


def test_status_prints_progress_front_and_the_optuna_command(finished: Path, capsys) -> None:
    assert main(["status", str(finished)]) == 0
    text = capsys.readouterr().out
    assert "5 complete of 5" in text
    assert "optuna best-trials --study-name tiny --storage sqlite:///" in text


def test_export_copies_checks_and_squashes(finished: Path, tmp_path: Path) -> None:
    study = load_study(finished)
    number = study.best_trials[0].number
    target, plain = tmp_path / "t.ctz", tmp_path / "t.pt"
    summary = export_trial(finished, number, target, squash_to=plain)
    assert "reproduces val accuracy" in summary
    assert target.read_bytes() == (finished / study.trials[number].user_attrs["artifact"]).read_bytes()
    module = torch.load(plain, weights_only=False)
    assert not any("parametriz" in type(m).__name__.lower() for m in module.modules())


def test_export_refuses_a_trial_without_artifact(finished: Path, tmp_path: Path) -> None:
    with pytest.raises(SearchError, match="trial number in 0..4"):
        export_trial(finished, 99, tmp_path / "x.ctz")


def test_rerun_resumes_without_new_trials_and_extends_with_more(finished: Path, tmp_path: Path) -> None:
    cfg = load_config(finished.parent / "tiny.yaml")
    run(cfg, progress=False, log=lambda m: None)
    assert states(finished)["COMPLETE"] == 5
    run(cfg.with_search(trials=6), progress=False, log=lambda m: None)
    assert states(finished)["COMPLETE"] == 6
    # `status` counts against the latest run's own target (--trials 6), not the study file's 5.
    assert "trials: 6 complete of 6" in status_text(load_study(finished), finished)


def test_changed_config_is_refused_with_the_difference_then_new_study(tmp_path: Path) -> None:
    study_file = write_study(tmp_path, trials=1, steps=5)
    run(load_config(study_file), progress=False, log=lambda m: None)
    changed = write_study(tmp_path, trials=1, steps=7)
    with pytest.raises(ValueError, match=r"finetune.steps: 5 -> 7"):
        run(load_config(changed), progress=False, log=lambda m: None)
    study, _ = run(load_config(changed), new_study=True, progress=False, log=lambda m: None)
    assert study.study_name == "tiny-2"
    assert json.loads((tmp_path / "out" / "study.json").read_text())["study_name"] == "tiny-2"


def test_exceptions_and_nan_fail_the_trial_and_the_search_goes_on(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "flaky_study_a.py").write_text(FLAKY)
    monkeypatch.setenv("FLAKY_MODES", "raise,nan")
    study_file = write_study(tmp_path, trials=2, module="flaky_study_a")
    study, _ = run(load_config(study_file), progress=False, log=lambda m: None)
    trials = study.get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [0, 1]
    assert "RuntimeError: boom from the test model" in failed[0].user_attrs["fail_reason"]
    assert "NonFiniteLoss" in failed[1].user_attrs["fail_reason"]
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2


def test_too_many_failures_stops_with_the_last_reason(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "flaky_study_b.py").write_text(FLAKY)
    monkeypatch.setenv("FLAKY_MODES", "raise,raise,raise")
    study_file = write_study(tmp_path, trials=3, module="flaky_study_b", extra="")
    cfg = load_config(study_file).with_search(max_failures=2)
    with pytest.raises(SearchError, match="stopped after 2 failed trials.*boom"):
        run(cfg, progress=False, log=lambda m: None)
    assert states(tmp_path / "out")["RUNNING"] == 0


def test_a_config_typo_fails_fast_with_did_you_mean(tmp_path: Path) -> None:
    study_file = write_study(tmp_path, extra="finetun: {steps: 3}\n")
    res = cli("run", str(study_file))
    assert res.returncode == 2
    assert "finetun" in res.stderr and "finetune" in res.stderr
    assert not (tmp_path / "out").exists()


def test_a_selector_matching_nothing_is_an_error(tmp_path: Path) -> None:
    study_file = write_study(tmp_path, extra="")
    text = study_file.read_text().replace("space:\n", "space:\n  include: [\"fc9*\"]\n")
    study_file.write_text(text)
    res = cli("run", str(study_file))
    assert res.returncode == 2
    assert "fc9*" in res.stderr


def _wait_for_complete(out: Path, n: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.stderr.read()}")
        try:
            if (out / "study.json").exists() and states(out)["COMPLETE"] >= n:
                return
        except Exception:  # noqa: BLE001 - the storage may be mid-creation
            pass
        time.sleep(0.3)
    raise AssertionError("timed out waiting for trials")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 130), (signal.SIGKILL, -9)])
def test_interrupt_then_resume_finishes_exactly_the_requested_count(tmp_path: Path, sig, code) -> None:
    study_file = write_study(tmp_path, trials=4, steps=60)
    out = tmp_path / "out"
    proc = subprocess.Popen([PYTHON, "-m", "compresstune.cli", "run", str(study_file), "--no-progress"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_complete(out, 1, proc)
    time.sleep(0.3)  # land inside the next trial
    proc.send_signal(sig)
    proc.wait(timeout=120)
    assert proc.returncode == code
    before = states(out)
    if sig != signal.SIGKILL:
        assert before["RUNNING"] == 0  # a clean stop leaves nothing RUNNING
    res = cli("run", str(study_file), "--no-progress")
    assert res.returncode == 0, res.stderr
    after = load_study(out).get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in after) == 4
    assert not any(t.state == TrialState.RUNNING for t in after)
    interrupted = [t for t in after if t.state == TrialState.FAIL]
    assert all(t.user_attrs["fail_reason"].startswith("interrupted") for t in interrupted)
    for t in interrupted:  # its parameters (drawn, or queued for it) were queued again and ran to completion
        wanted = {**t.system_attrs.get("fixed_params", {}), **t.params}
        assert wanted, "an interrupted trial must carry the parameters to retry"
        assert any(u.params == wanted and u.state == TrialState.COMPLETE for u in after if u.number > t.number)


def test_a_second_driver_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    study_file = write_study(tmp_path, trials=200, steps=60)  # far more than it will run before the kill
    out = tmp_path / "out"
    proc = subprocess.Popen([PYTHON, "-m", "compresstune.cli", "run", str(study_file), "--no-progress"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_complete(out, 1, proc)
        res = cli("run", str(study_file))
        assert res.returncode == 2
        assert "another compresstune run is using" in res.stderr
    finally:
        proc.kill()
        proc.wait()


def test_a_redirected_run_logs_one_line_per_trial(tmp_path: Path) -> None:
    study_file = write_study(tmp_path, trials=3, steps=4)
    res = cli("run", str(study_file))  # stderr is a pipe here, not a terminal: no bar frames
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stderr.splitlines() if re.match(r"^trial \d+ (COMPLETE|FAIL)", line)]
    assert len(lines) == 3 and all("val accuracy" in line and "complete, front" in line for line in lines), res.stderr
    assert "\r" not in res.stderr
    assert any(line.startswith("seed trials") or line.startswith("baseline") for line in res.stderr.splitlines())


def test_discover_prints_the_layer_table_of_a_study(tmp_path: Path) -> None:
    study_file = write_study(tmp_path, trials=1)
    res = cli("discover", str(study_file))
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0].split() == ["layer", "kind", "shape", "operators", "group", "refused"]
    assert any(line.split()[:2] == ["fc2", "linear"] for line in res.stdout.splitlines())


def test_finetune_continues_a_trial_and_reports_before_and_after(finished: Path, tmp_path: Path) -> None:
    from compresstune.search import finetune_trial

    study = load_study(finished)
    t = study.best_trials[0]
    target = tmp_path / "longer.ctz"
    summary = finetune_trial(finished, t.number, target, steps=20, log=lambda m: None)
    before = f"val accuracy: {t.user_attrs['val_accuracy']:.4f} -> "
    assert before in summary and "test accuracy: " in summary, summary
    assert target.stat().st_size == t.user_attrs["size_bytes"]  # same plan, same bytes
    assert load_study(finished).trials[t.number].user_attrs == t.user_attrs  # the study is only read
    res = cli("finetune", str(finished), "--trial", str(t.number), "--epochs", "0.5", "--output", str(tmp_path / "e.ctz"))
    assert res.returncode == 0 and "val accuracy: " in res.stdout, res.stderr
    bad = cli("finetune", str(finished), "--trial", str(t.number), "--steps", "0", "--output", str(tmp_path / "z.ctz"))
    assert bad.returncode == 2 and "`steps` must be an integer >= 1; got 0" in bad.stderr
