"""A study in PostgreSQL: a real server started here (Debian's package), one short
run with ``--storage postgresql+psycopg2://...``, and ``report`` / ``status`` /
``optuna best-trials`` reading it back.

The server runs as the ``postgres`` user (initdb refuses root) on 127.0.0.1 and a
free port, in a private data folder, and is stopped afterwards. The test installs
``postgresql`` with apt-get when it is missing and it runs as root (``make
services`` does the same); it is skipped, saying why, only when that is impossible.
"""

from __future__ import annotations

import glob
import os
import shutil
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

REPO = Path(__file__).resolve().parents[2]
USER = "postgres"


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    return Path(found[-1]).parent if found else None


def _install_postgres() -> str | None:
    """Install Debian's postgresql if missing; returns why it cannot be, or None."""
    if _pg_bin() is not None:
        return None
    if os.geteuid() != 0:
        return "PostgreSQL is not installed and installing it needs root (apt-get install postgresql)"
    if shutil.which("apt-get") is None:
        return "PostgreSQL is not installed and this system has no apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "postgresql"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            return f"`{' '.join(cmd)}` failed: {(done.stderr or done.stdout).strip()[-300:]}"
    return None if _pg_bin() is not None else "apt-get installed postgresql but no initdb was found"


def _as_postgres(*cmd: str, **kw) -> subprocess.CompletedProcess:
    runner = [] if os.geteuid() != 0 else ["runuser", "-u", USER, "--"]
    return subprocess.run([*runner, *cmd], capture_output=True, text=True, timeout=120, **kw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """``postgresql+psycopg2://postgres@127.0.0.1:PORT/compresstune`` on a fresh server."""
    why = _install_postgres()
    if why:
        pytest.skip(why)
    pytest.importorskip("psycopg2", reason="psycopg2-binary is in the `dev` and `cluster` extras: pip install it")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL as the postgres user")
    bin_dir = _pg_bin()
    root = Path(tempfile.mkdtemp(prefix="ctpg"))  # /tmp: the postgres user must be able to reach it
    data, log = root / "data", root / "server.log"
    if os.geteuid() == 0:
        shutil.chown(root, USER)
    port = _free_port()
    started = False
    try:
        init = _as_postgres(str(bin_dir / "initdb"), "-D", str(data), "-U", USER, "-A", "trust", "--no-sync")
        assert init.returncode == 0, init.stderr
        options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories='' -c fsync=off"
        start = _as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w",
                             "-t", "60", "start")
        assert start.returncode == 0, start.stderr + (log.read_text() if log.exists() else "")
        started = True
        created = _as_postgres(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", USER,
                               "compresstune")
        assert created.returncode == 0, created.stderr
        yield f"postgresql+psycopg2://{USER}@127.0.0.1:{port}/compresstune"
    finally:
        if started:
            _as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "compresstune.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_a_study_in_postgres_is_run_resumed_and_read_back(postgres, tmp_path):
    study_file = tmp_path / "pg.yaml"
    study_file.write_text(textwrap.dedent("""\
        name: pg
        model: {factory: "studies.digits:baseline", kwargs: {epochs: 3}}
        data: {factory: "studies.digits:data"}
        space: {bits: [4, 8, 16, 32], rank_fraction: [0.5, 1.0]}
        finetune: {steps: 20, batch_size: 64, eval_every: 20}
        search: {sampler: tpe, trials: 3, seed: 0}
        """))
    out = tmp_path / "out"
    t0 = time.perf_counter()
    first = _cli("run", str(study_file), "--out", str(out), "--storage", postgres, "--no-progress", cwd=REPO)
    assert first.returncode == 0, first.stderr[-3000:]
    again = _cli("run", str(study_file), "--out", str(out), "--storage", postgres, "--trials", "4",
                 "--no-progress", cwd=REPO)
    assert again.returncode == 0, again.stderr[-3000:]
    print(f"two runs against PostgreSQL: {time.perf_counter() - t0:.1f} s")

    assert not (out / "study.db").exists()  # nothing went to the default SQLite file
    study = optuna.load_study(study_name="pg", storage=postgres)
    states = [t.state for t in study.get_trials()]
    assert states.count(TrialState.COMPLETE) == 4 and TrialState.RUNNING not in states
    assert study.user_attrs["fingerprint"] and study.user_attrs["baseline"]["val_accuracy"] > 0.5

    # The output folder points at the PostgreSQL study: status and report read it from there.
    status = _cli("status", str(out), cwd=REPO)
    assert status.returncode == 0 and postgres in status.stdout, status.stderr
    report = _cli("report", str(out), cwd=REPO)
    assert report.returncode == 0, report.stderr
    assert (out / "report.html").exists() and (out / "trials.csv").read_text().count("\n") >= 5

    optuna_cli = Path(sys.executable).with_name("optuna")
    if optuna_cli.exists():
        best = subprocess.run([str(optuna_cli), "best-trials", "--study-name", "pg", "--storage", postgres],
                              capture_output=True, text=True, timeout=120)
        assert best.returncode == 0, best.stderr
        for t in study.best_trials:
            assert str(t.number) in best.stdout


def test_a_wrong_postgres_url_is_a_clear_error(postgres):
    from compresstune.search._storage import SearchError, open_storage

    bad = postgres.rsplit("/", 1)[0] + "/no_such_database"
    with pytest.raises(SearchError, match="cannot open storage .*no_such_database"):
        open_storage(bad)
