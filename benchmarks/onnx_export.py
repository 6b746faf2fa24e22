"""ONNX export: float32 against compressed files (weight-only, and with static int8 activations),
size, ONNX Runtime CPU latency at batch 1 and 32, and each file's test metric run through ONNX Runtime.

The compressed models are uniform plans (``CompressionPlan.uniform``, every layer the same bits, no
sparsity) applied to the converged baseline checkpoint, with an optional short fine-tune
(``--finetune-steps``, KD from the baseline): stand-ins for front points, said so in BENCHMARKS.md.

    nice -n 10 .venv/bin/python benchmarks/onnx_export.py --studies mnist_lenet5 cifar10_resnet20 \\
        --bits 8 4 --threads 1

Prints a markdown table (and writes it to runs/bench/onnx/table.md).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH, log, machine, markdown_table  # noqa: E402

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
    return {"bytes": path.stat().st_size,
            "ms_b1": latency_ms(path, _batch_of(task, 1), threads=threads),
            "ms_b32": latency_ms(path, _batch_of(task, 32), threads=threads),
            "test": evaluate(OrtModel(session(path, threads=threads)), task, "test")}


def bench_study(name: str, bits_list: list[int], threads: int, steps: int) -> list[dict]:
    config = load_config(Path("studies") / f"{name}.yaml")
    out = BENCH / "onnx" / name
    model, task = load_model_and_task(config, out)
    model.eval()
    val = list(itertools.islice(task.batches("val"), CALIBRATION_BATCHES))
    rows = []
    float_path = out / "float32.onnx"
    ct.export_onnx(model, val[0], float_path, check_batches=val[:2])
    base = _measure(float_path, task, threads)
    rows.append({"study": name, "file": "float32", "pytorch_test": evaluate(model, task, "test"), **base})
    log(f"{name} float32: {base}")
    for bits in bits_list:
        plan = ct.CompressionPlan.uniform(model, bits=bits)
        small = _finetune(ct.apply(model, plan), model, task, steps)
        pt_test = evaluate(small, task, "test")
        w_path = out / f"w{bits}.onnx"
        start = time.perf_counter()
        result = ct.export_onnx(small, val[0], w_path, check_batches=val)
        export_s = time.perf_counter() - start
        rows.append({"study": name, "file": f"{bits}-bit weights", "pytorch_test": pt_test, "export_s": export_s,
                     "ctz": ct.packed_size(small), "notes": result.notes, **_measure(w_path, task, threads)})
        log(f"{name} {rows[-1]}")
        w8_path, a8_path = out / f"w{bits}_int8codes.onnx", out / f"w{bits}_a8.onnx"
        ct.export_onnx(small, val[0], w8_path, check_batches=val[:2], weight_dtype="int8")
        quantize_activations(w8_path, a8_path, val)
        rows.append({"study": name, "file": f"{bits}-bit weights + int8 activations", "pytorch_test": pt_test,
                     "ctz": ct.packed_size(small), **_measure(a8_path, task, threads)})
        log(f"{name} {rows[-1]}")
    for row in rows:
        row["x_smaller"] = base["bytes"] / row["bytes"]
        row["latency_b32_vs_float"] = row["ms_b32"] / base["ms_b32"]
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--studies", nargs="+", default=["mnist_lenet5", "cifar10_resnet20"])
    p.add_argument("--bits", nargs="+", type=int, default=[8, 4])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--finetune-steps", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = [r for name in args.studies for r in bench_study(name, args.bits, args.threads, args.finetune_steps)]
    table = markdown_table(
        ["study", "file", "bytes", "x smaller than float32 ONNX", ".ctz bytes", "ms batch 1", "ms batch 32",
         "batch-32 latency / float32", "test (ONNX Runtime)", "test (PyTorch)"],
        [(r["study"], r["file"], f"{r['bytes']:,}", f"{r['x_smaller']:.2f}x",
          f"{r['ctz']:,}" if "ctz" in r else "-", f"{r['ms_b1']:.2f}", f"{r['ms_b32']:.2f}",
          f"{r['latency_b32_vs_float']:.2f}", f"{r['test']:.4f}", f"{r['pytorch_test']:.4f}") for r in rows])
    text = f"{machine()}; ONNX Runtime threads={args.threads}; fine-tune steps {args.finetune_steps}\n\n{table}\n"
    (BENCH / "onnx").mkdir(parents=True, exist_ok=True)
    (BENCH / "onnx" / "table.md").write_text(text)
    (BENCH / "onnx" / "rows.json").write_text(json.dumps(rows, indent=2, default=str))
    print(text)


if __name__ == "__main__":
    main()
