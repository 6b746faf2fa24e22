"""Per-trial overhead of the Ray executor against the in-process loop, and the trial
throughput of 1 and 2 Ray workers.

The workload is synthetic but goes through the real executors and the real trial:
this file is also the study module (``ray_overhead:data``, ``ray_overhead:model``):
random tensors and a small MLP; ``finetune.steps`` is sized so that one trial takes
about the target time on this machine (calibrated first by timing ``run_trial``
itself at two step counts). A trial computes (the recovery fine-tune's matrix
products, the evaluations, packing the artifact); nothing sleeps. The knobs that
would change a trial's cost are fixed (8 bits, no factorisation); sparsity and the
distillation knobs are searched by the random sampler, so every executor runs the
same plans.

For each target it runs three fresh studies, each in its own process:
``--workers 0`` (in-process), ``--workers 1`` and ``--workers 2`` (a local Ray of
1 or 2 CPUs). From each study's own timestamps (Optuna's ``datetime_complete``)
and each trial's measured work (``timings.total_s``):

* interval: time between consecutive trial completions (median over the run);
* overhead per trial (sequential runs): median of (interval - that trial's work);
* throughput: completed trials per second after the first completion (start-up,
  Ray's included, is reported apart);
* Ray/in-process: ratio of the median intervals of the 1-worker Ray run and the
  in-process run; 2/1 workers: ratio of the throughputs.

Usage::

    .venv/bin/python benchmarks/ray_overhead.py                       # 0.1 s, 1 s, 5 s
    .venv/bin/python benchmarks/ray_overhead.py --targets 1 --trials 20 --out runs/bench/ray_overhead
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent

N_TRAIN, N_EVAL, FEATURES, HIDDEN, CLASSES, BATCH = 4096, 256, 128, 256, 10, 256


# -- the study module ----------------------------------------------------------------------------

def data(seed: int = 0):
    """Random features with labels from a random linear teacher (learnable, cheap)."""
    from compresstune.data import Split, Splits

    gen = torch.Generator().manual_seed(seed)
    teacher = torch.randn(FEATURES, CLASSES, generator=gen)

    def split(n: int) -> Split:
        x = torch.randn(n, FEATURES, generator=gen)
        return Split(x, (x @ teacher).argmax(1))

    return Splits(train=split(N_TRAIN), val=split(N_EVAL), test=split(N_EVAL), num_classes=CLASSES, name="synthetic")


class BusyMLP(nn.Module):
    """Three linear layers; defined here, so Ray ships this file to the workers (py_modules)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(FEATURES, HIDDEN), nn.Linear(HIDDEN, HIDDEN), nn.Linear(HIDDEN, CLASSES)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def model(data, seed: int = 0):
    torch.manual_seed(seed)
    return BusyMLP().eval()


STUDY = """\
name: {name}
model: {{factory: "ray_overhead:model"}}
data: {{factory: "ray_overhead:data"}}
space: {{bits: 8, rank_fraction: null, sparsity: {{low: 0.0, high: 0.9}}}}
objectives: [accuracy, size]
finetune: {{steps: {steps}, batch_size: {batch}, eval_every: {steps}, eval_batch_size: 512}}
constraints: {{max_accuracy_drop: null}}
sensitivity: {{enabled: false}}
search: {{sampler: random, trials: {trials}, seed: 0, max_failures: 3}}
"""


def write_study(folder: Path, name: str, steps: int, trials: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = STUDY.format(name=name, steps=steps, trials=trials, batch=BATCH)
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


# -- calibration -----------------------------------------------------------------------------------

def calibrate(targets: list[float], scratch: Path) -> dict[float, int]:
    """Steps per target: time run_trial at two step counts, fit t = a + b * steps."""
    sys.path.insert(0, str(HERE))
    from compresstune.search.config import load_config
    from compresstune.search._controller import prepare
    from compresstune.search._trial import run_trial

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)
    study = write_study(scratch, "calibrate", steps=10, trials=1)
    session = prepare(load_config(study, out=str(scratch / "out")), scratch / "out", log=lambda m: None)
    plan = session.space.decode({name: _middle(d) for name, d in session.space.distributions().items()})

    def seconds(steps: int) -> float:
        ctx = dataclasses.replace(session.context, settings=dataclasses.replace(session.context.settings,
                                                                                steps=steps, eval_every=steps))
        run_trial(plan, ctx)  # warm
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            outcome = run_trial(plan, ctx)
            times.append(time.perf_counter() - t0)
            assert outcome.state == "complete", outcome.fail_reason
        return statistics.median(times)

    lo, hi = 5, 200
    t_lo, t_hi = seconds(lo), seconds(hi)
    per_step = (t_hi - t_lo) / (hi - lo)
    fixed = max(0.0, t_lo - lo * per_step)
    print(f"calibration: {fixed * 1000:.0f} ms per trial + {per_step * 1000:.2f} ms per fine-tune step", flush=True)
    return {t: max(1, round((t - fixed) / per_step)) for t in targets}


def _middle(dist):
    if hasattr(dist, "choices"):
        return dist.choices[len(dist.choices) // 2]
    return (dist.low + dist.high) / 2


# -- one run (in its own process) ---------------------------------------------------------------------

def one_run(study_file: Path, out: Path, workers: int) -> dict:
    sys.path.insert(0, str(HERE))
    import optuna
    from optuna.trial import TrialState

    from compresstune.search.config import load_config
    from compresstune.search import run

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = load_config(study_file, out=str(out), workers=workers)
    load0 = os.getloadavg()[0]
    t0 = time.time()
    study, _ = run(config, progress=False, log=lambda m: print(m, file=sys.stderr, flush=True))
    wall = time.time() - t0
    trials = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    trials.sort(key=lambda t: t.datetime_complete)
    done = [t.datetime_complete.timestamp() for t in trials]
    work = [t.user_attrs["timings"]["total_s"] for t in trials]
    intervals = [b - a for a, b in zip(done, done[1:])]
    overheads = [iv - w for iv, w in zip(intervals, work[1:])]
    span = done[-1] - done[0]
    first_start = min(t.datetime_start.timestamp() for t in trials)
    failed = sum(t.state == TrialState.FAIL for t in study.get_trials(deepcopy=False))
    return {
        "workers": workers, "trials": len(trials), "failed": failed, "wall_s": wall,
        "startup_s": done[0] - t0, "first_ask_s": first_start - t0,
        "median_work_s": statistics.median(work), "median_interval_s": statistics.median(intervals),
        "median_overhead_s": statistics.median(overheads), "throughput_per_s": (len(trials) - 1) / span,
        "pids": len({(t.user_attrs.get("worker") or {}).get("pid") for t in trials}),
        "load_start": load0, "load_end": os.getloadavg()[0],
    }


# -- the table --------------------------------------------------------------------------------------

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", type=float, nargs="+", default=[0.1, 1.0, 5.0], help="trial seconds")
    p.add_argument("--trials", type=int, nargs="+", default=[50, 50, 40], help="trials per target (one or each)")
    p.add_argument("--out", default=None, help="folder for the studies (default: a temporary one)")
    p.add_argument("--one", nargs=3, metavar=("STUDY", "OUT", "WORKERS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one_run(Path(args.one[0]), Path(args.one[1]), int(args.one[2]))))
        return
    counts = args.trials if len(args.trials) == len(args.targets) else [args.trials[0]] * len(args.targets)
    base = Path(args.out).resolve() if args.out else Path(tempfile.mkdtemp(prefix="ray_overhead-"))
    started = time.time()
    steps = calibrate(args.targets, base / "calibrate")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TUNE_"))}
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    rows = []
    for target, n in zip(args.targets, counts):
        runs = {}
        for workers in (0, 1, 2):
            name = f"t{str(target).replace('.', '_')}_w{workers}"
            study = write_study(base / name, name, steps=steps[target], trials=n)
            done = subprocess.run([sys.executable, __file__, "--one", str(study), str(base / name / "out"),
                                   str(workers)], cwd=ROOT, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
            runs[workers] = json.loads(done.stdout.strip().splitlines()[-1])
            r = runs[workers]
            print(f"{name}: {r['trials']} trials, work {r['median_work_s']:.3f} s, interval "
                  f"{r['median_interval_s']:.3f} s, overhead {r['median_overhead_s'] * 1000:.0f} ms, "
                  f"{r['throughput_per_s']:.2f} trials/s, start-up {r['startup_s']:.1f} s, "
                  f"{r['pids']} worker pid(s), load {r['load_start']:.1f}->{r['load_end']:.1f}", flush=True)
        rows.append((target, n, steps[target], runs))
        (base / "results.json").write_text(json.dumps([[t, n_, st, rr] for t, n_, st, rr in rows], indent=1))
    print()
    print(table(rows))
    print(f"\ntook {(time.time() - started) / 60:.1f} min; {machine()}")


def table(rows) -> str:
    lines = ["| target | trials | work in-process / Ray 1w / Ray 2w (s) | interval in-process → Ray 1w (s) "
             "| overhead per trial in-process → Ray 1w (ms) | Ray/in-process | throughput 1w → 2w (trials/min) "
             "| 2w/1w | start-up in-process / 1w / 2w (s) | load |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for target, n, steps, r in rows:
        local, one, two = r[0], r[1], r[2]
        loads = [x[k] for x in (local, one, two) for k in ("load_start", "load_end")]
        lines.append(
            f"| {target:g} s ({steps} steps) | {n} | {local['median_work_s']:.3f} / {one['median_work_s']:.3f} / "
            f"{two['median_work_s']:.3f} | {local['median_interval_s']:.3f} → {one['median_interval_s']:.3f} "
            f"| {local['median_overhead_s'] * 1000:.0f} → {one['median_overhead_s'] * 1000:.0f} "
            f"| {one['median_interval_s'] / local['median_interval_s']:.3f} "
            f"| {one['throughput_per_s'] * 60:.1f} → {two['throughput_per_s'] * 60:.1f} "
            f"| {two['throughput_per_s'] / one['throughput_per_s']:.2f} "
            f"| {local['startup_s']:.1f} / {one['startup_s']:.1f} / {two['startup_s']:.1f} "
            f"| {min(loads):.1f}–{max(loads):.1f} |")
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import ray

    return (f"{os.cpu_count()} logical cores ({cpu}), torch {torch.__version__}, ray {ray.__version__}, "
            f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
