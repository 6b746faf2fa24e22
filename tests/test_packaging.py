"""The wheel holds every module and the report's CSS/JS, and works installed.

An editable install reads the source tree, so a module missing from
``[tool.setuptools] packages`` or an asset missing from ``package-data`` passes
every other test; this one builds the wheel, installs it into a scratch folder
and renders a report from the committed v0 output folder with that install.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"compresstune": "compresstune", "search": "compresstune/search", "spaces": "compresstune/spaces",
           "objectives": "compresstune/objectives"}

pytestmark = pytest.mark.slow

_SCRIPT = r"""
import importlib, json, pkgutil, sys, warnings
from pathlib import Path
warnings.simplefilter("ignore", DeprecationWarning)
import compresstune
site, folder = Path(sys.argv[1]).resolve(), sys.argv[2]
assert Path(compresstune.__file__).resolve().is_relative_to(site), compresstune.__file__
names = [m.name for m in pkgutil.walk_packages(compresstune.__path__, "compresstune.")]
skip = {"compresstune.models", "compresstune.train"}  # deprecated aliases of the source tree's studies/
for name in names:
    if name not in skip and not name.startswith("compresstune.search._ray"):
        importlib.import_module(name)
from compresstune.cli import main
assert main(["report", folder]) == 0
print(json.dumps({"modules": names}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    (whl,) = out.glob("compresstune-*.whl")
    return whl


def test_the_wheel_holds_every_module_and_asset(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"{SOURCES[folder]}/{f.relative_to(ROOT / folder).as_posix()}"
                for folder in SOURCES for f in (ROOT / folder).rglob("*")
                if f.suffix in (".py", ".css", ".js") and "__pycache__" not in f.parts}
    missing = sorted(expected - names)
    assert not missing, f"not in the wheel: {missing}"
    assert "compresstune/search/report/assets/report.css" in names and "compresstune/search/report/assets/report.js" in names


def test_the_installed_wheel_renders_a_report(wheel: Path, tmp_path: Path):
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    folder = tmp_path / "digits_v0"
    shutil.copytree(ROOT / "tests" / "fixtures" / "digits_v0", folder)
    pointer = json.loads((folder / "study.json").read_text())
    pointer.update(storage=f"sqlite:///{folder / 'study.db'}", study_file=None)
    (folder / "study.json").write_text(json.dumps(pointer))
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = subprocess.run([sys.executable, "-c", _SCRIPT, str(site), str(folder)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    page = (folder / "report.html").read_text()
    css = (ROOT / "search" / "report" / "assets" / "report.css").read_text()
    js = (ROOT / "search" / "report" / "assets" / "report.js").read_text()
    assert css in page and js in page and "digits-v0" in page
