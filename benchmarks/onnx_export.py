"""ONNX export: float32 against compressed files (weight-only, and with static int8 activations),
size, ONNX Runtime CPU latency at batch 1 and 32, and each file's test metric run through ONNX Runtime.

By default the compressed models are uniform plans (``CompressionPlan.uniform``, every layer the same
bits, no sparsity) applied to the converged baseline checkpoint, with an optional short fine-tune
(``--finetune-steps``, KD from the baseline)::

    nice -n 10 .venv/bin/python benchmarks/onnx_export.py --studies mnist_lenet5 cifar10_resnet20 \\
        --bits 8 4 --threads 1

With ``--front DIR`` they are the feasible Pareto trials of each study, searched first with
``compresstune run studies/NAME.yaml --out DIR/NAME`` (each trial's own fine-tuned artifact)::

    for s in mnist_lenet5 cifar10_resnet20 sst2_transformer; do
        OMP_NUM_THREADS=1 nice -n 10 .venv/bin/compresstune run studies/$s.yaml --out runs/bench/onnx_front/$s
    done
    nice -n 10 .venv/bin/python benchmarks/onnx_export.py --front runs/bench/onnx_front \\
        --studies mnist_lenet5 cifar10_resnet20 sst2_transformer --threads 1

Prints a markdown table (and writes it to runs/bench/onnx/table.md, or runs/bench/onnx_front/table.md).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH, log, machine, markdown_table, study_config  # noqa: E402

import torch  # noqa: E402

import compresstune as ct  # noqa: E402
from compresstune.objectives import evaluate  # noqa: E402
from compresstune.onnx_export import OrtModel, latency_ms, quantize_activations, session  # noqa: E402
from compresstune.search._session import load_model_and_task  # noqa: E402
from compresstune.search.config import load_config  # noqa: E402
from compresstune.task import take_rows  # noqa: E402

CALIBRATION_BATCHES = 8


def _batch_of(task, rows: int):
    """The first ``rows`` rows of the test split (the first batches concatenated when needed)."""
    got, seen = [], 0
    for batch in task.batches("test"):
        got.append(batch)
        seen += len(batch[0]) if isinstance(batch, (tuple, list)) else len(next(iter(batch.values())))
        if seen >= rows:
            break
    if isinstance(got[0], (tuple, list)):
        joined = tuple(torch.cat([b[i] for b in got]) for i in range(len(got[0])))
    else:
        joined = {k: torch.cat([b[k] for b in got]) for k in got[0]}
    return take_rows(joined, rows)


def _finetune(small, model, task, steps: int):
    if not steps:
        return small
    from compresstune.objectives import recover

    recover(small, model, task, temperature=4.0, alpha=0.5, steps=steps, lr=1e-4, eval_every=steps)
    return small.eval()


def _measure(path: Path, task, threads: int) -> dict:
    return {"bytes": path.stat().st_size, **_file_parts(path),
            "ms_b1": latency_ms(path, _batch_of(task, 1), threads=threads),
            "ms_b32": latency_ms(path, _batch_of(task, 32), threads=threads),
            "test": evaluate(OrtModel(session(path, threads=threads)), task, "test")}


def _file_parts(path: Path) -> dict:
    """Bytes of the file's integer codes (int4/int8 initializers), of its float tensors (scales, biases,
    float layers) and the rest (graph, names, protobuf framing)."""
    import onnx
    from onnx import TensorProto

    codes = floats = 0
    for init in onnx.load(str(path)).graph.initializer:
        size = len(init.raw_data) if init.raw_data else onnx.numpy_helper.to_array(init).nbytes
        if init.data_type in (TensorProto.INT4, TensorProto.UINT4, TensorProto.INT8, TensorProto.UINT8):
            codes += size
        else:
            floats += size
    return {"codes_bytes": codes, "float_bytes": floats, "rest_bytes": path.stat().st_size - codes - floats}


def _float_row(name: str, model, task, val, out: Path, threads: int) -> dict:
    float_path = out / "float32.onnx"
    ct.export_onnx(model, val[0], float_path, check_batches=val[:2])
    row = {"study": name, "file": "float32", "pytorch_test": evaluate(model, task, "test"),
           **_measure(float_path, task, threads)}
    log(f"{name} float32: {row}")
    return row


def _compressed_rows(name: str, label: str, small, task, val, out: Path, threads: int, **extra) -> list[dict]:
    """The weight-only file and the int8-activation file of one compressed model."""
    pt_test = evaluate(small, task, "test")
    tag = label.replace(" ", "_")
    w_path = out / f"{tag}.onnx"
    start = time.perf_counter()
    result = ct.export_onnx(small, val[0], w_path, check_batches=val)
    export_s = time.perf_counter() - start
    common = {"study": name, "pytorch_test": pt_test, "ctz": ct.packed_size(small), **extra}
    rows = [{**common, "file": f"{label} weights", "export_s": export_s, "notes": result.notes,
             "stored": result.stored(), **_measure(w_path, task, threads)}]
    log(f"{name} {rows[-1]}")
    w8_path, a8_path = out / f"{tag}_int8codes.onnx", out / f"{tag}_a8.onnx"
    ct.export_onnx(small, val[0], w8_path, check_batches=val[:2], weight_dtype="int8")
    quantize_activations(w8_path, a8_path, val)
    rows.append({**common, "file": f"{label} weights + int8 activations", **_measure(a8_path, task, threads)})
    log(f"{name} {rows[-1]}")
    return rows


def _load(name: str, out: Path):
    """The study's baseline and task, its test split whole (the CIFAR studies score trials on a
    2,000-image subset; here every file is scored on all 10,000)."""
    path = Path("studies") / f"{name}.yaml"
    kwargs = load_config(path).to_dict()["data"]["kwargs"]
    config = study_config(path, data_kwargs={"test_size": None} if "test_size" in kwargs else None)
    model, task = load_model_and_task(config, out)
    model.eval()
    return model, task, list(itertools.islice(task.batches("val"), CALIBRATION_BATCHES))


def _finish(rows: list[dict]) -> list[dict]:
    base = rows[0]
    for row in rows:
        row["x_smaller"] = base["bytes"] / row["bytes"]
        row["latency_b32_vs_float"] = row["ms_b32"] / base["ms_b32"]
        row["latency_b1_vs_float"] = row["ms_b1"] / base["ms_b1"]
    return rows


def bench_study(name: str, bits_list: list[int], threads: int, steps: int) -> list[dict]:
    """Uniform plans of each bit-width on the converged baseline (stand-ins for front points)."""
    out = BENCH / "onnx" / name
    model, task, val = _load(name, out)
    rows = [_float_row(name, model, task, val, out, threads)]
    for bits in bits_list:
        plan = ct.CompressionPlan.uniform(model, bits=bits)
        small = _finetune(ct.apply(model, plan), model, task, steps)
        rows += _compressed_rows(name, f"uniform {bits}-bit", small, task, val, out, threads)
    return _finish(rows)


def bench_front(name: str, front_dir: Path, threads: int) -> list[dict]:
    """Every feasible Pareto trial of the study searched into ``front_dir/name`` (``compresstune run
    studies/NAME.yaml --out front_dir/NAME``), exported as it was fine-tuned by its trial."""
    from compresstune.search import load_study
    from compresstune.search.pareto import front

    searched = front_dir / name
    if not (searched / "study.db").exists():
        raise SystemExit(f"no study in {searched}: run `compresstune run studies/{name}.yaml --out {searched}` first")
    study = load_study(searched)
    out = BENCH / "onnx_front" / name
    model, task, val = _load(name, out)
    rows = [_float_row(name, model, task, val, out, threads)]
    points = front(study)
    for number in sorted(int(n) for n in points["number"]):
        t = study.trials[number]
        small = ct.load(searched / t.user_attrs["artifact"], into=model).eval()
        rows += _compressed_rows(name, f"trial {number}", small, task, val, out, threads,
                                 val_metric=t.user_attrs["val_accuracy"], trial_ratio=t.user_attrs["ratio"])
    return _finish(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--studies", nargs="+", default=["mnist_lenet5", "cifar10_resnet20"])
    p.add_argument("--bits", nargs="+", type=int, default=[8, 4])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--finetune-steps", type=int, default=0)
    p.add_argument("--front", type=Path, default=None,
                   help="export the feasible Pareto trials of the studies searched into FRONT/NAME instead")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.front:
        rows = [r for name in args.studies for r in bench_front(name, args.front, args.threads)]
    else:
        rows = [r for name in args.studies for r in bench_study(name, args.bits, args.threads, args.finetune_steps)]
    table = markdown_table(
        ["study", "file", "bytes", "of which codes / float tensors / graph", "x smaller than float32 ONNX", ".ctz bytes",
         ".ctz x smaller than float32 ONNX", "ms batch 1", "ms batch 32", "batch-1 latency / float32",
         "batch-32 latency / float32", "val (study)", "test (ONNX Runtime)", "test (PyTorch)"],
        [(r["study"], r["file"], f"{r['bytes']:,}",
          f"{r['codes_bytes']:,} / {r['float_bytes']:,} / {r['rest_bytes']:,}",
          f"{r['x_smaller']:.2f}x", f"{r['ctz']:,}" if "ctz" in r else "-",
          f"{rows_base(rows, r)['bytes'] / r['ctz']:.1f}x" if "ctz" in r else "-",
          f"{r['ms_b1']:.2f}", f"{r['ms_b32']:.2f}", f"{r['latency_b1_vs_float']:.2f}",
          f"{r['latency_b32_vs_float']:.2f}", f"{r['val_metric']:.4f}" if "val_metric" in r else "-",
          f"{r['test']:.4f}", f"{r['pytorch_test']:.4f}") for r in rows])
    folder = BENCH / ("onnx_front" if args.front else "onnx")
    text = (f"{machine()}; ONNX Runtime threads={args.threads}; "
            f"{'front points of ' + str(args.front) if args.front else f'fine-tune steps {args.finetune_steps}'}"
            f"\n\n{table}\n")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "table.md").write_text(text)
    (folder / "rows.json").write_text(json.dumps(rows, indent=2, default=str))
    print(text)


def rows_base(rows: list[dict], row: dict) -> dict:
    """The float32 row of ``row``'s study."""
    return next(r for r in rows if r["study"] == row["study"] and r["file"] == "float32")


if __name__ == "__main__":
    main()
