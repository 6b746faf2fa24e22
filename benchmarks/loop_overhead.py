"""The trial loop's own CPU time per trial, outside the trial body.

A real study (14 parameters: six Linear layers x sparsity and bits, plus the
distillation temperature and alpha) runs in-process on SQLite (or any storage
URL) with a 1-step fine-tune, so that the loop's bookkeeping is most of the
time. Process CPU time is split into:

* ``run_trial``: the trial body (apply, fine-tune, evaluate), excluded;
* ``sampler``: the sampler's own methods (``sample_relative``,
  ``sample_independent``, ``infer_relative_search_space``, ``before_trial``,
  ``after_trial``), reported apart;
* the rest: the loop (ask, suggest's storage writes, user attributes, tell,
  the progress line, the seed refiner).

It patches by name only, so it measures any checkout of compresstune: run it
with the code under test first on ``sys.path`` (``PYTHONPATH=/tmp/before``
measures the code before a change)::

    nice .venv/bin/python benchmarks/loop_overhead.py --trials 60 --repeats 3
    PYTHONPATH=/tmp/before nice .venv/bin/python benchmarks/loop_overhead.py --trials 60 --repeats 3 --label before

Prints one JSON line per repeat and a summary (medians, ms per trial).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch
from torch import nn

LAYERS = 6
WIDTH = 32


def make_data(n: int = 256, seed: int = 0):
    """Random 4-class data: the numbers do not matter, only the loop's work."""
    from compresstune.data import Split, Splits

    g = torch.Generator().manual_seed(seed)

    def split(k: int) -> Split:
        return Split(torch.randn(k, WIDTH, generator=g), torch.randint(0, 4, (k,), generator=g))

    return Splits(train=split(n), val=split(n // 2), test=split(n // 2), num_classes=4, name="random")


def make_model(*, data=None, cache_dir=None) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for i in range(LAYERS):
        layers += [nn.Linear(WIDTH, WIDTH if i < LAYERS - 1 else 4)]
        if i < LAYERS - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


def study_config(out: Path, trials: int, storage: str | None, sampler: str):
    from compresstune.search.config import StudyConfig

    return StudyConfig.model_validate({
        "name": "loop-overhead",
        "model": {"factory": f"{__name__}:make_model"},
        "data": {"factory": f"{__name__}:make_data"},
        "space": {"sparsity": {"low": 0.0, "high": 0.9}, "bits": [4, 8, 16, 32], "rank_fraction": 1.0},
        "finetune": {"steps": 1, "batch_size": 32, "eval_every": 1, "eval_batch_size": 256},
        "constraints": {"max_accuracy_drop": 1.0},
        "sensitivity": {"enabled": False},
        "search": {"trials": trials, "sampler": sampler, "seed": 0, "storage": storage, "out": str(out)},
    })


class Clock:
    """Accumulates process time spent inside wrapped callables (outermost calls only)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.depth = 0

    def wrap(self, fn):
        def timed(*args, **kwargs):
            if self.depth:
                return fn(*args, **kwargs)
            self.depth += 1
            t0 = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.process_time() - t0
                self.depth -= 1

        timed.__wrapped__ = fn
        return timed


def patch_run_trial(clock: Clock) -> None:
    """Wrap ``run_trial`` wherever a search module bound it by name."""
    import importlib
    import pkgutil

    import compresstune.search as search

    for info in pkgutil.iter_modules(search.__path__):
        try:
            importlib.import_module(f"compresstune.search.{info.name}")
        except ImportError:  # e.g. the Ray executor without ray
            continue
    original = sys.modules["compresstune.search._trial"].run_trial
    timed = clock.wrap(original)
    for name, module in list(sys.modules.items()):
        if name.startswith("compresstune.") and getattr(module, "run_trial", None) is original:
            module.run_trial = timed


def patch_sampler(clock: Clock) -> None:
    methods = ("sample_relative", "sample_independent", "infer_relative_search_space", "before_trial", "after_trial")
    for cls in (optuna.samplers.TPESampler, optuna.samplers.RandomSampler):
        for method in methods:
            if method in cls.__dict__:
                setattr(cls, method, clock.wrap(cls.__dict__[method]))


def one_run(trials: int, storage: str | None, sampler: str) -> dict:
    import compresstune
    from compresstune.search import run

    body, samp = Clock(), Clock()
    patch_run_trial(body)
    patch_sampler(samp)
    out = Path(tempfile.mkdtemp(prefix="loop-overhead-"))
    url = storage.replace("OUT", str(out)) if storage else None
    try:
        config = study_config(out, trials, url, sampler)
        # Preparation (baseline, storage) is not the loop: time only run_local/run_ray.
        import compresstune.search._controller as controller

        timed = {}
        execute = controller._execute

        def measured_execute(session, progress):
            t0, w0 = time.process_time(), time.perf_counter()
            body.seconds = samp.seconds = 0.0
            execute(session, progress)
            timed["cpu"], timed["wall"] = time.process_time() - t0, time.perf_counter() - w0

        controller._execute = measured_execute
        try:
            run(config, progress=False, log=lambda msg: None)
        finally:
            controller._execute = execute
    finally:
        shutil.rmtree(out, ignore_errors=True)
    loop = timed["cpu"] - body.seconds
    return {"code": str(Path(compresstune.__file__).resolve().parents[1]), "trials": trials,
            "storage": storage or "sqlite (default)", "sampler": sampler,
            "loop_ms_per_trial": 1000 * loop / trials, "sampler_ms_per_trial": 1000 * samp.seconds / trials,
            "loop_without_sampler_ms_per_trial": 1000 * (loop - samp.seconds) / trials,
            "run_trial_ms_per_trial": 1000 * body.seconds / trials, "wall_s": timed["wall"]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--storage", default=None, help="a storage URL; OUT is replaced by the run's folder "
                                                         "(e.g. journal:OUT/study.journal)")
    parser.add_argument("--sampler", default="tpe")
    parser.add_argument("--label", default="")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)
    rows = []
    for _ in range(args.repeats):
        row = one_run(args.trials, args.storage, args.sampler)
        row["label"] = args.label
        rows.append(row)
        print(json.dumps(row), flush=True)
    keys = ("loop_ms_per_trial", "sampler_ms_per_trial", "loop_without_sampler_ms_per_trial", "run_trial_ms_per_trial")
    print(json.dumps({"label": args.label, "median": {k: round(statistics.median(r[k] for r in rows), 2)
                                                      for k in keys}}))


if __name__ == "__main__":
    sys.modules.setdefault("loop_overhead", sys.modules["__main__"])
    __name__ = "loop_overhead"  # noqa: A001 - the factories are imported by this name
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
