"""`compresstune export DIR --trial N --format onnx` on every Pareto trial of a tiny digits study."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import onnx  # noqa: E402

from compresstune.cli import main  # noqa: E402
from compresstune.search import load_study, run  # noqa: E402
from compresstune.search.config import load_config  # noqa: E402
from compresstune.search.pareto import front  # noqa: E402


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("onnx_digits")
    path = folder / "tiny.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: tiny
        model: {{factory: "studies.digits:baseline"}}
        data: {{factory: "studies.digits:data"}}
        space:
          sparsity: {{low: 0.0, high: 0.9}}
          bits: [2, 4, 8, 16, 32]
          rank_fraction: [0.5, 1.0]
        finetune: {{steps: 10, batch_size: 32, eval_every: 5}}
        constraints: {{max_accuracy_drop: 0.05}}
        search: {{trials: 4, seed: 1, out: "{folder / 'out'}"}}
        """))
    run(load_config(path), progress=False, study_file=str(path), log=lambda m: None)
    return folder / "out"


def test_every_pareto_trial_exports_to_onnx_and_runs(digits: Path, tmp_path: Path, capsys) -> None:
    numbers = [int(n) for n in front(load_study(digits))["number"]]
    assert numbers
    for number in numbers:
        target = tmp_path / f"t{number}.onnx"
        assert main(["export", str(digits), "--trial", str(number), "--format", "onnx", "--output", str(target)]) == 0
        printed = capsys.readouterr().out
        assert "checked in ONNX Runtime" in printed and "through ONNX Runtime" in printed
        onnx.checker.check_model(onnx.load(str(target)))
        record = json.loads(Path(f"{target}.metrics.json").read_text())
        assert record["size_bytes"] == target.stat().st_size
        assert abs(record["test_onnxruntime"] - record["test_pytorch"]) < 1e-6  # weight-only: the same model


def test_int8_activations_are_calibrated_and_judged_against_the_trial(digits: Path, tmp_path: Path, capsys) -> None:
    number = int(front(load_study(digits))["number"].iloc[0])
    target = tmp_path / "a8.onnx"
    code = main(["export", str(digits), "--trial", str(number), "--format", "onnx", "--activations", "int8",
                 "--output", str(target)])
    record = json.loads(Path(f"{target}.metrics.json").read_text())
    ops = {node.op_type for node in onnx.load(str(target)).graph.node}
    assert "QuantizeLinear" in ops and record["activations"] == "int8"
    drop = record["test_pytorch"] - record["test_onnxruntime"]
    assert code == (0 if drop <= 0.01 else 2)
    if code:
        assert "int8 activations cost" in capsys.readouterr().err


def test_activations_need_the_onnx_format(digits: Path, tmp_path: Path, capsys) -> None:
    assert main(["export", str(digits), "--trial", "0", "--activations", "int8", "--output", str(tmp_path / "x")]) == 2
    assert "`--activations` needs --format onnx; got --format ctz." in capsys.readouterr().err


def test_onnx_size_objective_and_budgets_are_measured_before_training(tmp_path: Path) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: deploy
        model: {{factory: "studies.digits:baseline"}}
        data: {{factory: "studies.digits:data"}}
        objectives: [accuracy, size, onnx_size]
        space:
          sparsity: {{low: 0.0, high: 0.5}}
          bits: [4, 8, 32]
        finetune: {{steps: 5, batch_size: 32, eval_every: 5}}
        constraints: {{max_accuracy_drop: 0.5, max_onnx_latency_ms: 1000.0, max_onnx_bytes: 60000}}
        sensitivity: {{enabled: false}}
        search: {{trials: 4, seed: 3, out: "{tmp_path / 'out'}"}}
        """))
    study, _ = run(load_config(path), progress=False, study_file=str(path), log=lambda m: None)
    assert study.metric_names == ["val_accuracy", "size_bytes", "onnx_bytes"]
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert done
    for t in done:
        assert t.values[2] == t.user_attrs["onnx_bytes"] > 0
        assert t.user_attrs["onnx_latency_ms"] > 0
        over = t.user_attrs["onnx_bytes"] > 60000
        assert (t.constraints["max_onnx_bytes"] > 0) == over
        assert (t.user_attrs.get("rejected") == "budget") == over
    html = (tmp_path / "out" / "report.html").read_text()
    assert "ONNX file size (bytes)" in html and "ONNX Runtime ms" in html
    assert "--format onnx --output trial_" in html and ".ctz" in html
