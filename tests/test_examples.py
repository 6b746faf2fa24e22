"""The README's examples run as a new user would run them (tiny budgets)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2"


@pytest.mark.slow
@pytest.mark.parametrize("script, extra", [
    ("classification.py", []),
    ("regression.py", []),
    ("custom_task.py", []),
    ("language_modeling.py", ["--rows", "300", "--data", str(SST2)]),
])
def test_example_runs_and_prints_a_front(script, extra, tmp_path):
    if script == "language_modeling.py" and not SST2.exists():
        pytest.skip(f"no SST-2 copy at {SST2}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script), "--trials", "2", "--out",
                           str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "baseline val" in proc.stdout and "size_bytes" in proc.stdout
    assert (tmp_path / "out" / "report.html").exists() and (tmp_path / "out" / "model.pt").exists()


@pytest.mark.slow
@pytest.mark.ray
def test_classes_of_the_users_script_reach_ray_workers_and_the_cli(tmp_path):
    """custom_task.py defines its task in ``__main__``: Ray workers get it by value, and
    ``export`` (another process) reloads model.pt and task.pt and re-checks the metric."""
    from compresstune.search import load_study

    out = tmp_path / "out"
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "custom_task.py"), "--trials", "2", "--workers", "2",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    done = [t for t in load_study(out).trials if "artifact" in t.user_attrs]
    assert done and all(t.user_attrs["worker"]["node_id"] for t in done)  # they ran on Ray
    exported = subprocess.run([sys.executable, "-m", "compresstune.cli", "export", str(out), "--trial",
                               str(done[0].number), "--output", str(tmp_path / "s.ctz"), "--squash", str(tmp_path / "s.pt")],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "checked: reloads and reproduces val nll" in exported.stdout and (tmp_path / "s.pt").exists()
