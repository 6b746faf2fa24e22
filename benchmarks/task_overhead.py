"""What reading the data through a Task costs in the recovery fine-tune (issue 14).

One digits trial's fine-tune (the default study's CNN and budget: 150 steps of
64 rows, rungs every 25), three ways, interleaved and repeated; medians of the
wall time per fine-tune:

* ``cached``: a Classification from in-memory tensors, the teacher's outputs
  computed once (what every study file with a Splits data factory gets);
* ``live``: the same task, the teacher run on every batch (what a task over a
  DataLoader gets);
* ``dataloader``: a Classification over torch DataLoaders of the same tensors
  (teacher live, batches collated by the DataLoader).

    nice .venv/bin/python benchmarks/task_overhead.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import machine

import torch
from torch.utils.data import DataLoader, TensorDataset

import compresstune as ct
from compresstune.objectives import recover, teacher_outputs
from compresstune.tasks import Classification
from studies import digits


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    splits = digits.data()
    model = digits.baseline(data=splits, cache_dir="runs/bench/cache")
    tensors = Classification.from_splits(splits, batch_size=64)
    loaders = Classification(DataLoader(TensorDataset(splits.train.x, splits.train.y), batch_size=64, shuffle=True,
                                        drop_last=True),
                             DataLoader(TensorDataset(splits.val.x, splits.val.y), batch_size=512))
    cache = teacher_outputs(model, tensors)
    plan = ct.CompressionPlan.uniform(model, sparsity=0.5, bits=4)
    ways = {"cached": (tensors, cache), "live": (tensors, None), "dataloader": (loaders, None)}
    times = {name: [] for name in ways}
    for _ in range(args.repeats):
        for name, (task, cached) in ways.items():
            student = ct.apply(model, plan)
            t0 = time.perf_counter()
            recover(student, model, task, temperature=4.0, alpha=0.7, steps=150, eval_every=25, seed=0,
                    cached_teacher=cached)
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["cached"])
    print(f"machine: {machine()}; torch threads 1; {args.repeats} repeats, interleaved\n")
    print("| way | median s per fine-tune | ratio to cached |\n|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.3f} | {statistics.median(ts) / base:.2f} |")


if __name__ == "__main__":
    main()
