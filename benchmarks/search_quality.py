"""Search quality: hypervolume after 25, 50 and 100 trials.

Methods (``--methods``):

* ``tpe``: compresstune's default search exactly as a study file gets it: the
  sensitivity scan's seed trials (``sensitivity.enabled``, on by default) then
  TPE (multivariate + constant liar);
* ``tpe-noseed``: the same TPE sampler without the seed trials;
* ``random``: Optuna's RandomSampler (no seed trials);
* ``grid``: the by-hand baseline, a uniform grid of one global sparsity x one
  global bit-width for every layer (sparsity {0, 0.5, 0.75, 0.9, 0.95} x bits
  {2, 4, 8, 16, 32} = 25 plans, queued with ``Space.uniform_params``;
  distillation at T=4, alpha=0.5, no low-rank);
* ``nsga2``, ``gp``: the other samplers of ``search/_controller.make_sampler``
  (no seed trials).

Hypervolume is the project's one definition (``compresstune.search.pareto``):
feasible trials, axes validation accuracy x log2 compression ratio, reference
point stored in the study.

Every (study, method, seed) is an ordinary study in its own folder,
``runs/bench/search_quality/<study>/<method>-s<seed>``; running the script again
resumes them. The seed seeds both the sampler and the fine-tune.

    nice -n 10 .venv/bin/python benchmarks/search_quality.py                     # run everything, then the tables
    nice -n 10 .venv/bin/python benchmarks/search_quality.py --study digits --methods tpe random grid --seeds 0 1 2
    .venv/bin/python benchmarks/search_quality.py --report-only                  # tables from what has run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from common import BENCH, log, machine, markdown_table, run_study, study_config, today, trials_table

from compresstune.search.pareto import hypervolume_series, reference_point

HERE = BENCH / "search_quality"
STUDIES = {
    # name: (study file, finetune patch); LeNet-300's fine-tune stays at the file's 200 steps.
    "digits": ("studies/digits.yaml", {}),
    "lenet300": ("studies/mnist_lenet300.yaml", {}),
}
GRID_SPARSITY = (0.0, 0.5, 0.75, 0.9, 0.95)
GRID_BITS = (2, 4, 8, 16, 32)
CHECKPOINTS = (25, 50, 100)
# method -> (sampler, sensitivity seed trials on)
METHODS = {"tpe": ("tpe", True), "tpe-noseed": ("tpe", False), "random": ("random", False),
           "grid": ("random", False), "nsga2": ("nsga2", False), "gp": ("gp", False)}


def grid_params(space) -> list[dict]:
    return [space.uniform_params(s, b) for s in GRID_SPARSITY for b in GRID_BITS]


def out_dir(study: str, method: str, seed: int) -> Path:
    return HERE / study / f"{method}-s{seed}"


def run_one(study: str, method: str, seed: int, trials: int):
    path, finetune = STUDIES[study]
    sampler, seeded = METHODS[method]
    n = len(GRID_SPARSITY) * len(GRID_BITS) if method == "grid" else trials
    sections = {"finetune": finetune} if finetune else {}
    if not seeded:
        sections["sensitivity"] = {"enabled": False}
    cfg = study_config(path, name=f"sq-{study}-{method}-s{seed}", sections=sections, trials=n, seed=seed,
                       sampler=sampler, out=str(out_dir(study, method, seed)))
    t0 = time.perf_counter()
    run_study(cfg, enqueue=grid_params if method == "grid" else None)
    log(f"{study} {method} seed {seed}: {n} trials done ({time.perf_counter() - t0:.0f} s this call)")


def load(study: str, method: str, seed: int):
    """(hypervolume series, trial seconds, wall seconds) of a finished study, or None."""
    import optuna

    folder = out_dir(study, method, seed)
    if not (folder / "study.db").exists():
        return None
    s = optuna.load_study(study_name=f"sq-{study}-{method}-s{seed}", storage=f"sqlite:///{folder / 'study.db'}")
    df = trials_table(s)
    hv = hypervolume_series(df, reference_point(s))["hypervolume"].tolist()
    trial_s = sum(t.user_attrs.get("timings", {}).get("total_s", 0.0) for t in s.trials)
    starts = [t.datetime_start for t in s.trials if t.datetime_start]
    ends = [t.datetime_complete for t in s.trials if t.datetime_complete]
    wall = (max(ends) - min(starts)).total_seconds() if starts and ends else float("nan")
    return hv, trial_s, wall


def _fmt(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def reach(hv: list[float], target: float) -> int | None:
    """Trials needed for the hypervolume to reach ``target`` (1-based), None if never."""
    for i, v in enumerate(hv):
        if v >= target - 1e-12:
            return i + 1
    return None


def report(seeds: list[int], methods: list[str]) -> str:
    parts, summary = [], {}
    for study in STUDIES:
        rows, reach_rows = [], []
        grid = [r for r in (load(study, "grid", s) for s in seeds) if r is not None]
        target = statistics.mean(r[0][-1] for r in grid) if grid else None
        for method in methods:
            runs = {s: load(study, method, s) for s in seeds}
            runs = {s: r for s, r in runs.items() if r is not None}
            if not runs:
                continue
            cells = []
            for k in CHECKPOINTS:
                if method == "grid":
                    vals = [r[0][-1] for r in runs.values()]  # the grid is complete at 25
                else:
                    vals = [r[0][k - 1] for r in runs.values() if len(r[0]) >= k]
                cells.append(_fmt(vals))
            n_trials = [len(r[0]) for r in runs.values()]
            mean_trial = statistics.mean(r[1] / max(len(r[0]), 1) for r in runs.values())
            wall_min = sum(r[2] for r in runs.values()) / 60
            rows.append([method, len(runs), f"{min(n_trials)}" + ("" if min(n_trials) == max(n_trials) else
                                                                  f"-{max(n_trials)}"),
                         *cells, f"{mean_trial:.2f}", f"{wall_min:.1f}"])
            if target is not None:
                hits = [reach(r[0], target) for r in runs.values()]
                shown = ", ".join(str(h) if h is not None else f">{len(r[0])}" for h, r in zip(hits, runs.values()))
                found = [h for h in hits if h is not None]
                med = statistics.median(found) if len(found) == len(hits) else None
                reach_rows.append([method, shown, "—" if med is None else f"{med:g}",
                                   f"{sum(h is not None for h in hits)}/{len(hits)}"])
            summary.setdefault(study, {})[method] = {
                "seeds": sorted(runs), "hv": {str(s): r[0] for s, r in runs.items()},
                "trial_seconds": {str(s): r[1] for s, r in runs.items()},
                "wall_seconds": {str(s): r[2] for s, r in runs.items()}}
        if not rows:
            continue
        parts.append(f"#### {study}: hypervolume after 25 / 50 / 100 trials (mean ± std [min, max] over seeds)\n")
        parts.append(markdown_table(["method", "seeds", "trials", "HV@25", "HV@50", "HV@100", "s / trial",
                                     "wall min (all seeds)"], rows))
        if target is not None:
            parts.append(f"\nTrials to reach the grid's final hypervolume ({target:.3f}, mean of its seeds), per seed:\n")
            parts.append(markdown_table(["method", "trials per seed", "median", "reached"], reach_rows))
        parts.append("")
    (HERE / "results.json").write_text(json.dumps(summary, indent=1))
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", nargs="+", choices=list(STUDIES), default=list(STUDIES))
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=["grid", "tpe", "tpe-noseed", "random"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    if not args.report_only:
        log(f"machine: {machine()}")
        for seed in args.seeds:
            for study in args.study:
                for method in args.methods:
                    run_one(study, method, seed, args.trials)
    print(f"<!-- {today()}; {machine()} -->")
    print(report(args.seeds, list(METHODS)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
