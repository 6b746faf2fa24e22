"""The exact allocator against the greedy seed planner, over the same surrogate.

1. Solve time of the knapsack (search/_allocate.py ``solve``) on a synthetic
   problem of 60 layers x 40 settings at the default 4,096 budget steps: random
   sizes and drops (a synthetic workload: the timing depends only on the shape).
2. For digits and LeNet-300-100 (the study files as shipped, their cached
   sensitivity scans), per target ratio: the greedy planner's seed and the exact
   allocation, each with its real packed ratio and the scan's predicted drop
   (lower is better), and the time each takes. No training: this compares the
   planners on what they optimise; what it is worth in hypervolume needs the
   side-by-side searches of issue 17, not run here.

    nice -n 10 .venv/bin/python benchmarks/allocate.py
"""

from __future__ import annotations

import random
import statistics
import time

from common import BENCH, machine, markdown_table, today  # noqa: E402  (chdir to ROOT)

from compresstune.search._allocate import BUCKETS, allocate, solve, study_surrogate  # noqa: E402
from compresstune.search._seeds import plan_seeds  # noqa: E402
from compresstune.search.config import load_config  # noqa: E402

STUDIES = {"digits": "studies/digits.yaml", "LeNet-300-100": "studies/mnist_lenet300.yaml"}
RATIOS = [8, 16, 32, 64]


def solve_times(repeats: int = 5) -> list[float]:
    rng = random.Random(0)
    items = [[(rng.random(), rng.randint(1, BUCKETS // 30)) for _ in range(40)] for _ in range(60)]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        solve(items, BUCKETS)
        times.append(time.perf_counter() - t0)
    return times


def compare(name: str, path: str) -> list[list]:
    config = load_config(path).with_search(out=str(BENCH / "allocate" / name))
    model, _, space, ref, table = study_surrogate(config, log=lambda m: None)
    rows = []
    for target in RATIOS:
        t0 = time.perf_counter()
        greedy = plan_seeds(space, model, table, ratios=[target], reference_bytes=ref)[0]
        tg = time.perf_counter() - t0
        exact = allocate(space, model, table, max_bytes=int(ref / target), reference_bytes=ref)
        rows.append([name, f"{target}x", f"{greedy.ratio:.1f}x", f"{greedy.predicted_drop:.4f}", f"{tg:.2f} s",
                     f"{exact.ratio:.1f}x", f"{exact.predicted_drop:.4f}", f"{exact.seconds:.2f} s ({exact.solves})"])
    return rows


def main() -> int:
    times = solve_times()
    rows = [r for name, path in STUDIES.items() for r in compare(name, path)]
    head = ["study", "target", "greedy: ratio", "greedy: predicted drop", "greedy: time", "exact: ratio",
            "exact: predicted drop", "exact: time (solves)"]
    print(f"Command: `nice -n 10 .venv/bin/python benchmarks/allocate.py`  \nDate: {today()}  \nMachine: {machine()}\n")
    print(f"Knapsack of 60 layers x 40 settings, {BUCKETS} budget steps (synthetic): median "
          f"{statistics.median(times) * 1000:.0f} ms of {len(times)} solves.\n")
    print(markdown_table(head, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
