"""Promotion to a longer fine-tune: what it changes on LeNet-300-100, at equal time.

For each search seed two searches of ``studies/mnist_lenet300.yaml`` run one
after the other (the study as shipped: sensitivity scan and seed trials on,
early stopping off):

* ``promotion``  100 trials, then one promotion round (``promotion.enabled``:
  the front's trials and the near misses, at most 5, fine-tuned again for
  800 steps instead of 200);
* ``default``    the same search without promotion, given more trials (130)
  so that it runs at least as long; it is read at the promotion search's end.

Both searches run in this one process on one torch thread, so the comparison
is made on the CPU seconds of the search (the scan, the seed planning and the
trials), which other jobs on this shared machine disturb far less than wall
time; wall time is reported beside it. Hypervolume is the project's one
definition (search/pareto.py): a promoted trial replaces its short trial. The
test accuracy of each search's largest feasible ratio is reported with its
Wilson 95% interval (10,000 test images).

    nice -n 10 .venv/bin/python benchmarks/promotion.py --seeds 0 1 2 3 4 5

Finished searches are reused (``runs/bench/promotion/...``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from common import BENCH, log, machine, markdown_table, today, wilson  # noqa: E402  (chdir to ROOT)

import optuna  # noqa: E402
import torch  # noqa: E402

import efficiency  # noqa: E402
from compresstune.search.config import StudyConfig, load_config  # noqa: E402

OUT = BENCH / "promotion"
STUDY = "studies/mnist_lenet300.yaml"
TRIALS = {"promotion": 100, "default": 130}
PROMOTION = {"enabled": True, "steps": 800, "max_trials": 5}


def config(variant: str, seed: int) -> StudyConfig:
    data = load_config(STUDY).to_dict()
    data["name"] = f"promo-{variant}-s{seed}"
    data["search"].update(seed=seed, out=str(OUT / f"{variant}-s{seed}"), storage=None, trials=TRIALS[variant])
    data["early_stopping"]["enabled"] = False
    if variant == "promotion":
        data["promotion"] = PROMOTION
    return StudyConfig.from_dict(data)


def at(tl: dict, t: float, key: str = "clock") -> int:
    """Index of the last finished trial by time ``t`` (-1: none)."""
    return max((i for i, c in enumerate(tl[key]) if c <= t), default=-1)


def best_ratio(study: optuna.Study, numbers: set[int] | None = None) -> dict:
    """The front point with the largest ratio (among ``numbers`` finished by then)."""
    from compresstune.search.pareto import front

    df = front(study)
    if numbers is not None:
        df = df[df["number"].isin(numbers)]
    if not len(df):
        return {}
    row = df.sort_values("ratio").iloc[-1]
    return {"number": int(row.number), "ratio": float(row.ratio), "val": float(row.val_accuracy),
            "test": float(row.test_accuracy)}


def promotion_changes(study: optuna.Study) -> dict:
    """How the promoted trials' validation accuracy moved against their short trials'."""
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    moves = [t.values[0] - by_number[int(t.user_attrs["promoted_from"])].values[0]
             for t in by_number.values() if t.user_attrs.get("promoted_from") is not None and t.values]
    return {"promoted": len(moves), "gained": sum(m > 0 for m in moves),
            "median_change": sorted(moves)[len(moves) // 2] if moves else float("nan")}


def measure(seed: int) -> dict:
    row = {}
    runs = {}
    for variant in ("promotion", "default"):
        cfg = config(variant, seed)
        t0 = time.time()
        study = efficiency.run_variant(cfg)
        tl = _timeline(study, cfg.finetune.steps, Path(cfg.search.out))
        runs[variant] = (study, tl)
        log(f"seed {seed} {variant}: {tl['trials']} finished, final HV {tl['hv'][-1]:.4f}, "
            f"{tl['clock'][-1]:.0f} CPU s ({time.time() - t0:.0f} s)")
    (p_study, p_tl), (d_study, d_tl) = runs["promotion"], runs["default"]
    end_cpu, end_wall = p_tl["clock"][-1], p_tl["wall"][-1]
    i = at(d_tl, end_cpu)
    j = at(d_tl, end_wall, "wall")
    changes = promotion_changes(p_study)
    before = p_tl["hv"][-(changes["promoted"] + 1)]  # the round runs after the last short trial
    d_numbers = set(d_tl["numbers"][: i + 1])
    row.update(
        seed=seed, promo_cpu_s=end_cpu, promo_wall_s=end_wall, promo_hv=p_tl["hv"][-1], promo_hv_before=before,
        default_hv_same_cpu=d_tl["hv"][i] if i >= 0 else 0.0, default_hv_same_wall=d_tl["hv"][j] if j >= 0 else 0.0,
        default_trials_same_cpu=i + 1, default_cpu_s=d_tl["clock"][-1], default_hv_end=d_tl["hv"][-1],
        default_ran_past=d_tl["clock"][-1] >= end_cpu, promo_best=best_ratio(p_study),
        default_best=best_ratio(d_study, d_numbers), **changes)
    return row


def _timeline(study: optuna.Study, steps: int, out: Path) -> dict:
    """efficiency.timeline, with the trial numbers in the order they finished."""
    from compresstune.search.pareto import hypervolume_series, reference_point
    from compresstune.search.report import trials_frame

    tl = efficiency.timeline(study, steps, out)
    series = hypervolume_series(trials_frame(study), reference_point(study), by="time")
    tl["numbers"] = [int(n) for n in series["number"]]
    return tl


def _pt(best: dict) -> str:
    if not best:
        return "—"
    lo, hi = wilson(round((1 - best["test"]) * 10_000), 10_000)
    return (f"#{best['number']}: {best['ratio']:.1f}x, val {best['val']:.4f}, test {best['test']:.4f} "
            f"[{1 - hi:.4f}, {1 - lo:.4f}]")


def summarise(rows: list[dict]) -> str:
    head = ["seed", "promotion: HV before the round → after", "default: HV at the same CPU time (trials)",
            "default: HV at the same wall time", "promoted (val gained / median Δ val)",
            "promotion: largest feasible ratio", "default: largest feasible ratio by then"]
    table = [[r["seed"], f"{r['promo_hv_before']:.4f} → {r['promo_hv']:.4f}",
              f"{r['default_hv_same_cpu']:.4f} ({r['default_trials_same_cpu']})"
              + ("" if r["default_ran_past"] else " (ran out first)"),
              f"{r['default_hv_same_wall']:.4f}",
              f"{r['promoted']} ({r['gained']} / {r['median_change'] * 100:+.2f} pt)",
              _pt(r["promo_best"]), _pt(r["default_best"])] for r in rows]
    ratios = [r["promo_hv"] / r["default_hv_same_cpu"] for r in rows if r["default_hv_same_cpu"] > 0]
    wins = sum(r["promo_hv"] > r["default_hv_same_cpu"] for r in rows)
    med = sorted(ratios)[len(ratios) // 2] if ratios else float("nan")
    return (markdown_table(head, table) + f"\n\nPromotion's final HV against the default search's at the same CPU "
            f"time: higher in {wins} of {len(rows)} seeds, median ratio {med:.3f}.\n")


def main(argv: list[str] | None = None) -> int:
    global OUT
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    OUT = args.out.resolve()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.time()
    efficiency.warm_up("lenet300")
    rows = [measure(seed) for seed in args.seeds]
    cmd = "nice -n 10 .venv/bin/python benchmarks/promotion.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = (f"Command: `{cmd.strip()}` (took {(time.time() - started) / 60:.0f} min)  \nDate: {today()}  \n"
            f"Machine: {machine()}\n\n" + summarise(rows))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(rows, indent=1, default=str))
    (OUT / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
