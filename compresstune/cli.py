"""The ``compresstune`` command: run | report | export | status | finetune | discover | sensitivity | plan.

Failures exit non-zero with a one-line reason (``compresstune: error: ...``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compresstune", description="Search per-layer compression of a PyTorch model.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run or resume a study")
    run.add_argument("study", help="study YAML file, e.g. studies/digits.yaml")
    run.add_argument("--trials", type=int, help="number of COMPLETE trials wanted (resuming counts earlier ones)")
    run.add_argument("--out", help="output folder (default: the study's search.out)")
    run.add_argument("--storage", help="Optuna storage URL (default: sqlite:///OUT/study.db)")
    run.add_argument("--sampler", choices=["tpe", "nsga2", "gp", "random"])
    run.add_argument("--seed", type=int)
    run.add_argument("--workers", type=int, help="run trials on a local Ray cluster with N workers")
    run.add_argument("--address", help="run trials on an existing Ray cluster: auto or HOST:PORT (use `ray job submit` for remote clusters)")
    run.add_argument("--new-study", action="store_true", help="start a new study if the config changed")
    run.add_argument("--no-progress", action="store_true",
                     help="one line per finished trial instead of the bar (the default when stderr is not a terminal)")

    rep = sub.add_parser("report", help="write DIR/report.html, trials.csv and pareto.csv")
    rep.add_argument("dir")

    exp = sub.add_parser("export", help="export one trial's compressed model")
    exp.add_argument("dir")
    exp.add_argument("--trial", type=int, required=True)
    exp.add_argument("--output", required=True, help="where to copy the .ctz artifact (or write the .onnx file)")
    exp.add_argument("--format", choices=["ctz", "onnx"], default="ctz",
                     help="ctz: the packed artifact (default); onnx: one ONNX file, weights at their codes")
    exp.add_argument("--activations", choices=["none", "int8"], default="none",
                     help="with --format onnx: int8 static activations calibrated on the validation batches")
    exp.add_argument("--squash", metavar="FILE", help="also write the squashed plain nn.Module (torch.save) here")
    exp.add_argument("--no-check", action="store_true", help="skip reloading and re-scoring the artifact")
    exp.add_argument("--force", action="store_true", help="export a trial that breaks a constraint (infeasible)")

    fin = sub.add_parser("finetune", help="fine-tune one trial's compressed model longer and save it")
    fin.add_argument("dir")
    fin.add_argument("--trial", type=int, required=True)
    budget = fin.add_mutually_exclusive_group(required=True)
    budget.add_argument("--steps", type=int, help="fine-tune steps")
    budget.add_argument("--epochs", type=float, help="passes over the training batches")
    fin.add_argument("--lr", type=float, help="learning rate (default: the study's finetune.lr)")
    fin.add_argument("--output", required=True, help="where to write the fine-tuned .ctz artifact")

    st = sub.add_parser("status", help="progress and the current front")
    st.add_argument("dir")

    dis = sub.add_parser("discover", help="the model's compressible layers as a table (kind, shape, operators)")
    dis.add_argument("study", help="study YAML file, e.g. studies/digits.yaml")
    dis.add_argument("--out", help="output folder (default: the study's search.out; baselines are cached there)")

    sen = sub.add_parser("sensitivity", help="per-layer accuracy drop without fine-tuning (cached in OUT/sensitivity.json)")
    sen.add_argument("study", help="study YAML file, e.g. studies/digits.yaml")
    sen.add_argument("--out", help="output folder (default: the study's search.out)")
    sen.add_argument("--force", action="store_true", help="scan again even when the cached scan matches")

    pla = sub.add_parser("plan", help="the plan for a size, MACs or bit-operations budget, by exact allocation over "
                                      "the sensitivity scan (no training)")
    pla.add_argument("study", help="study YAML file, e.g. studies/digits.yaml")
    budget = pla.add_mutually_exclusive_group(required=True)
    budget.add_argument("--ratio", type=float, help="times smaller than the float32 model, e.g. 32")
    budget.add_argument("--max-size", type=int, help="packed size budget in bytes")
    budget.add_argument("--max-macs", type=float, help="dense multiply-accumulates per example, e.g. 2e7 "
                                                       "(ranks and structured pruning)")
    budget.add_argument("--max-bops", type=float, help="bit-operations per example (MACs of nonzero weights x weight "
                                                       "bits x the study's activation_bits), e.g. 1e9")
    pla.add_argument("--out", help="output folder (default: the study's search.out; the scan is cached there)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return {"run": _run, "report": _report, "export": _export, "status": _status,
                "sensitivity": _sensitivity, "discover": _discover, "plan": _plan,
                "finetune": _finetune}[args.command](args)
    except KeyboardInterrupt:
        print("compresstune: interrupted; nothing is left RUNNING. Run the same command again to resume.",
              file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, ImportError) as exc:
        first = str(exc).strip().splitlines()
        print(f"compresstune: error: {first[0] if first else type(exc).__name__}", file=sys.stderr)
        for line in first[1:]:
            print(f"  {line}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from compresstune.search.config import ensure_import_paths, load_config
    from compresstune.search import run

    ensure_import_paths(args.study)
    overrides = {k: getattr(args, k) for k in ("trials", "out", "storage", "sampler", "seed", "workers", "address")
                 if getattr(args, k) is not None}
    config = load_config(args.study, **overrides)
    study, front = run(config, new_study=args.new_study, progress=not args.no_progress,
                       study_file=str(Path(args.study).resolve()))
    out = Path(config.search.out).resolve()
    from compresstune.search._records import metric_of

    print(_front_table(front, metric_of(study.user_attrs)[0]))
    print(f"\nreport: {out / 'report.html'}")
    return 0


def _report(args) -> int:
    from compresstune.search import load_study
    from compresstune.search.report import write_report

    path = write_report(load_study(args.dir), Path(args.dir))
    print(f"report: {path}\ntrials: {Path(args.dir) / 'trials.csv'}")
    return 0


def _export(args) -> int:
    from compresstune.search import export_trial

    if args.format == "onnx":
        if args.squash:
            raise ValueError("`--squash` goes with --format ctz; got --format onnx.")
        from compresstune.search._export import export_trial_onnx

        print(export_trial_onnx(args.dir, args.trial, args.output, activations=args.activations, force=args.force))
        return 0
    if args.activations != "none":
        raise ValueError(f"`--activations` needs --format onnx; got --format {args.format}.")

    info = export_trial(args.dir, args.trial, args.output, squash_to=args.squash, check=not args.no_check,
                        force=args.force)
    print(info)
    return 0


def _finetune(args) -> int:
    from compresstune.search._finetune_trial import finetune_trial

    print(finetune_trial(args.dir, args.trial, args.output, steps=args.steps, epochs=args.epochs, lr=args.lr,
                         log=lambda m: print(m, file=sys.stderr, flush=True)))
    return 0


def _status(args) -> int:
    from compresstune.search import load_study, status_text

    print(status_text(load_study(args.dir), Path(args.dir)))
    return 0


def _discover(args) -> int:
    from compresstune.layers import discover
    from compresstune.search._session import load_model_and_task
    from compresstune.search.config import ensure_import_paths, load_config

    ensure_import_paths(args.study)
    config = load_config(args.study, **({"out": args.out} if args.out else {}))
    model, _ = load_model_and_task(config, Path(config.search.out).resolve())
    print(discover(model, trace=True).table())
    return 0


def _sensitivity(args) -> int:
    from compresstune.search.config import ensure_import_paths, load_config
    from compresstune.search._sensitivity import format_table, scan_study

    ensure_import_paths(args.study)
    config = load_config(args.study, **({"out": args.out} if args.out else {}))
    table, path, cached = scan_study(config, force=args.force, log=lambda m: print(m, file=sys.stderr))
    print(format_table(table))
    print(f"\nsensitivity: {path}{' (cached)' if cached else ''}")
    return 0


def _plan(args) -> int:
    from compresstune.search._allocate import format_allocation, plan_study
    from compresstune.search.config import ensure_import_paths, load_config

    ensure_import_paths(args.study)
    config = load_config(args.study, **({"out": args.out} if args.out else {}))
    alloc, space = plan_study(config, ratio=args.ratio, max_bytes=args.max_size, max_macs=args.max_macs,
                              max_bops=args.max_bops, log=lambda m: print(m, file=sys.stderr))
    print(format_allocation(alloc, space))
    return 0


def _front_table(front, metric: str = "accuracy") -> str:
    if front is None or len(front) == 0:
        return "no feasible Pareto-optimal trials yet"
    third = [c for c in front.columns if c.startswith("values_")][2:]  # a third objective, e.g. values_onnx_bytes
    cols = [c for c in ("number", "val_accuracy", "test_accuracy", "size_bytes", "ratio", *third) if c in front.columns]
    shown = front[cols].rename(columns={"val_accuracy": f"val_{metric}", "test_accuracy": f"test_{metric}",
                                        **{c: c.removeprefix("values_") for c in third}})
    return "Pareto front (feasible):\n" + shown.to_string(index=False, float_format=lambda v: f"{v:.4f}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
