"""Against Deep Compression (Han et al., ICLR 2016, Table 1) on LeNet-300-100 and LeNet-5.

1. Search: the study file (studies/mnist_<arch>.yaml) with the constraints a
   Deep-Compression-sized target asks for: a minimum compression ratio
   (``--min-ratio``; plans below it are rejected at no training cost) and an
   accuracy budget on the validation split after the trial's short fine-tune
   (``--max-drop``). One study in ``runs/bench/deep_compression/<arch>/search``
   (resumable).
2. Pick: among the feasible trials, the largest compression ratio (validation only).
3. Final fine-tune of that plan from the baseline: ``--epochs`` epochs of KD
   (the trial's temperature and alpha) with Adam at lr 1e-3, then ``--tail-epochs``
   at 1e-4; the last weights are kept (no selection on the test set).
4. Report: the real artifact's size (``ct.save``; the file is loaded back and
   re-scored), the ratio against the fp32 reference, the test error with a 95%
   Wilson interval, the budgets, and the per-layer plan beside the paper's
   per-layer pruning rates.

    nice -n 10 .venv/bin/python benchmarks/deep_compression.py --arch lenet300
    nice -n 10 .venv/bin/python benchmarks/deep_compression.py --arch lenet5 --trials 60
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from common import BENCH, log, machine, markdown_table, run_study, study_config, today, trials_table, wilson

import torch

import compresstune as ct
from compresstune.objectives import evaluate, recover, teacher_outputs
from compresstune.search._session import load_model_and_task

HERE = BENCH / "deep_compression"
# Deep Compression, Table 1 and Tables 2-3 (weights kept after pruning, per layer).
PAPER = {
    "lenet300": {"file": "studies/mnist_lenet300.yaml", "ratio": 40, "err_base": 1.64, "err_comp": 1.58,
                 "kept": {"fc1": 0.08, "fc2": 0.09, "fc3": 0.26}},
    "lenet5": {"file": "studies/mnist_lenet5.yaml", "ratio": 39, "err_base": 0.80, "err_comp": 0.74,
               "kept": {"conv1": 0.66, "conv2": 0.12, "fc1": 0.08, "fc2": 0.19}},
}


def search(arch: str, trials: int, min_ratio: float, max_drop: float, seed: int, steps: int | None):
    sections = {"constraints": {"max_accuracy_drop": max_drop, "min_ratio": min_ratio},
                "space": {"sparsity": {"low": 0.0, "high": 0.99}}}
    if steps is not None:
        sections["finetune"] = {"steps": steps, "eval_every": steps}
    cfg = study_config(PAPER[arch]["file"], name=f"dc-{arch}", trials=trials, seed=seed,
                       out=str(HERE / arch / "search"), sections=sections)
    t0 = time.perf_counter()
    study = run_study(cfg)
    log(f"{arch}: search has {len(study.trials)} trials ({time.perf_counter() - t0:.0f} s this call)")
    return cfg, study


def pick(study):
    df = trials_table(study)
    ok = df[(df["state"] == "COMPLETE") & df["feasible"].astype(bool) & df["rejected"].isna()]
    if ok.empty:
        raise SystemExit("no feasible trial: raise --trials or loosen --max-drop / --min-ratio")
    return ok.sort_values(["ratio", "val_accuracy"], ascending=False).iloc[0]


def final_finetune(cfg, trial_row, epochs: int, tail_epochs: int, seed: int) -> dict:
    torch.set_num_threads(1)
    out = HERE / cfg.name.removeprefix("dc-")
    model, task = load_model_and_task(cfg, out / "search")
    train_x, _ = task.train_tensors()
    plan = ct.CompressionPlan.from_json(trial_row["plan"])
    student = ct.apply(model, plan)
    f = cfg.finetune
    soft = teacher_outputs(model, task, batch_size=f.eval_batch_size)
    per_epoch = math.ceil(len(train_x) / f.batch_size)
    t0 = time.perf_counter()
    curve = []
    for phase, (n, lr) in enumerate(((epochs, f.lr), (tail_epochs, f.lr / 10))):
        if n <= 0:
            continue
        res = recover(student, model, task, temperature=plan.temperature, alpha=plan.alpha,
                      steps=n * per_epoch, lr=lr, optimizer=f.optimizer, eval_every=per_epoch,
                      seed=seed + phase, cached_teacher=soft)
        curve += [(s + (epochs * per_epoch if phase else 0), a) for s, a in res.curve]
        log(f"phase {phase}: {n} epochs at lr {lr:g}: val {res.curve[-1][1]:.4f}")
    seconds = time.perf_counter() - t0
    path = out / "final.ctz"
    nbytes = ct.save(student, path)
    assert os.path.getsize(path) == nbytes == ct.packed_size(student)
    fresh = type(model)(num_classes=task.num_classes)
    loaded = ct.load(path, into=fresh).eval()
    test_acc = evaluate(loaded, task, "test")
    ref = ct.reference_size(model)
    return {
        "trial": int(trial_row["number"]), "plan": json.loads(trial_row["plan"]),
        "search_val_accuracy": float(trial_row["val_accuracy"]), "search_ratio": float(trial_row["ratio"]),
        "final_val_accuracy": evaluate(loaded, task, "val"),
        "test_accuracy": test_acc, "test_n": sum(len(y) for _, y in task.batches("test")),
        "baseline_val_accuracy": evaluate(model, task, "val"),
        "baseline_test_accuracy": evaluate(model, task, "test"),
        "artifact_bytes": nbytes, "reference_bytes": ref, "ratio": ref / nbytes,
        "final_epochs": epochs, "final_tail_epochs": tail_epochs, "final_steps": (epochs + tail_epochs) * per_epoch,
        "final_batch_size": f.batch_size, "final_seconds": seconds, "curve": curve,
        "layer_shapes": {name: _shape(model.get_submodule(name)) for name in plan.layers},
    }


def _shape(module) -> list[int]:
    w = module.weight
    return [int(w.shape[0]), int(w[0].numel())]


def render(arch: str, res: dict, search_info: dict) -> str:
    paper = PAPER[arch]
    n = res["test_n"]
    err = 1 - res["test_accuracy"]
    base_err = 1 - res["baseline_test_accuracy"]
    lo, hi = wilson(round(err * n), n)
    blo, bhi = wilson(round(base_err * n), n)
    rows = [
        ["Deep Compression (paper)", f"{paper['err_base']:.2f}%", f"{paper['err_comp']:.2f}%", "—",
         f"{paper['ratio']}×", "pruning + 5-8-bit shared weights + Huffman; long retraining"],
        ["compresstune (this run)", f"{100 * base_err:.2f}% [{100 * blo:.2f}, {100 * bhi:.2f}]",
         f"{100 * err:.2f}% [{100 * lo:.2f}, {100 * hi:.2f}]",
         f"{100 * (err - base_err):+.2f}", f"{res['ratio']:.1f}×",
         f"{res['artifact_bytes']:,} B artifact vs {res['reference_bytes']:,} B fp32"],
    ]
    table = markdown_table(["", "baseline top-1 error (95% CI)", "compressed top-1 error (95% CI)",
                            "Δ error (pt)", "size ratio", "notes"], rows)
    layers = []
    for name, lp in res["plan"]["layers"].items():
        shape = res["layer_shapes"][name]  # (out, in·k·k) of the original weight
        stored = lp["rank"] * (shape[0] + shape[1]) if lp.get("rank") else shape[0] * shape[1]
        nonzeros = round((1 - lp["sparsity"]) * stored)
        paper_kept = paper["kept"].get(name)
        layers.append([name, f"{shape[0] * shape[1]:,}", lp.get("rank") or "—", f"{stored:,}",
                       f"{100 * (1 - lp['sparsity']):.1f}%", f"{nonzeros:,}",
                       f"{100 * nonzeros / (shape[0] * shape[1]):.1f}%",
                       "—" if paper_kept is None else f"{100 * paper_kept:.0f}%", lp["bits"]])
    plan_table = markdown_table(["layer", "weights", "rank (ours)", "stored weights (ours)", "kept of stored (ours)",
                                 "nonzeros (ours)", "nonzeros / weights (ours)", "kept (paper)", "bits (ours)"],
                                layers)
    return "\n".join([
        table, "",
        f"Search: {search_info['trials']} trials ({search_info['rejected']} rejected by the size budget without "
        f"training, {search_info['feasible']} feasible), {search_info['trial_seconds']:.0f} s of trial time. "
        f"Each trial fine-tuned {search_info['steps']} steps of {res['final_batch_size']}. "
        f"Picked trial {res['trial']}: validation accuracy {res['search_val_accuracy']:.4f} after the trial's "
        f"short fine-tune (baseline {res['baseline_val_accuracy']:.4f}), ratio {res['search_ratio']:.1f}×. "
        f"Final fine-tune: {res['final_epochs']} + {res['final_tail_epochs']} epochs "
        f"({res['final_steps']:,} steps of {res['final_batch_size']}; lr 1e-3 then 1e-4), "
        f"{res['final_seconds']:.0f} s; validation accuracy after it {res['final_val_accuracy']:.4f}. "
        f"Distillation: T = {res['plan']['temperature']:.2f}, alpha = {res['plan']['alpha']:.2f}.",
        "", plan_table,
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=list(PAPER), required=True)
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--min-ratio", type=float, default=30.0)
    p.add_argument("--max-drop", type=float, default=0.005)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--tail-epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, help="fine-tune steps per search trial (default: the study file's)")
    p.add_argument("--render-only", action="store_true", help="print the tables of the last result.json")
    args = p.parse_args(argv)
    if args.render_only:
        res = json.loads((HERE / args.arch / "result.json").read_text())
        print(render(args.arch, res, res["search"]))
        return 0
    log(f"machine: {machine()}")
    cfg, study = search(args.arch, args.trials, args.min_ratio, args.max_drop, args.seed, args.steps)
    df = trials_table(study)
    search_info = {"trials": len(df), "rejected": int(df["rejected"].notna().sum()),
                   "feasible": int((df["feasible"].astype(bool) & df["rejected"].isna()).sum()),
                   "steps": cfg.finetune.steps, "min_ratio": args.min_ratio, "max_drop": args.max_drop,
                   "trial_seconds": sum(t.user_attrs.get("timings", {}).get("total_s", 0.0) for t in study.trials)}
    row = pick(study)
    log(f"picked trial {int(row['number'])}: ratio {row['ratio']:.1f}, val {row['val_accuracy']:.4f}")
    res = final_finetune(cfg, row, args.epochs, args.tail_epochs, args.seed)
    res["search"] = search_info
    res["args"] = vars(args)
    (HERE / args.arch / "result.json").write_text(json.dumps(res, indent=1))
    print(f"<!-- {today()}; {machine()} -->")
    print(render(args.arch, res, search_info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
