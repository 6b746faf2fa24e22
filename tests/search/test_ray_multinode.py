"""A real two-node Ray cluster on this machine, and a driver killed with SIGKILL.

The cluster: ``ray start --head`` and a second ``ray start --address`` from another
working directory, each with one CPU, both started ``--block`` in their own
process group so that teardown stops exactly them (by recorded process id, never
``ray stop``). Token authentication is on, with the token in the environment
(``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN``): every node and the driver need the
same ``RAY_AUTH_MODE`` — a node started without it is refused (InvalidAuthToken),
which one test shows. ``~/.ray`` is neither read nor written.

Ray turns 127.0.0.1 into the host's own interface address for a multi-node
cluster (only ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps loopback, and it
refuses a second node). So the nodes and the driver run inside a network
namespace of their own that holds nothing but ``lo``: there Ray's address *is*
127.0.0.1 and no other address exists to talk to.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

pytest.importorskip("ray.tune", reason="the Ray executor needs ray[tune]")

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
NETNS = f"ctray{os.getpid()}"
IN_NETNS = ["ip", "netns", "exec", NETNS]  # `ip netns exec` execs: the pid is the command's own

USER_PACKAGE = '''\
"""A study package that is not installed: the workers get it through py_modules."""
from torch import nn

from studies.digits import baseline as digits_baseline


class Wrapped(nn.Module):
    """The digits CNN inside a class only this package defines: unpickling the
    trial context on a worker needs this module."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def baseline(data, cache_dir, epochs=3):
    return Wrapped(digits_baseline(data=data, cache_dir=cache_dir, epochs=epochs))
'''


# -- processes we start, and stop by their ids ------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def group_alive(pgid: int) -> list[str]:
    out = subprocess.run(["ps", "-o", "pid=,stat=,args=", "-g", str(pgid)], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if len(line.split()) > 1 and not line.split()[1].startswith("Z")]


def stop(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM a `ray start --block` (it stops its node's processes), then SIGKILL what is left of its group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    deadline = time.monotonic() + 10
    while group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    kill_group(proc.pid)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def wait_for(predicate, timeout: float, what: str, poll: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def cluster_env(token: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TUNE_"))}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1",
               **extra)
    return env


def alive_nodes(address: str, env: dict) -> int:
    probe = ("import ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
             "print(sum(n['Alive'] for n in ray.nodes()))") % address
    done = subprocess.run([*IN_NETNS, sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    return int(done.stdout.split()[-1]) if done.returncode == 0 and done.stdout.split() else 0


class Cluster:
    """A head and a second node, each with one CPU, on a free port with a private temp dir."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.token = secrets.token_hex(32)
        self.env = cluster_env(self.token)
        # Short: Ray's unix socket paths live under it (a limit of 107 bytes).
        self.temp_dir = tempfile.mkdtemp(prefix="ctr", dir="/tmp")
        self.procs: list[subprocess.Popen] = []

    def start_node(self, name: str, args: list[str], env: dict | None = None) -> subprocess.Popen:
        cwd = self.base / name  # every node from its own working directory
        cwd.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen([*IN_NETNS, RAY, "start", *args, "--num-cpus=1", "--disable-usage-stats", "--block"], cwd=cwd,
                                env=env or self.env, stdout=(cwd / "ray.log").open("w"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def start(self) -> "Cluster":
        self.head = self.start_node("head", ["--head", "--node-ip-address=127.0.0.1", f"--port={self.port}",
                                             "--include-dashboard=false", f"--temp-dir={self.temp_dir}"])
        wait_for(lambda: "Ray runtime started" in self.log("head") or self.head.poll() is not None, 120, "the head")
        assert self.head.poll() is None, self.log("head")
        self.node = self.start_node("node2", [f"--address={self.address}"])
        wait_for(lambda: alive_nodes(self.address, self.env) >= 2, 120, "two alive nodes", poll=1)
        return self

    def log(self, name: str) -> str:
        path = self.base / name / "ray.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def raylet(self, proc: subprocess.Popen) -> int:
        return next(p for p in children(proc.pid) if "/raylet" in cmdline(p).split(" ")[0])

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop(proc)
        import shutil

        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def loopback_only_namespace():
    """A network namespace with only ``lo`` up, removed afterwards (needs root and iproute2)."""
    made = subprocess.run(["ip", "netns", "add", NETNS], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace to keep Ray on loopback: {made.stderr.strip()}")
    try:
        subprocess.run([*IN_NETNS, "ip", "link", "set", "lo", "up"], check=True)
        yield NETNS
    finally:
        subprocess.run(["ip", "netns", "delete", NETNS], capture_output=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, loopback_only_namespace):
    c = Cluster(tmp_path_factory.mktemp("nodes"))
    try:
        yield c.start()
    finally:
        c.stop()


def write_project(tmp_path: Path, *, name: str, trials: int, steps: int, model: str) -> Path:
    project = tmp_path / "project"
    (project / "ctt_wrapped").mkdir(parents=True, exist_ok=True)
    (project / "ctt_wrapped" / "__init__.py").write_text(USER_PACKAGE)
    study = project / f"{name}.yaml"
    study.write_text(textwrap.dedent(f"""\
        name: {name}
        model: {{factory: "{model}", kwargs: {{epochs: 3}}}}
        data: {{factory: "studies.digits:data"}}
        space: {{bits: [4, 8, 16, 32], rank_fraction: [0.5, 1.0]}}
        finetune: {{steps: {steps}, batch_size: 64, eval_every: {steps}}}
        constraints: {{max_accuracy_drop: null}}
        search: {{sampler: tpe, trials: {trials}, seed: 0, max_failures: 3}}
        """))
    return study


def load(out: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out}/study.db")


def count(out: Path, state: TrialState, *, with_params: bool = False) -> int:
    """Trials in ``state``; with ``with_params``, only those whose plan is drawn (truly in flight)."""
    import sqlite3

    drawn = " AND EXISTS (SELECT 1 FROM trial_params p WHERE p.trial_id = t.trial_id)" if with_params else ""
    try:
        with sqlite3.connect(f"file:{out}/study.db?mode=ro", uri=True, timeout=5) as db:
            return db.execute(f"SELECT count(*) FROM trials t WHERE state = ?{drawn}", (state.name,)).fetchone()[0]
    except sqlite3.Error:
        return 0


def cli(args: list[str], *, cwd: Path, env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([*IN_NETNS, sys.executable, "-m", "compresstune.cli", *args], cwd=cwd, env=env,
                            stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        raise


# -- the tests ------------------------------------------------------------------------------------------

def test_a_node_without_the_same_auth_mode_is_refused(cluster, tmp_path):
    env = cluster_env(cluster.token, HOME=str(tmp_path / "home"))  # no ~/.ray/auth_token either
    env.pop("RAY_AUTH_MODE")
    env.pop("RAY_AUTH_TOKEN")
    stray = cluster.start_node("stray", [f"--address={cluster.address}"], env=env)
    try:
        wait_for(lambda: "InvalidAuthToken" in cluster.log("stray") or stray.poll() is not None, 60,
                 "the stray node's error")
        assert "InvalidAuthToken" in cluster.log("stray")
    finally:
        stop(stray, grace=5)
    assert alive_nodes(cluster.address, cluster.env) == 2


def test_trials_run_on_both_nodes_and_a_killed_worker_is_retried(cluster, tmp_path):
    study = write_project(tmp_path, name="nodes", trials=6, steps=300, model="ctt_wrapped:baseline")
    driver_dir = tmp_path / "driver"  # neither the project nor the repository: code reaches workers via py_modules
    driver_dir.mkdir()
    out = tmp_path / "out"
    # The driver imports the repository's `studies` package through PYTHONPATH; the nodes were
    # started before, from other folders, without it.
    env = {**cluster.env, "PYTHONPATH": str(REPO)}
    log = tmp_path / "run.log"
    proc = cli(["run", str(study), "--out", str(out), "--address", cluster.address, "--no-progress"],
               cwd=driver_dir, env=env, log=log)
    killed = None
    try:
        # SIGKILL a worker process of the second node while it runs a trial.
        node2_raylet = cluster.raylet(cluster.node)

        def running_worker():
            for pid in children(node2_raylet):
                if cmdline(pid).startswith("ray::ImplicitFunc.train"):
                    return pid
            return None

        victim = wait_for(running_worker, 240, "a trial running on the second node", poll=0.1)
        time.sleep(0.3)  # inside the trial, not at its first instruction
        os.kill(victim, signal.SIGKILL)
        killed = victim
        rc = finish(proc, timeout=400)
    finally:
        if proc.poll() is None:
            kill_group(proc.pid)
    text = log.read_text()
    assert rc == 0, text[-4000:]
    assert "shipping study modules to the workers: ctt_wrapped, studies" in text
    assert "Ray worker died; retrying (1/3)" in text

    trials = load(out, "nodes").get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 6 and not [t for t in trials if t.state == TrialState.RUNNING]
    assert not [t for t in trials if t.state == TrialState.FAIL]  # a dead worker is retried, not failed
    nodes = {t.user_attrs["worker"]["node_id"] for t in complete}
    assert len(nodes) == 2  # both nodes ran trials
    retried = [t for t in complete if t.user_attrs["worker"]["retries"] >= 1]
    assert len(retried) == 1 and retried[0].user_attrs["worker"]["pid"] != killed
    assert killed not in {t.user_attrs["worker"]["pid"] for t in complete}


def test_a_killed_driver_resumes_to_exactly_n_trials(tmp_path):
    """`compresstune run --workers 2`, SIGKILLed after two trials, then run again."""
    study = write_project(tmp_path, name="resume", trials=8, steps=120, model="studies.digits:baseline")
    out = tmp_path / "out"
    env = cluster_env(secrets.token_hex(32), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PYTHONPATH=str(REPO))
    args = ["run", str(study), "--out", str(out), "--workers", "2", "--no-progress"]
    log = tmp_path / "run.log"
    first = cli(args, cwd=tmp_path, env=env, log=log)
    try:
        wait_for(lambda: first.poll() is not None or (count(out, TrialState.COMPLETE) >= 2
                                                      and count(out, TrialState.RUNNING, with_params=True) >= 1),
                 300, "two COMPLETE trials and one running", poll=0.1)
        assert first.poll() is None, log.read_text()[-3000:]
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        kill_group(first.pid)  # the local Ray the driver started: its reaper is slow to notice
    running = count(out, TrialState.RUNNING)
    assert running >= 1

    second = cli(args, cwd=tmp_path, env=env, log=log)
    assert finish(second, timeout=400) == 0, log.read_text()[-3000:]
    kill_group(second.pid)
    text = log.read_text()
    assert "were interrupted by a stopped driver; marked FAIL and queued again" in text

    trials = load(out, "resume").get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 8 and not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    interrupted = [t for t in trials if t.state == TrialState.FAIL]
    assert len(interrupted) == running
    assert all(t.user_attrs["fail_reason"].startswith("interrupted") for t in interrupted)
    # Every interrupted trial ran again exactly once, with the parameters it had drawn (all of them,
    # unless the kill came in the middle of drawing); nothing else repeats.
    requeued = {t.user_attrs["requeued_from"]: t for t in complete if "requeued_from" in t.user_attrs}
    assert sorted(requeued) == sorted(t.number for t in interrupted)
    assert any(t.params for t in interrupted)
    for t in interrupted:
        assert t.params.items() <= requeued[t.number].params.items()
    keys = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(keys)) == len(keys)
    assert [t.number for t in trials] == list(range(len(trials)))
