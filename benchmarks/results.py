"""Results on converged baselines: the largest compression ratio within 1 point of the baseline,
and the front, for CIFAR-10 ResNet-20/56 and the SST-2 transformer (issue 17).

Each study is an ordinary compresstune search of the study file, with what a longer run would
change given on the command line (fine-tune steps, trials, the allocator, front refinement, the
full training split). Every choice is made on validation:

* the front is the study's feasible Pareto front on validation accuracy x packed size;
* the chosen point is the front trial with the largest size ratio whose validation accuracy is
  at most 1 point below the baseline's.

Then each front point (and the baseline) is scored once on the whole test split, with its 95%
Wilson interval, and the drop from the baseline with a paired 95% interval over the same test
examples (the mean of per-example differences +- 1.96 standard errors). Ratios are against the
float32 size of the baseline (``reference_bytes``), whatever dtype its checkpoint is stored in.

    nice -n 10 .venv/bin/python benchmarks/results.py --studies resnet20 --trials 30 --steps 150 \\
        --full-train --allocator exact --refine-front 3
    .venv/bin/python benchmarks/results.py --studies resnet20 --report-only

Results: ``runs/bench/results/<study>.md`` (and ``.json``); the study itself in
``runs/bench/results/<study>/``. Running it again resumes the search (only missing trials run).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

from common import BENCH, log, machine, markdown_table, run_study, study_config, today, wilson  # noqa: E402

import torch  # noqa: E402

import compresstune as ct  # noqa: E402
from compresstune.search import load_study  # noqa: E402
from compresstune.search._session import load_model_and_task  # noqa: E402
from compresstune.search.config import load_config  # noqa: E402
from compresstune.search.pareto import front  # noqa: E402
from compresstune.task import targets_of  # noqa: E402

OUT = BENCH / "results"  # --out
STUDIES = {"resnet20": "studies/cifar10_resnet20.yaml", "resnet56": "studies/cifar10_resnet56.yaml",
           "sst2": "studies/sst2_transformer.yaml"}
WITHIN = 0.01  # "within 1 point" of the baseline's validation accuracy


# -- the search ---------------------------------------------------------------------------------------

def config_for(name: str, args: argparse.Namespace, *, whole_test: bool = False):
    """The study file with the command line's changes (and, to score, its whole test split)."""
    path = STUDIES[name]
    kwargs = load_config(path).to_dict()["data"]["kwargs"]
    data_kwargs = {}
    if args.full_train and "train_size" in kwargs:
        data_kwargs["train_size"] = None
    if whole_test and "test_size" in kwargs:
        data_kwargs["test_size"] = None
    sections = {"sensitivity": {k: v for k, v in (("allocator", args.allocator),
                                                  ("refine_front", args.refine_front)) if v is not None}}
    if args.steps:
        sections["finetune"] = {"steps": args.steps, "eval_every": args.steps}
    search = {"out": str(OUT / name), "storage": None}
    if args.trials:
        search["trials"] = args.trials
    return study_config(path, name=f"results-{name}", data_kwargs=data_kwargs or None, sections=sections, **search)


def search(name: str, args: argparse.Namespace) -> float:
    """Run (or resume) the study; the wall-clock seconds of this call's search are added up in
    ``wall.json`` beside the study."""
    wall = OUT / name / "wall.json"
    spent = json.loads(wall.read_text()) if wall.exists() else []
    start = time.time()
    log(f"{name}: searching into {OUT / name}")
    try:
        run_study(config_for(name, args), quiet=False)
    finally:  # an interrupted call counts too
        spent.append({"seconds": time.time() - start, "command": args.command})
        wall.write_text(json.dumps(spent))
    return sum(s["seconds"] for s in spent)


def _recorded(name: str) -> tuple[float | None, str | None]:
    """The search's wall-clock seconds over all calls so far, and the command of the last one."""
    wall = OUT / name / "wall.json"
    if not wall.exists():
        return _study_span(name), None
    spent = json.loads(wall.read_text())
    return sum(s["seconds"] for s in spent), spent[-1].get("command")


def _study_span(name: str) -> float | None:
    """Seconds from the study's start to its last finished trial (for a search run before
    ``wall.json`` was kept)."""
    import datetime as dt

    study = load_study(OUT / name)
    started = study.user_attrs.get("started_at")
    ends = [t.datetime_complete for t in study.trials if t.datetime_complete is not None]
    if not started or not ends:
        return None
    return (max(ends) - dt.datetime.fromisoformat(started).replace(tzinfo=None)).total_seconds()


# -- scoring on test ------------------------------------------------------------------------------------

@torch.no_grad()
def correct(model, task) -> torch.Tensor:
    """Per-example correctness (0/1) of ``model`` on the whole test split."""
    model.eval()
    hits = [(task.outputs(model, b).argmax(-1) == targets_of(b, task)).flatten().float() for b in task.batches("test")]
    return torch.cat(hits)


def paired_drop(base: torch.Tensor, other: torch.Tensor) -> tuple[float, float, float]:
    """Mean of ``other - base`` over the same examples and its 95% interval."""
    d = other - base
    se = float(d.std(unbiased=True)) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    mean = float(d.mean())
    return mean, mean - 1.96 * se, mean + 1.96 * se


def _accuracy(hits: torch.Tensor) -> dict:
    n, right = len(hits), int(hits.sum())
    low, high = wilson(right, n)
    return {"test": right / n, "test_low": low, "test_high": high, "test_n": n}


def score(name: str, args: argparse.Namespace) -> dict:
    study = load_study(OUT / name)
    base = study.user_attrs["baseline"]
    model, task = load_model_and_task(config_for(name, args, whole_test=True), OUT / name)
    base_hits = correct(model, task)
    rows = []
    for p in front(study).itertuples():
        t = study.trials[int(p.number)]
        small = ct.load(OUT / name / t.user_attrs["artifact"], into=copy.deepcopy(model))
        hits = correct(small, task)
        drop, low, high = paired_drop(base_hits, hits)
        rows.append({"trial": t.number, "ratio": t.user_attrs["ratio"], "bytes": t.user_attrs["size_bytes"],
                     "val": t.user_attrs["val_accuracy"],
                     "val_drop": t.user_attrs["val_accuracy"] - base["val_accuracy"],
                     "test_drop": drop, "test_drop_low": low, "test_drop_high": high, "tag": _tag(t),
                     **_accuracy(hits)})
        log(f"{name}: trial {t.number} {rows[-1]['ratio']:.1f}x test {rows[-1]['test']:.4f}")
    within = [r for r in rows if r["val_drop"] >= -WITHIN - 1e-12]
    chosen = max(within, key=lambda r: r["ratio"]) if within else None
    baseline = {"val": base["val_accuracy"], "bytes": base["reference_bytes"], **_accuracy(base_hits)}
    return {"study": name, "baseline": baseline,
            "front": rows, "chosen": chosen and chosen["trial"], "trials": len(study.trials),
            "complete": sum(t.state.name == "COMPLETE" for t in study.trials)}


def _tag(trial) -> str:
    a = trial.user_attrs
    if a.get("seed_trial"):
        return f"seed {a.get('seed_target_ratio', 0):.0f}x"
    if a.get("refined_from") is not None:
        return f"refined from #{a['refined_from']}"
    return ""


# -- the table ----------------------------------------------------------------------------------------------

def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def render(result: dict, command: str, wall_s: float | None) -> str:
    b, chosen = result["baseline"], result["chosen"]
    rows = [("baseline", "1.0x", f"{b['bytes']:,}", _pct(b["val"]), "-",
             f"{_pct(b['test'])} [{_pct(b['test_low'])}, {_pct(b['test_high'])}]", "-", "float32")]
    for r in result["front"]:
        mark = " **(chosen)**" if r["trial"] == chosen else ""
        rows.append((f"#{r['trial']}{mark}", f"{r['ratio']:.1f}x", f"{r['bytes']:,}", _pct(r["val"]),
                     f"{100 * r['val_drop']:+.2f}",
                     f"{_pct(r['test'])} [{_pct(r['test_low'])}, {_pct(r['test_high'])}]",
                     f"{100 * r['test_drop']:+.2f} [{100 * r['test_drop_low']:+.2f}, {100 * r['test_drop_high']:+.2f}]",
                     r["tag"]))
    table = markdown_table(["point", "ratio (x float32)", "packed bytes", "val acc %", "val drop (pts)",
                            f"test acc % [95%] (n={b['test_n']:,})", "test drop (pts) [paired 95%]", "origin"], rows)
    pick = next((r for r in result["front"] if r["trial"] == chosen), None)
    head = (f"Largest ratio within {100 * WITHIN:.0f} point of the baseline on validation: "
            + (f"**{pick['ratio']:.1f}x** (trial {chosen}; test {100 * pick['test_drop']:+.2f} points, paired 95% "
               f"[{100 * pick['test_drop_low']:+.2f}, {100 * pick['test_drop_high']:+.2f}])" if pick else "none"))
    wall = f"{wall_s / 60:.0f} min" if wall_s else "not recorded"
    return (f"{result['study']}: {result['complete']} of {result['trials']} trials complete; search wall time {wall}; "
            f"{today()}; {machine()}\n\nCommand: `{command}`\n\n{head}\n\n{table}\n")


def _set_out(path: Path) -> None:
    global OUT
    OUT = path.resolve()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--studies", nargs="+", default=["resnet20"], choices=list(STUDIES))
    p.add_argument("--trials", type=int, default=None, help="search.trials (default: the study file's)")
    p.add_argument("--steps", type=int, default=None, help="finetune.steps, evaluated at the end (default: the file's)")
    p.add_argument("--full-train", action="store_true", help="fine-tune on the whole training split (no train_size)")
    p.add_argument("--allocator", choices=["greedy", "exact"], default=None)
    p.add_argument("--refine-front", type=int, default=None, help="sensitivity.refine_front (default: the file's)")
    p.add_argument("--report-only", action="store_true", help="score and tabulate what has run")
    p.add_argument("--out", type=Path, default=OUT, help=f"folder of the studies and tables (default {OUT})")
    args = p.parse_args(argv)
    args.command = "nice -n 10 .venv/bin/python benchmarks/results.py " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]) if a != "--report-only")
    _set_out(args.out)
    torch.set_num_threads(1)
    for name in args.studies:
        if not args.report_only:
            search(name, args)
        wall_s, command = _recorded(name)
        result = score(name, args)
        text = render(result, command or args.command, wall_s)
        (OUT / f"{name}.md").write_text(text)
        (OUT / f"{name}.json").write_text(json.dumps({**result, "wall_s": wall_s, "command": command}, indent=2))
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
