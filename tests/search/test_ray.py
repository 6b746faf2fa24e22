"""The Ray executor (compresstune.search._ray).

Unit tests drive the worker function and the Tune searcher directly, without a
cluster. The end-to-end tests run ``compresstune run --workers 2`` in a
subprocess, each with its own local Ray bound to 127.0.0.1
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) and token authentication whose token
comes from the environment (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN``), so
nothing is read from or written to ``~/.ray``.
"""

from __future__ import annotations

import os
import pickle
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
from optuna.trial import TrialState
from torch import nn

pytest.importorskip("ray.tune", reason="the Ray executor needs ray[tune]")

from compresstune.search.config import StudyConfig  # noqa: E402
from studies.datasets import load_digits  # noqa: E402
from compresstune.objectives import teacher_outputs  # noqa: E402
from compresstune.tasks import Classification  # noqa: E402
from compresstune.plan import CompressionPlan  # noqa: E402
from compresstune.search import _ray  # noqa: E402
import compresstune.search._ray.cluster  # noqa: E402,F401 - _ray.cluster, _ray.worker below

from compresstune.search._controller import Session, _settings  # noqa: E402
from compresstune.search._storage import SearchError  # noqa: E402
from compresstune.search._trial import TrialContext, TrialOutcome, run_trial  # noqa: E402
from compresstune.spaces import Space  # noqa: E402

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]


# -- a session without Ray --------------------------------------------------------------------

class Flat(nn.Module):
    """A one-layer digits classifier; ``armed`` makes forward raise MemoryError."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)
        self.armed = False

    def forward(self, x):
        if self.armed:
            raise MemoryError("asked for too much")
        return self.fc(x.flatten(1).float())


def make_session(tmp_path: Path, *, trials: int = 3, max_failures: int = 2, address: str | None = None,
                 model: nn.Module | None = None, promotion: dict | None = None) -> Session:
    model = (model or Flat()).eval()
    splits = load_digits()
    config = StudyConfig.from_dict({
        "name": "unit", "model": {"factory": "studies.digits:baseline"}, "data": {"factory": "studies.digits:data"},
        "space": {"bits": [8, 32], "rank_fraction": None},
        "finetune": {"steps": 2, "eval_every": 2, "batch_size": 32},
        "constraints": {"max_accuracy_drop": None, "max_size_bytes": 2000},
        "search": {"trials": trials, "max_failures": max_failures, "out": str(tmp_path), "sampler": "random",
                   "address": address}, "promotion": promotion or {}})
    space = Space.from_config(config.space, model)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    task = Classification.from_splits(splits, batch_size=32)
    context = TrialContext(model=model, task=task, settings=_settings(config, task, 0.5, 64 * 10 * 4 + 40, None),
                           cached_teacher=teacher_outputs(model, task), example=splits.val.x[:1])
    return Session(config=config, out=tmp_path, study=study, space=space, context=context, driver="test:driver",
                   log=lambda msg: None)


def report(searcher: _ray.StudySearcher, trial_id: str, config: dict, metrics: dict) -> None:
    """What Tune does with a trial's result: the collector takes the outcome out of it."""
    tune_trial = SimpleNamespace(trial_id=trial_id, config=config, num_failures=0)
    searcher.tune_trials[trial_id] = tune_trial
    _ray.Collector(searcher, log=lambda m: None).on_trial_result(0, [], tune_trial, metrics)


# -- the worker side -----------------------------------------------------------------------------

def test_a_trial_returns_metrics_outcome_and_worker(tmp_path):
    session = make_session(tmp_path)
    plan = CompressionPlan.uniform(session.context.model, sparsity=0.5, bits=8)
    metrics = _ray.execute({"number": 0, "plan": plan.to_json()}, session.context)
    assert metrics["complete"] is True
    assert metrics["worker"]["pid"] == os.getpid() and metrics["worker"]["seconds"] > 0
    outcome = pickle.loads(metrics["outcome"])
    assert isinstance(outcome, TrialOutcome) and outcome.state == "complete"
    assert isinstance(outcome.artifact, bytes) and len(outcome.artifact) == outcome.user_attrs["size_bytes"]
    assert metrics["val_accuracy"] == outcome.values[0] and metrics["size_bytes"] == outcome.values[1]
    pickle.dumps(metrics)  # what crosses back to the driver pickles: no module, no parametrization


def test_memory_error_and_bad_input_become_fail_outcomes_not_exceptions(tmp_path):
    session = make_session(tmp_path)
    plan = CompressionPlan.uniform(session.context.model, sparsity=0.0, bits=32)
    session.context.model.armed = True
    oom = pickle.loads(_ray.execute({"plan": plan.to_json()}, session.context)["outcome"])
    assert oom.state == "fail" and oom.fail_reason.startswith("MemoryError")
    session.context.model.armed = False
    bad = _ray.execute({"plan": "{not json"}, session.context)
    assert bad["complete"] is False and "val_accuracy" not in bad
    assert pickle.loads(bad["outcome"]).fail_reason.split(":")[0].endswith("Error")


def test_budgets_known_before_training_match_the_local_loop(tmp_path):
    from compresstune.search._budgets import Budgets
    from compresstune.search._trial import run_checked

    session = make_session(tmp_path)
    plan = CompressionPlan.uniform(session.context.model, bits=8)
    budgets = Budgets(max_bops=1.0)  # every plan is over it
    outcome = pickle.loads(_ray.execute({"plan": plan.to_json()}, session.context, budgets=budgets)["outcome"])
    local = run_checked(plan, session.context, budgets=budgets)
    assert outcome.user_attrs["rejected"] == "budget" == local.user_attrs["rejected"]
    assert outcome.constraints == local.constraints and outcome.constraints["max_bops"] > 0
    assert outcome.artifact is None and outcome.values == local.values


def test_a_trial_given_a_gpu_without_cuda_fails_with_the_reason(tmp_path, monkeypatch):
    session = make_session(tmp_path)
    monkeypatch.setattr(_ray.worker, "_gpu_ids", lambda: [0])
    monkeypatch.setattr(_ray.worker.torch.cuda, "is_available", lambda: False)
    plan = CompressionPlan.uniform(session.context.model, bits=8)
    outcome = pickle.loads(_ray.execute({"plan": plan.to_json()}, session.context)["outcome"])
    assert outcome.state == "fail" and "cannot use CUDA" in outcome.fail_reason


def test_the_context_is_unpickled_once_per_worker_process(tmp_path):
    session = make_session(tmp_path)
    shared = _ray._SharedContext(session.context)
    first, second = (pickle.loads(pickle.dumps(shared, protocol=5)) for _ in range(2))
    cpu = torch.device("cpu")
    assert first.get(cpu) is second.get(cpu)  # one deserialisation for every trial of a reused actor
    assert torch.equal(first.get(cpu).cached_teacher, session.context.cached_teacher)
    other = pickle.loads(pickle.dumps(_ray._SharedContext(session.context)))  # protocol 4: bytes in band
    assert other.get(cpu) is not first.get(cpu)


class FakeGate:
    """The gate actor's methods, called in-process (``.remote`` returns the value)."""

    def __init__(self, expected: int) -> None:
        self.expected, self.pids, self.settled = expected, set(), False
        for name in ("arrive", "state", "settle"):
            setattr(self, name, SimpleNamespace(remote=getattr(self, "_" + name)))

    def _arrive(self, node, pid):
        self.pids.add((node, pid))
        return len(self.pids), self.expected

    def _state(self):
        return len(self.pids), self.expected

    def _settle(self):
        self.settled = True
        self.expected = len(self.pids)


def test_the_gate_waits_for_peers_once_per_process_and_settles_on_timeout(monkeypatch):
    monkeypatch.setattr(_ray.ray, "get", lambda value: value)
    gate = FakeGate(expected=2)
    gate.pids.add(("n", 1))  # the other worker is up already
    t0 = time.monotonic()
    _ray._wait_for_peers((gate, "run-a"), {"node_id": "n", "pid": 2}, timeout=5)
    assert time.monotonic() - t0 < 1 and not gate.settled and len(gate.pids) == 2
    gate.expected = 3  # a worker died: its replacement is expected
    t0 = time.monotonic()
    _ray._wait_for_peers((gate, "run-a"), {"node_id": "n", "pid": 2}, timeout=0.3)  # no second arrival
    assert 0.3 <= time.monotonic() - t0 < 2 and gate.settled and gate.expected == 2
    _ray._wait_for_peers(None, {"pid": 2})  # no gate (direct calls): nothing to wait for


# -- the searcher -----------------------------------------------------------------------------------

def test_the_searcher_keeps_exactly_the_requested_number_of_trials(tmp_path):
    session = make_session(tmp_path, trials=2, max_failures=5)
    searcher = _ray.StudySearcher(session)
    a, b = searcher.suggest("a"), searcher.suggest("b")
    assert {a["number"], b["number"]} == {0, 1} and CompressionPlan.from_json(a["plan"])
    assert searcher.suggest("c") is None  # complete + running = target: wait

    report(searcher, "a", a, _ray.execute(a, session.context))
    searcher.on_trial_complete("a", result={})
    report(searcher, "b", b, {"complete": False, "worker": {"pid": 7},
                              "outcome": pickle.dumps(TrialOutcome("fail", fail_reason="ValueError: boom"))})
    searcher.on_trial_complete("b", result={})
    c = searcher.suggest("c")  # a FAIL made room for another trial
    assert c is not None and c["number"] == 2
    report(searcher, "c", c, _ray.execute(c, session.context))
    searcher.on_trial_complete("c", result={})
    assert searcher.suggest("d") == _ray.Searcher.FINISHED

    trials = session.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    done = trials[0]
    assert done.user_attrs["driver"] == "test:driver" and done.user_attrs["worker"]["pid"] == os.getpid()
    assert done.user_attrs["worker"]["retries"] == 0
    assert set(done.constraints) == {"max_size_bytes", "stopped"}  # set_constraint, as the local path does
    if "rejected" not in done.user_attrs:
        assert (tmp_path / done.user_attrs["artifact"]).stat().st_size == done.user_attrs["size_bytes"]
    assert trials[1].user_attrs["fail_reason"] == "ValueError: boom"
    assert searcher.error is None


def test_the_searcher_sends_a_promoted_trial_with_its_longer_fine_tune(tmp_path):
    session = make_session(tmp_path, trials=1, promotion={"enabled": True, "steps": 6})
    session.study.enqueue_trial({"fc:bits": 8})  # a plan within the size budget: on the front
    searcher = _ray.StudySearcher(session)
    a = searcher.suggest("a")
    assert "steps" not in a
    report(searcher, "a", a, _ray.execute(a, session.context))
    searcher.on_trial_complete("a", result={})
    b = searcher.suggest("b")  # the search is done: the promotion round runs
    assert b["steps"] == 6 and b["plan"] == a["plan"]
    assert searcher.suggest("c") is None  # the promotion is in flight: wait, not finished
    report(searcher, "b", b, _ray.execute(b, session.context))
    searcher.on_trial_complete("b", result={})
    assert searcher.suggest("c") == _ray.Searcher.FINISHED
    short, promoted = session.study.get_trials()
    assert short.user_attrs["curve"][-1][0] == 2 and promoted.user_attrs["curve"][-1][0] == 6
    assert promoted.user_attrs["promoted_from"] == short.number and promoted.params == short.params


def test_the_searcher_matches_the_local_loop_for_budget_rejections(tmp_path):
    session = make_session(tmp_path, trials=1)
    searcher = _ray.StudySearcher(session)
    config = searcher.suggest("a")
    plan = CompressionPlan.uniform(session.context.model, bits=32)  # 2,600+ bytes > max_size_bytes 2,000
    config = {**config, "plan": plan.to_json()}
    report(searcher, "a", config, _ray.execute(config, session.context))
    searcher.on_trial_complete("a", result={})
    t = session.study.get_trials()[0]
    expected = run_trial(plan, session.context)
    assert t.state == TrialState.COMPLETE and t.user_attrs["rejected"] == "budget" == expected.user_attrs["rejected"]
    assert t.constraints == expected.constraints and t.constraints["max_size_bytes"] > 0
    assert "artifact" not in t.user_attrs and t.values == expected.values


def test_a_trial_the_scheduler_stops_is_recorded_complete_from_its_rungs(tmp_path):
    from compresstune.search._early_stop import StopRule, rung_result
    from compresstune.search._ray.scheduler import ParetoStopScheduler

    session = make_session(tmp_path, trials=3)
    scheduler = ParetoStopScheduler(rule=StopRule(n_val=len(load_digits().val), final_step=4),
                                    key_of=_ray.optuna_number)
    searcher = _ray.StudySearcher(session, scheduler=scheduler)
    a, b = searcher.suggest("a"), searcher.suggest("b")
    tune_a, tune_b = SimpleNamespace(trial_id="a", config=a), SimpleNamespace(trial_id="b", config=b)
    assert scheduler.on_trial_result(None, tune_a, rung_result(2, 0.95, 500)) == "CONTINUE"
    searcher.on_trial_result("a", rung_result(2, 0.95, 500))
    result = {**rung_result(2, 0.40, 900), "worker/pid": 11, "done": True}  # flattened, as Tune passes it
    assert scheduler.on_trial_result(None, tune_b, result) == "STOP"
    searcher.on_trial_complete("b", result=result)

    t = session.study.get_trials()[b["number"]]
    assert t.state == TrialState.COMPLETE and t.values == [0.40, 900.0]
    assert t.constraints["stopped"] == 1.0 and t.user_attrs["stopped_at_rung"] == 2
    assert t.user_attrs["curve"] == [[2, 0.40]] and t.user_attrs["plan"] == b["plan"]
    assert t.user_attrs["stopped_by"]["by"] == a["number"] and t.user_attrs["worker"] == {"pid": 11, "retries": 0}
    assert t.user_attrs["test_accuracy"] is None and "artifact" not in t.user_attrs
    assert searcher.loop.complete == 1  # it counts toward search.trials: one more trial, then wait
    assert searcher.suggest("c")["number"] == 2 and searcher.suggest("d") is None


def test_rungs_are_reported_to_tune_only_inside_a_tune_trial(tmp_path, monkeypatch):
    session = make_session(tmp_path, trials=1)
    reports = []
    monkeypatch.setattr(_ray.tune, "report", lambda metrics: reports.append(metrics))
    config = {"number": 0, "plan": CompressionPlan.uniform(session.context.model, bits=8).to_json()}
    out = _ray.execute(config, session.context, rungs=True)
    assert [r["rung_step"] for r in reports] == [2] and reports[0]["size_bytes"] == out["size_bytes"]
    assert reports[0]["worker"]["pid"] == os.getpid() and out["complete"]
    reports.clear()
    _ray.execute(config, session.context)
    assert reports == []


def test_too_many_failures_stop_the_search_and_interrupt_the_rest(tmp_path):
    session = make_session(tmp_path, trials=5, max_failures=2)
    searcher = _ray.StudySearcher(session)
    configs = {tid: searcher.suggest(tid) for tid in "abc"}
    searcher.tune_trials["a"] = SimpleNamespace(trial_id="a", num_failures=3, get_error=lambda: (
        "Failure # 1 (occurred at 2026-01-01)\nTraceback (most recent call last):\n  File \"x.py\"\n"
        "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task."))
    searcher.on_trial_complete("a", error=True)  # Tune gave up after its retries
    report(searcher, "b", configs["b"], {"outcome": pickle.dumps(TrialOutcome("fail", fail_reason="NaN")),
                                         "worker": {"pid": 1}, "complete": False})
    searcher.on_trial_complete("b", result={})
    assert isinstance(searcher.error, SearchError) and "2 failed trials" in str(searcher.error)
    assert _ray.StopWhenSearchFails(searcher).stop_all() is True
    assert searcher.suggest("d") == _ray.Searcher.FINISHED
    searcher.on_trial_complete("c", result={})  # stopped by Tune before it reported
    trials = session.study.get_trials()
    reason = trials[0].user_attrs["fail_reason"]
    assert "after 4 attempts" in reason and "ActorDiedError: The actor died" in reason
    assert trials[2].state == TrialState.FAIL and trials[2].user_attrs["fail_reason"].startswith("interrupted")
    assert trials[3].state == TrialState.WAITING and trials[3].user_attrs["requeued_from"] == 2
    assert trials[3].system_attrs["fixed_params"] == trials[2].params


def test_an_interruption_fails_and_requeues_the_trials_in_flight(tmp_path):
    session = make_session(tmp_path, trials=4)
    searcher = _ray.StudySearcher(session)
    first, second = searcher.suggest("a"), searcher.suggest("b")
    report(searcher, "a", first, _ray.execute(first, session.context))
    searcher.on_trial_complete("a", result={})
    assert searcher.interrupt_all(_ray.INTERRUPTED_BY_USER) == [second["number"]]
    states = [t.state for t in session.study.get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    requeued = session.study.get_trials()[2]
    assert requeued.user_attrs["requeued_from"] == 1
    assert requeued.system_attrs["fixed_params"] == session.study.get_trials()[1].params
    assert searcher.suggest("c")["number"] == 2  # the queued parameters run next
    assert session.study.get_trials()[2].params == session.study.get_trials()[1].params

    # A queued trial (a seed) interrupted before its plan was drawn keeps its queued parameters.
    session.study.enqueue_trial({"distill:alpha": 0.25}, user_attrs={"seed_trial": True})
    searcher.live["d"] = session.study.ask()
    searcher.interrupt_all(_ray.INTERRUPTED_BY_USER)
    assert session.study.get_trials()[-1].system_attrs["fixed_params"]["distill:alpha"] == 0.25


def test_an_interrupt_while_a_finished_trial_is_recorded_leaves_nothing_running(tmp_path, monkeypatch):
    session = make_session(tmp_path, trials=2)
    searcher = _ray.StudySearcher(session)
    a = searcher.suggest("a")
    report(searcher, "a", a, _ray.execute(a, session.context))
    monkeypatch.setattr(_ray.searcher.TrialLoop, "record", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt("SIGTERM")))
    with pytest.raises(KeyboardInterrupt):
        searcher.on_trial_complete("a", result={})
    monkeypatch.undo()
    assert searcher.interrupt_all(_ray.INTERRUPTED_BY_USER) == [a["number"]]
    states = [t.state for t in session.study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.WAITING]


def test_searcher_collector_and_stopper_pickle_empty(tmp_path):
    # Tune pickles its config (tuner.pkl); the driver-only objects must not drag the session along.
    searcher = _ray.StudySearcher(make_session(tmp_path))
    for obj in (searcher, _ray.Collector(searcher, print), _ray.StopWhenSearchFails(searcher)):
        assert len(pickle.dumps(obj)) < 2000


# -- connecting ------------------------------------------------------------------------------------

def test_study_modules_ship_what_is_not_installed(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    import studies  # noqa: F401 - the repository's study package, not installed

    session = make_session(tmp_path)
    assert [m.__name__ for m in _ray.study_modules(session)] == ["studies"]  # not torch, not compresstune
    env = _ray.runtime_env_for(session)
    assert env["py_modules"][0].__name__ == "studies" and "__pycache__/" in env["excludes"]
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", '{"runtime_env": {"working_dir": "gcs://_ray_pkg_x.zip"}}')
    assert _ray.runtime_env_for(session) == {}  # `ray job submit --working-dir` already ships the code


def test_ray_client_addresses_are_refused_with_the_alternative(tmp_path):
    session = make_session(tmp_path, address="ray://10.0.0.1:10001")
    with pytest.raises(SearchError, match="ray job submit"):
        _ray.run_ray(session, progress=False)


def test_local_addresses_are_recognised():
    assert _ray._is_local_address("127.0.0.1:6379") and _ray._is_local_address("localhost:1")
    assert not _ray._is_local_address("10.1.2.3:6379")


def test_concurrency_follows_workers_or_the_cluster():
    res = SimpleNamespace(cpus_per_trial=0.5, gpus_per_trial=0.0)
    assert _ray.cluster._concurrency(3, res, {"CPU": 64}) == 3
    assert _ray.cluster._concurrency(0, res, {"CPU": 4}) == 8
    gpu = SimpleNamespace(cpus_per_trial=1, gpus_per_trial=0.5)
    assert _ray.cluster._concurrency(0, gpu, {"CPU": 16, "GPU": 2}) == 4
    with pytest.raises(SearchError, match="GPU"):
        _ray.cluster._check_resources({"CPU": 2}, gpu, local=True)


# -- end to end: `compresstune run --workers 2` -----------------------------------------------------

def ray_env(**extra: str) -> dict:
    """A private, loopback-only Ray with token authentication taken from the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TUNE_"))}
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
               RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1", **extra)
    return env


def start_cli(args: list[str], *, cwd: Path, env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "compresstune.cli", *args], cwd=cwd, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float) -> int:
    """Wait for the command; on a timeout kill its process group (its own Ray included)."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        raise


def kill_group(pgid: int) -> None:
    with __import__("contextlib").suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def group_alive(pgid: int) -> list[str]:
    out = subprocess.run(["ps", "-o", "pid=,stat=,args=", "-g", str(pgid)], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.split()[1:2] and not line.split()[1].startswith("Z")]


def wait_group_gone(pgid: int, timeout: float) -> list[str]:
    """Processes of the group still alive after ``timeout`` seconds (then killed)."""
    deadline = time.monotonic() + timeout
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.5)
    leftover = group_alive(pgid)
    kill_group(pgid)
    return leftover


def load(out: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out}/study.db")


def write_study(path: Path, name: str, *, trials: int, steps: int = 20, model: str = "studies.digits:baseline",
                data: str = "studies.digits:data", model_kwargs: str = "{epochs: 3}", extra: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(f"""\
        name: {name}
        model: {{factory: "{model}", kwargs: {model_kwargs}}}
        data: {{factory: "{data}"}}
        space: {{bits: [4, 8, 16, 32], rank_fraction: [0.5, 1.0]}}
        finetune: {{steps: {steps}, batch_size: 64, eval_every: {steps}}}
        search: {{sampler: tpe, trials: {trials}, seed: 0, max_failures: 3}}
        """) + extra)
    return path


def test_workers_run_exactly_n_trials_recorded_like_the_local_loop(tmp_path, monkeypatch):
    """6 trials on 2 Ray workers; the same study in-process for 2; the records agree."""
    monkeypatch.syspath_prepend(str(REPO))
    study_file = write_study(tmp_path / "digits_ray.yaml", "digits_ray", trials=6,
                             extra="constraints: {max_accuracy_drop: 0.05, max_size_bytes: 16000}\n")
    out = tmp_path / "out"
    t0 = time.perf_counter()
    proc = start_cli(["run", str(study_file), "--out", str(out), "--workers", "2", "--no-progress"], cwd=REPO,
                     env=ray_env(), log=tmp_path / "run.log")
    rc = finish(proc, timeout=400)
    log = (tmp_path / "run.log").read_text()
    assert rc == 0, log[-3000:]
    print(f"ray run: {time.perf_counter() - t0:.1f} s")
    assert "shipping study modules to the workers: studies" in log and "a local Ray with 2 CPUs" in log
    assert not wait_group_gone(proc.pid, 60)  # ray.shutdown stopped the local Ray it started

    study = load(out, "digits_ray")
    trials = study.get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 6
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    pids = {t.user_attrs["worker"]["pid"] for t in trials}
    assert 2 <= len(pids) < 6 and proc.pid not in pids  # in parallel, on reused actors
    assert len({t.user_attrs["worker"]["node_id"] for t in trials}) == 1
    for t in trials:
        assert t.user_attrs["driver"].endswith(str(out))
        if t.user_attrs.get("rejected") == "budget":
            assert "artifact" not in t.user_attrs and t.constraints["max_size_bytes"] > 0
        else:
            assert (out / t.user_attrs["artifact"]).stat().st_size == t.user_attrs["size_bytes"]

    # The same study through the in-process loop: where a trial got the same plan (the
    # queued seeds and the sampler's first draws), the same values, constraints and attributes.
    from compresstune.search.config import load_config
    from compresstune.search import run

    config = load_config(study_file, out=str(tmp_path / "local"))
    local, _ = run(config, progress=False, log=lambda m: None)
    assert study.user_attrs["fingerprint"] == local.user_attrs["fingerprint"]
    same = [(ref, trials[ref.number]) for ref in local.get_trials(states=(TrialState.COMPLETE,))
            if trials[ref.number].params == ref.params]
    assert len(same) >= 2
    for ref, t in same:
        assert t.values[1] == ref.values[1] and t.values[0] == pytest.approx(ref.values[0], abs=0.02)
        assert t.constraints.keys() == ref.constraints.keys()
        assert set(t.user_attrs) - {"worker"} == set(ref.user_attrs) - {"worker"}

    # report and status read the study as they do any other.
    for command in (["status", str(out)], ["report", str(out)]):
        done = subprocess.run([sys.executable, "-m", "compresstune.cli", *command], cwd=REPO, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    assert (out / "report.html").exists() and (out / "trials.csv").read_text().count("\n") >= 7


GREEDY = '''\
"""A study package that is not installed: the workers get it through py_modules.

GreedyNet behaves on the driver; in any other process its forward caps its own
address space (RLIMIT_AS) a little above what it uses and asks for 4 GiB more."""
import os
import resource

import torch
from torch import nn

from compresstune.data import Split, Splits


class GreedyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)
        self.driver_pid = os.getpid()

    def forward(self, x):
        if os.getpid() != self.driver_pid:
            allocate_past_a_cap()
        return self.fc(x.flatten(1).float())


def vm_bytes():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))


def allocate_past_a_cap():
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + (256 << 20), hard))
    try:
        bytearray(4 << 30)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def model(data):
    return GreedyNet()


def data():
    gen = torch.Generator().manual_seed(0)

    def part(n):
        return Split(torch.rand(n, 1, 8, 8, generator=gen), torch.randint(0, 10, (n,), generator=gen))

    return Splits(part(200), part(60), part(60), 10, "random-digits")
'''


def test_a_trial_out_of_memory_is_a_fail_with_its_reason_and_failures_stop_the_search(tmp_path):
    project = tmp_path / "project"
    (project / "ctt_greedy").mkdir(parents=True)
    (project / "ctt_greedy" / "__init__.py").write_text(GREEDY)
    study_file = write_study(project / "greedy.yaml", "greedy", trials=3, model="ctt_greedy:model",
                             data="ctt_greedy:data", model_kwargs="{}")
    study_file.write_text(study_file.read_text().replace("max_failures: 3", "max_failures: 2"))
    run_dir = tmp_path / "elsewhere"  # not the study's folder: workers can only import ctt_greedy via py_modules
    run_dir.mkdir()
    out = tmp_path / "out"
    proc = start_cli(["run", str(study_file), "--out", str(out), "--workers", "2", "--no-progress"], cwd=run_dir,
                     env=ray_env(), log=tmp_path / "run.log")
    rc = finish(proc, timeout=300)
    log = (tmp_path / "run.log").read_text()
    assert rc == 2 and "stopped after 2 failed trials" in log and "MemoryError" in log, log[-3000:]
    assert "shipping study modules to the workers: ctt_greedy" in log

    trials = load(out, "greedy").get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL
              and not t.user_attrs["fail_reason"].startswith("interrupted")]
    assert len(failed) == 2
    for t in failed:
        assert t.user_attrs["fail_reason"].startswith("MemoryError")
        assert t.user_attrs["worker"]["pid"] != proc.pid and t.user_attrs["worker"]["retries"] == 0
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    interrupted = [t for t in trials if t.user_attrs.get("fail_reason", "").startswith("interrupted")]
    waiting = [t for t in trials if t.state == TrialState.WAITING and "requeued_from" in t.user_attrs]
    assert sorted(t.user_attrs["requeued_from"] for t in waiting) == sorted(t.number for t in interrupted)


def test_sigterm_interrupts_like_ctrl_c_and_stops_the_local_ray(tmp_path):
    study_file = write_study(tmp_path / "term.yaml", "term", trials=10, steps=150)
    out = tmp_path / "out"
    proc = start_cli(["run", str(study_file), "--out", str(out), "--workers", "2", "--no-progress"], cwd=REPO,
                     env=ray_env(), log=tmp_path / "run.log")
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "study.db").exists() and _count(out, "term", TrialState.COMPLETE) >= 1 \
                    and _count(out, "term", TrialState.RUNNING) >= 1:
                break
            time.sleep(0.2)
        assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        rc = finish(proc, timeout=120)
    finally:
        kill_group(proc.pid) if proc.poll() is None else None
    log = (tmp_path / "run.log").read_text()
    assert rc == 130 and "interrupted; nothing is left RUNNING" in log, log[-3000:]
    leftover = wait_group_gone(proc.pid, 60)  # ray.shutdown stopped the local Ray: nothing outlives the driver
    assert not leftover, leftover

    trials = load(out, "term").get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    interrupted = [t for t in trials if t.state == TrialState.FAIL]
    assert interrupted and all(t.user_attrs["fail_reason"] == _ray.INTERRUPTED_BY_USER for t in interrupted)
    waiting = {t.user_attrs["requeued_from"]: t for t in trials
               if t.state == TrialState.WAITING and "requeued_from" in t.user_attrs}
    assert sorted(waiting) == [t.number for t in interrupted]
    for t in interrupted:  # queued again with what it had drawn (plus what it was queued with, for a seed)
        assert t.params.items() <= waiting[t.number].system_attrs["fixed_params"].items()


def _count(out: Path, name: str, state: TrialState) -> int:
    import sqlite3

    try:
        with sqlite3.connect(f"file:{out}/study.db?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT count(*) FROM trials WHERE state = ?", (state.name,)).fetchone()[0]
    except sqlite3.Error:
        return 0


def test_onnx_objectives_and_budgets_run_on_ray_workers_as_in_process(tmp_path, monkeypatch):
    """``onnx_size`` as the third objective and ``max_onnx_bytes`` as a budget, on 2 Ray workers: each
    worker exports the plan, records its bytes and latency, and rejects an over-budget plan before
    training; a trial with the same plan in-process records the same file size."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    monkeypatch.syspath_prepend(str(REPO))
    study_file = write_study(tmp_path / "onnx_ray.yaml", "onnx_ray", trials=4, steps=5,
                             extra="objectives: [accuracy, size, onnx_size]\n"
                                   "constraints: {max_accuracy_drop: 0.5, max_onnx_bytes: 60000}\n"
                                   "sensitivity: {enabled: false}\n")
    out = tmp_path / "out"
    proc = start_cli(["run", str(study_file), "--out", str(out), "--workers", "2", "--no-progress"], cwd=REPO,
                     env=ray_env(), log=tmp_path / "run.log")
    rc = finish(proc, timeout=400)
    log = (tmp_path / "run.log").read_text()
    assert rc == 0, log[-3000:]
    study = load(out, "onnx_ray")
    assert study.metric_names == ["val_accuracy", "size_bytes", "onnx_bytes"]
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 4 and proc.pid not in {t.user_attrs["worker"]["pid"] for t in trials}
    for t in trials:
        assert t.values[2] == t.user_attrs["onnx_bytes"] > 0 and t.user_attrs["onnx_latency_ms"] > 0
        over = t.user_attrs["onnx_bytes"] > 60000
        assert (t.constraints["max_onnx_bytes"] > 0) == over
        assert (t.user_attrs.get("rejected") == "budget") == over
    assert "onnx_bytes" in log  # the front table shows the third objective

    from compresstune.search.config import load_config
    from compresstune.search import run

    local, _ = run(load_config(study_file, out=str(tmp_path / "local"), trials=1), progress=False,
                   log=lambda m: None)
    ref = local.get_trials(states=(TrialState.COMPLETE,))[0]
    same = [t for t in trials if t.params == ref.params]  # the sampler's first draw, on a worker too
    assert same and same[0].user_attrs["onnx_bytes"] == ref.user_attrs["onnx_bytes"]
