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
