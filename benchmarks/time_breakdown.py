"""Where the time goes: per-trial apply, fine-tune, evaluate and search overhead.

Runs a short study of each study file (in ``runs/bench/time_breakdown/<name>``,
resumable) and reports medians over its trials of the timings every trial
records (``user_attrs["timings"]``: ``apply_s`` = apply the plan and pack the
artifact to measure its size, ``finetune_s`` = the KD recovery fine-tune
including its periodic validation, ``eval_s`` = final validation + test
accuracy, ``total_s``), and of the search overhead: the wall time between one
trial's completion and the next one's, minus the next trial's ``total_s``
(sampling, the plan's decoding, writing the artifact and the storage).
The one-off set-up (data, baseline, teacher soft targets) is timed separately.

    nice -n 10 .venv/bin/python benchmarks/time_breakdown.py                 # all studies
    nice -n 10 .venv/bin/python benchmarks/time_breakdown.py --study digits mnist_lenet300
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys

from common import BENCH, log, machine, markdown_table, run_study, study_config, today

HERE = BENCH / "time_breakdown"
# study file stem -> trials in the short run
TRIALS = {"digits": 20, "mnist_lenet300": 20, "mnist_lenet5": 10, "cifar10_resnet20": 6, "sst2_transformer": 10}


def run(name: str, trials: int) -> dict:
    cfg = study_config(f"studies/{name}.yaml", name=f"tb-{name}", trials=trials, seed=0, out=str(HERE / name))
    setup_file = HERE / name / "setup.json"
    started = datetime.datetime.now()  # Optuna stores naive local times
    study = run_study(cfg)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not setup_file.exists() and done:  # first call: set-up = wall time before the first trial started
        setup = (min(t.datetime_start for t in done) - started).total_seconds()
        setup_file.write_text(json.dumps({"setup_s": setup}))
    timings = [t.user_attrs["timings"] for t in sorted(done, key=lambda t: t.number)]
    ends = [t.datetime_complete for t in sorted(done, key=lambda t: t.number)]
    overhead = [(ends[i] - ends[i - 1]).total_seconds() - timings[i]["total_s"] for i in range(1, len(done))]
    med = {k: statistics.median(t[k] for t in timings) for k in ("apply_s", "finetune_s", "eval_s", "total_s")}
    med["overhead_s"] = statistics.median(overhead) if overhead else float("nan")
    med["setup_s"] = json.loads(setup_file.read_text())["setup_s"] if setup_file.exists() else float("nan")
    med["trials"] = len(done)
    med["finetune"] = cfg.finetune.model_dump()
    log(f"{name}: {med}")
    return med


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", nargs="+", choices=list(TRIALS), default=list(TRIALS))
    args = p.parse_args(argv)
    results = {}
    results_file = HERE / "results.json"
    if results_file.exists():
        results = json.loads(results_file.read_text())
    for name in args.study:
        results[name] = run(name, TRIALS[name])
        HERE.mkdir(parents=True, exist_ok=True)
        results_file.write_text(json.dumps(results, indent=1))
    rows = []
    for name, m in results.items():
        share = m["finetune_s"] / m["total_s"] if m["total_s"] else float("nan")
        wall = m["total_s"] + m["overhead_s"]
        rows.append([name, m["trials"], f"{m['finetune']['steps']} × {m['finetune']['batch_size']}",
                     f"{m['apply_s']:.2f}", f"{m['finetune_s']:.2f}", f"{m['eval_s']:.2f}", f"{m['total_s']:.2f}",
                     f"{m['overhead_s']:.2f}", f"{wall:.2f}", f"{100 * share:.0f}%",
                     f"{100 * m['overhead_s'] / wall:.1f}%", f"{m['setup_s']:.0f}"])
    print(f"<!-- {today()}; {machine()} -->")
    print(markdown_table(["study", "trials", "fine-tune steps × batch", "apply s", "fine-tune s", "evaluate s",
                          "trial total s", "search overhead s", "wall per trial s", "fine-tune share",
                          "overhead share", "one-off set-up s"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
