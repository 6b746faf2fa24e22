"""An output folder written by compresstune 0.1.0 (before the issue-11 restructure)
still reports, exports and resumes with today's code.

``tests/fixtures/digits_v0/`` was written by ``compresstune run
tests/fixtures/digits_v0.yaml`` at commit 410127c (4 digits trials: two seed trials,
a second-round seed, one trial stopped at a rung). It is never regenerated: it stands
for the folders users already have on disk.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState

from compresstune.cli import main
from compresstune.search.config import load_config
from compresstune.search import export_trial, load_study, run

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture()
def old_folder(tmp_path: Path) -> Path:
    """A copy of the fixture whose pointer names the copy's database, as after moving a folder."""
    out = tmp_path / "digits_v0"
    shutil.copytree(FIXTURES / "digits_v0", out)
    study_file = shutil.copy(FIXTURES / "digits_v0.yaml", tmp_path / "digits_v0.yaml")
    pointer = json.loads((out / "study.json").read_text())
    pointer.update(storage=f"sqlite:///{out / 'study.db'}", study_file=str(study_file))
    (out / "study.json").write_text(json.dumps(pointer, indent=2) + "\n")
    return out


def test_old_folder_reports(old_folder: Path, capsys) -> None:
    assert main(["report", str(old_folder)]) == 0
    html = (old_folder / "report.html").read_text()
    assert "digits-v0" in html
    trials = (old_folder / "trials.csv").read_text().splitlines()
    assert len(trials) == 1 + 4
    assert main(["status", str(old_folder)]) == 0
    assert "digits-v0" in capsys.readouterr().out


def test_old_folder_exports_a_checked_artifact(old_folder: Path, tmp_path: Path) -> None:
    info = export_trial(old_folder, 1, tmp_path / "t1.ctz", squash_to=tmp_path / "t1.pt")
    assert (tmp_path / "t1.ctz").stat().st_size == 9542
    assert "9,542" in str(info) or "9542" in str(info)
    plain = torch.load(tmp_path / "t1.pt", weights_only=False)
    assert isinstance(plain, torch.nn.Module)
    assert not any("parametriz" in type(m).__name__.lower() for m in plain.modules())


def test_old_folder_resumes_with_one_more_trial(old_folder: Path) -> None:
    config = load_config(old_folder.parent / "digits_v0.yaml", out=str(old_folder), trials=5)
    run(config, progress=False, log=lambda m: None)
    trials = load_study(old_folder).get_trials(deepcopy=False)
    assert len(trials) == 5
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 5
    assert trials[3].user_attrs["stopped_at_rung"] == 5
    # The baseline and the scan were reused from the folder, not recomputed.
    assert len(list((old_folder / "cache").glob("*.pt"))) == 1
