"""Search efficiency: hypervolume against wall-clock time with and without the
sensitivity-based seed trials and Pareto-aware early stopping.

For each study and search seed, four otherwise identical searches run one after
the other (interleaved by seed, so machine load drifts spread over variants):

* ``plain``       no sensitivity scan, no seeds, no early stopping;
* ``seeds``       sensitivity scan + seed trials (4x ... 64x, then the bisecting round);
* ``early_stop``  Pareto-aware early stopping at the fine-tune rungs (default rule);
* ``both``        the two together;

and, when asked for with ``--variants``:

* ``exact``        seeds planned by the exact allocator (``sensitivity.allocator: exact``);
* ``refine``       seeds, then one trial in three refines the front (``sensitivity.refine_front: 3``);
* ``exact_refine`` the two together.

The clock of a search starts when its searching starts: the sensitivity scan and
the seed planning, then the trials. Wall-clock time is the headline (the aim is
stated in it); the CPU seconds of the search process are recorded beside it (one
process, one torch thread: what its wall-clock time would be on an idle machine,
less sensitive to other jobs on this shared machine). Loading data, the cached
baseline and the teacher's logits is the same for every variant and left out.
Hypervolume is the project's one definition (search/pareto.py): feasible, fully
fine-tuned trials only, so stopped trials never count.

With ``--rerun-stopped SEEDS`` (default: the first seed) every trial that early
stopping stopped is run again to the end without stopping, and the script
counts those that would have reached the final Pareto front of their study.

    nice -n 5 .venv/bin/python benchmarks/efficiency.py --studies digits lenet300 --seeds 0 1 2 --rerun-stopped 0 1 2

Running it again reuses finished searches (``runs/bench/efficiency/...``), so a
later call with more seeds only runs the missing ones and writes the tables
(``summary.md``) and the plots (``<study>_hv_time.html``) for all of them.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

from common import BENCH, SHARED_CACHE, log, machine, markdown_table, today  # noqa: E402  (chdir to ROOT)

import optuna  # noqa: E402
import torch  # noqa: E402

from compresstune.search.config import StudyConfig, load_config  # noqa: E402

OUT = BENCH / "efficiency"
STUDIES = {"digits": "studies/digits.yaml", "lenet300": "studies/mnist_lenet300.yaml"}
# variant -> (seed trials on, early stopping on, sensitivity overrides)
VARIANTS = {"plain": (False, False, {}), "seeds": (True, False, {}), "early_stop": (False, True, {}),
            "both": (True, True, {}), "exact": (True, False, {"allocator": "exact"}),
            "refine": (True, False, {"refine_front": 3}), "exact_refine": (True, False, {"allocator": "exact",
                                                                                          "refine_front": 3})}
DEFAULT_VARIANTS = ["plain", "seeds", "early_stop", "both"]


# -- running ----------------------------------------------------------------------------------------

def variant_config(study: str, variant: str, seed: int, trials: int | None) -> StudyConfig:
    seeds_on, stop_on, sensitivity = VARIANTS[variant]
    data = load_config(STUDIES[study]).to_dict()
    data["name"] = f"eff-{study}-{variant}-s{seed}"
    data["search"].update(seed=seed, out=str(OUT / study / f"{variant}-s{seed}"), storage=None)
    if trials:
        data["search"]["trials"] = trials
    data["sensitivity"]["enabled"] = seeds_on
    data["sensitivity"].update(sensitivity)
    data["early_stopping"]["enabled"] = stop_on
    return StudyConfig.from_dict(data)


def _fresh_out(out: Path) -> None:
    from compresstune.search._storage import RunLock

    if out.exists():
        with RunLock(out):  # refuses while another process runs this search (two calls sharing a seed)
            pass
        shutil.rmtree(out)
    out.mkdir(parents=True)
    SHARED_CACHE.mkdir(parents=True, exist_ok=True)
    (out / "cache").symlink_to(SHARED_CACHE.resolve(), target_is_directory=True)


def run_variant(cfg: StudyConfig) -> optuna.Study:
    """Run one search from scratch unless a finished one is on disk.

    Besides the wall-clock times in the study, it records the CPU seconds of
    this process at the end of each trial (and those of the scan and the seed
    planning): the search runs in one process on one torch thread, so its CPU
    time is what its wall-clock time would be on an otherwise idle machine,
    whatever the other jobs on this shared one are doing.
    """
    import compresstune.search._controller as controller_mod
    import compresstune.search._local as local_mod
    from compresstune.search._loop import TrialLoop
    from compresstune.search._controller import prepare
    from compresstune.search._storage import RunLock, load_study

    out = Path(cfg.search.out)
    done = out / "finished.json"
    if done.exists() and json.loads(done.read_text()).get("trials") == cfg.search.trials:
        return load_study(out)
    _fresh_out(out)
    cpu: dict[str, float] = {}
    before_search, record = controller_mod.before_search, TrialLoop.record

    def timed_before(session):
        c0 = time.process_time()
        before_search(session)
        cpu["overhead"] = time.process_time() - c0

    def timed_record(loop, key, outcome):
        number = loop.live[key].number
        record(loop, key, outcome)
        cpu[str(number)] = time.process_time() - cpu["start"]

    t0 = time.time()
    controller_mod.before_search, TrialLoop.record = timed_before, timed_record
    try:
        with RunLock(out):
            session = prepare(cfg, out, log=lambda m: None)
            t1 = time.time()
            cpu["start"] = time.process_time()
            local_mod.run_local(session, progress=False)
    finally:
        controller_mod.before_search, TrialLoop.record = before_search, record
    done.write_text(json.dumps({"prepare_s": t1 - t0, "run_s": time.time() - t1, "trials": cfg.search.trials,
                                "cpu_overhead_s": cpu.get("overhead", 0.0),
                                "cpu_s": {k: v for k, v in cpu.items() if k.isdigit()}}))
    return session.study


def warm_up(study: str) -> None:
    """A throwaway 3-trial search with every feature on, so that the first measured
    search does not pay this process's one-off costs (imports, first calls)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        data = variant_config(study, "both", 0, 3).to_dict()
        data["name"], data["search"]["out"] = "warm-up", tmp
        cfg = StudyConfig.from_dict(data)
        out = Path(tmp)
        SHARED_CACHE.mkdir(parents=True, exist_ok=True)
        (out / "cache").symlink_to(SHARED_CACHE.resolve(), target_is_directory=True)
        from compresstune.search._controller import prepare
        from compresstune.search._local import run_local

        run_local(prepare(cfg, out, log=lambda m: None), progress=False)


# -- measuring ----------------------------------------------------------------------------------------

def _steps(t, full: int) -> int:
    a = t.user_attrs
    if t.state.name != "COMPLETE" or a.get("rejected"):
        return 0
    rung = a.get("stopped_at_rung")
    return int(rung) if rung is not None else full


def timeline(study: optuna.Study, steps: int, out: Path) -> dict:
    """CPU clock, wall clock, hypervolume and cumulative fine-tune steps after each finished trial."""
    from compresstune.search.pareto import hypervolume_series, reference_point
    from compresstune.search.report import trials_frame

    attrs = study.user_attrs
    done = json.loads((out / "finished.json").read_text())
    wall_overhead = float((attrs.get("sensitivity") or {}).get("seconds", 0.0)) + float(attrs.get("seed_seconds", 0.0))
    series = hypervolume_series(trials_frame(study), reference_point(study), by="time")
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    cum, clock, wall, hv, used = 0, [], [], [], []
    for number, volume, elapsed in series.itertuples(index=False):
        cum += _steps(by_number[int(number)], steps)
        clock.append(done["cpu_overhead_s"] + done["cpu_s"][str(int(number))])
        wall.append(wall_overhead + float(elapsed))
        hv.append(float(volume))
        used.append(cum)
    trials = [by_number[n] for n in by_number]
    stopped = [t for t in trials if t.user_attrs.get("stopped_at_rung") is not None]
    return {"clock": clock, "wall": wall, "hv": hv, "steps": used, "overhead_cpu_s": done["cpu_overhead_s"],
            "trials": len(series), "stopped": len(stopped),
            "steps_saved": sum(steps - int(t.user_attrs["stopped_at_rung"]) for t in stopped),
            "seeds": sum(bool(t.user_attrs.get("seed_trial")) for t in trials),
            "first_seeds": sum(bool(t.user_attrs.get("seed_trial")) and t.user_attrs.get("seed_round", 1) == 1
                               for t in trials)}


def first_reach(tl: dict, target: float, clock_key: str = "clock") -> tuple[float, int] | None:
    for clock, hv, steps in zip(tl[clock_key], tl["hv"], tl["steps"]):
        if hv >= target - 1e-12:
            return clock, steps
    return None


def hv_at(tl: dict, t: float, clock_key: str = "clock") -> float:
    best = 0.0
    for clock, hv in zip(tl[clock_key], tl["hv"]):
        if clock <= t:
            best = hv
    return best


def rerun_stopped(cfg: StudyConfig, study: optuna.Study) -> dict:
    """Run every stopped trial's plan to the end; count those that would reach the final front."""
    import numpy as np

    from compresstune.plan import CompressionPlan
    from compresstune.search._controller import prepare
    from compresstune.search._storage import RunLock
    from compresstune.search._trial import constraints_for, run_trial
    from compresstune.search.pareto import front, pareto_mask

    out = Path(cfg.search.out)
    cached = out / "rerun.json"
    if cached.exists():
        return json.loads(cached.read_text())
    stopped = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("stopped_at_rung") is not None]
    with RunLock(out):
        session = prepare(cfg, out, log=lambda m: None)
    ctx = session.context
    fr = front(session.study)
    points = fr[["val_accuracy", "size_bytes"]].to_numpy(dtype=float)
    rows = []
    for t in stopped:
        outcome = run_trial(CompressionPlan.from_json(t.user_attrs["plan"]), ctx)
        if outcome.state != "complete":
            rows.append({"number": t.number, "failed": outcome.fail_reason})
            continue
        acc, size = outcome.values[0], outcome.values[1]
        cons = constraints_for(ctx.settings, acc, int(size))
        feasible = all(v <= 0 for k, v in cons.items() if k != "stopped")
        both = np.vstack([points, [[acc, size]]]) if len(points) else np.array([[acc, size]])
        on_front = feasible and bool(pareto_mask(both, ["maximize", "minimize"])[-1])
        rows.append({"number": t.number, "rung": t.user_attrs["stopped_at_rung"], "rung_accuracy": t.values[0],
                     "final_accuracy": acc, "size_bytes": int(size), "feasible": feasible, "on_front": on_front})
    result = {"stopped": len(stopped), "on_front": sum(bool(r.get("on_front")) for r in rows), "trials": rows}
    cached.write_text(json.dumps(result, indent=1))
    return result


# -- reporting ----------------------------------------------------------------------------------------

def _fmt(xs, d: int = 2) -> str:
    return " / ".join("never" if not math.isfinite(x) else f"{x:.{d}f}" for x in xs)


def _median(xs) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def _ratio_to_reach(tl: dict, target: float, horizon: float, key: str) -> float:
    hit = first_reach(tl, target, key)
    return hit[0] / horizon if hit else math.inf


def summarise(seeds: list[int], tls: dict, reruns: dict, variants: list[str]) -> str:
    """One markdown row per variant; each cell lists the searches in seed order.

    Times are ratios to the plain search of the same seed: the wall-clock (and
    CPU) time a variant needs to reach the plain search's final hypervolume, over
    the plain search's whole time ("never": not within the trial budget).
    """
    rows = []
    plain_mean = sum(tls[("plain", s)]["hv"][-1] for s in seeds) / len(seeds)
    for variant in variants:
        finals, wall, cpu, steps_to, wall_mean, hv_half, after_seeds, at25 = [], [], [], [], [], [], [], []
        after_first = []
        stopped = saved = total_steps = 0
        for seed in seeds:
            tl, plain = tls[(variant, seed)], tls[("plain", seed)]
            target = plain["hv"][-1]
            finals.append(tl["hv"][-1])
            wall.append(_ratio_to_reach(tl, target, plain["wall"][-1], "wall"))
            cpu.append(_ratio_to_reach(tl, target, plain["clock"][-1], "clock"))
            hit = first_reach(tl, target)
            steps_to.append(hit[1] / plain["steps"][-1] if hit else math.inf)
            wall_mean.append(_ratio_to_reach(tl, plain_mean, plain["wall"][-1], "wall"))
            hv_half.append(hv_at(tl, 0.5 * plain["wall"][-1], "wall") / target if target > 0 else math.nan)
            after_seeds.append(tl["hv"][tl["seeds"] - 1] if tl["seeds"] else math.nan)
            first = tl.get("first_seeds", 0)
            after_first.append(tl["hv"][first - 1] if first else math.nan)
            at25.append(tl["hv"][min(25, len(tl["hv"])) - 1])
            stopped += tl["stopped"]
            saved += tl["steps_saved"]
            total_steps += tl["steps"][-1]
        rows.append([
            variant, f"{_fmt(finals, 4)} (mean {sum(finals) / len(finals):.4f})",
            f"{_fmt(wall)} (median {_median(wall):.2f})", _fmt(cpu), _fmt(steps_to),
            f"{_fmt(wall_mean)} (median {_median(wall_mean):.2f})", _fmt(hv_half),
            _fmt(after_first, 4) if tl.get("first_seeds") else "-", _fmt(after_seeds, 4) if tl["seeds"] else "-",
            _fmt(at25, 4),
            f"{stopped} ({saved:,} of {saved + total_steps:,} steps, {saved / max(1, saved + total_steps):.0%})",
        ])
    headers = ["variant", "final HV", "wall-clock to plain's final HV (x plain's)", "CPU time to it (x plain's)",
               "fine-tune steps to it (x plain's)", "wall-clock to the mean plain final HV (x plain's)",
               "HV at half of plain's wall-clock (x plain's final)", "HV after the first seed round",
               "HV after the seed trials", "HV after 25 trials",
               "stopped trials (fine-tune steps saved)"]
    lines = [markdown_table(headers, rows)]
    if reruns:
        n = sum(r["stopped"] for r in reruns.values())
        hits = sum(r["on_front"] for r in reruns.values())
        gains = [t["final_accuracy"] - t["rung_accuracy"] for r in reruns.values() for t in r["trials"]
                 if "final_accuracy" in t]
        where = ", ".join(f"{v} s{s}" for v, s in sorted(reruns))
        lines.append(f"\nStopped trials re-run to the end without stopping ({where}): {n} trials, **{hits}** of them "
                     f"would have reached the final front of their search"
                     + (f" (accuracy gained after the rung: median {_median(gains):+.3f}, "
                        f"max {max(gains):+.3f})." if gains else "."))
    return "\n".join(lines)


def plot(study_name: str, seeds: list[int], tls: dict, variants: list[str]) -> Path:
    import plotly.graph_objects as go

    fig = go.Figure()
    for variant in variants:
        for seed in seeds:
            tl = tls[(variant, seed)]
            fig.add_scatter(x=tl["wall"], y=tl["hv"], mode="lines", line_shape="hv", name=f"{variant} s{seed}",
                            legendgroup=variant)
    fig.update_layout(title=f"{study_name}: hypervolume against search time",
                      xaxis_title="wall-clock seconds of the search",
                      yaxis_title="hypervolume")
    path = OUT / f"{study_name}_hv_time.html"
    fig.write_html(path, include_plotlyjs="cdn")
    return path


def main(argv: list[str] | None = None) -> int:
    global OUT
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--studies", nargs="+", default=["digits"], choices=list(STUDIES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--trials", type=int, help="trials per search (default: the study file's)")
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS),
                   help="which searches to run beside `plain` (always run: the reference)")
    p.add_argument("--out", type=Path, default=OUT, help=f"where the searches live (default {OUT})")
    p.add_argument("--rerun-stopped", nargs="*", type=int, default=None,
                   help="seeds whose early-stopped trials are re-run to the end (default: the first seed)")
    args = p.parse_args(argv)
    OUT = args.out.resolve()
    variants = ["plain", *[v for v in args.variants if v != "plain"]]
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rerun_seeds = args.seeds[:1] if args.rerun_stopped is None else args.rerun_stopped
    started = time.time()
    report = [f"Date: {today()}  \nMachine: {machine()}"]
    results = {}
    warm_up(args.studies[0])
    for study_name in args.studies:
        tls, reruns = {}, {}
        for seed in args.seeds:
            for variant in variants:
                cfg = variant_config(study_name, variant, seed, args.trials)
                t0 = time.time()
                study = run_variant(cfg)
                tls[(variant, seed)] = timeline(study, cfg.finetune.steps, Path(cfg.search.out))
                tl = tls[(variant, seed)]
                log(f"{study_name} {variant} seed {seed}: {tl['trials']} trials, final HV {tl['hv'][-1]:.4f}, "
                    f"search {tl['clock'][-1]:.0f} s, {tl['stopped']} stopped ({time.time() - t0:.0f} s)")
                if VARIANTS[variant][1] and seed in rerun_seeds:
                    reruns[(variant, seed)] = rerun_stopped(cfg, study)
                    log(f"  re-run of {reruns[(variant, seed)]['stopped']} stopped trials: "
                        f"{reruns[(variant, seed)]['on_front']} would reach the front")
        cfg = variant_config(study_name, "plain", args.seeds[0], args.trials)
        head = (f"\n### {study_name} ({STUDIES[study_name]}, {cfg.search.trials} trials, {cfg.finetune.steps} "
                f"fine-tune steps, rungs every {cfg.finetune.eval_every}; search seeds {args.seeds})\n")
        report.append(head + summarise(args.seeds, tls, reruns, variants))
        results[study_name] = {f"{v}-s{s}": tl for (v, s), tl in tls.items()}
        results[study_name]["reruns"] = {f"{v}-s{s}": r for (v, s), r in reruns.items()}
        log(f"plot: {plot(study_name, args.seeds, tls, variants)}")
    cmd = "nice -n 10 .venv/bin/python benchmarks/efficiency.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report.insert(0, f"Command: `{cmd.strip()}` (took {(time.time() - started) / 60:.0f} min)  ")
    text = "\n".join(report)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (OUT / "summary.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
