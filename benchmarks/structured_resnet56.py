"""ResNet-56 on CIFAR-10 at half the multiply-accumulates: searched channel groups vs uniform channel pruning.

Starts from the converged checkpoint of ``studies/cifar10_resnet56.yaml`` (the published
ResNet-56 weights, fine-tuned for one epoch on this JPEG copy). Its option-A shortcuts make
the whole residual stream (stem, every block's second conv, both channel pads) one channel
group of 64 positions; each block's first conv is a group of its own. Both methods prune
to the same budget, half of the baseline's MACs (measured by ``objectives.multiply_accumulates``
on the squashed model):

* uniform: one fraction for every group, bisected to the budget;
* search: an Optuna TPE study (SQLite, resumable) over four shapes (the stream's fraction and
  one per stage for the inner convs), each scaled by one factor bisected to the budget, so
  every trial sits on it; a trial's score is validation accuracy after a short distillation
  fine-tune. The first trial is the uniform plan.

The best searched plan and the uniform plan then get the same longer fine-tune and are
measured on the 10,000 test images (95% Wilson interval), with CPU latency of the squashed
model at batch 1 and 32 beside the baseline's, interleaved, median of repeats.

    nice -n 10 .venv/bin/python benchmarks/structured_resnet56.py            # about 50 min on one thread of a busy machine
    nice -n 10 .venv/bin/python benchmarks/structured_resnet56.py --trials 4 --search-steps 20 --final-steps 40  # smoke
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH, log, machine, markdown_table, study_config, wilson  # noqa: E402

import optuna  # noqa: E402
import torch  # noqa: E402

import compresstune as ct  # noqa: E402
from compresstune.objectives import evaluate, multiply_accumulates, recover  # noqa: E402
from compresstune.search._session import load_model_and_task  # noqa: E402

STUDY = "studies/cifar10_resnet56.yaml"
BUDGET = 0.5  # of the baseline's MACs
MAX_FRACTION = 0.9


def plan_for(found, shape: dict[str, float], scale: float) -> ct.CompressionPlan:
    """Every group's fraction: its stage's share of ``shape`` times ``scale`` (capped)."""
    layers = {}
    for name, group in found.channel_groups.items():
        key = "stream" if len(group.layers) > 1 else name.split(".")[0]  # layer1 / layer2 / layer3
        fraction = min(MAX_FRACTION, round(shape[key] * scale, 4))
        if fraction > 0:
            layers[name] = ct.LayerPlan(structured=fraction)
    return ct.CompressionPlan(layers, temperature=4.0, alpha=0.5)


def fit_budget(model, found, shape: dict[str, float], example, base_macs: float) -> tuple[ct.CompressionPlan, float]:
    """The plan of ``shape`` whose scale puts it at (just under) the MACs budget, by bisection."""
    low, high = 0.0, MAX_FRACTION / max(max(shape.values()), 1e-6)
    best = plan_for(found, shape, low), 1.0
    for _ in range(14):
        mid = (low + high) / 2
        plan = plan_for(found, shape, mid)
        ratio = multiply_accumulates(ct.apply(model, plan), example) / base_macs
        if ratio <= BUDGET:
            best, high = (plan, ratio), mid
        else:
            low = mid
    return best


def finetune(model, plan, task, steps: int, lr: float):
    small = ct.apply(model, plan)
    recover(small, model, task, temperature=plan.temperature, alpha=plan.alpha, steps=steps, lr=lr,
            optimizer="sgd", weight_decay=1e-4, eval_every=steps)
    return small.eval()


def latency(models: dict[str, torch.nn.Module], batch: int, repeats: int) -> dict[str, float]:
    """Median ms per forward on one torch thread (steadier on a shared machine), the models
    interleaved in every round."""
    x = torch.randint(0, 255, (batch, 3, 32, 32), dtype=torch.uint8)
    times = {name: [] for name in models}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.inference_mode():
        for m in models.values():
            m(x)
        for _ in range(repeats):
            for name, m in models.items():
                start = time.perf_counter()
                m(x)
                times[name].append((time.perf_counter() - start) * 1000)
    torch.set_num_threads(threads)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def accuracy_row(name: str, model, task, macs_ratio: float) -> dict:
    test = evaluate(model, task, "test")
    n = sum(len(batch[1]) for batch in task.batches("test"))
    low, high = wilson(round((1 - test) * n), n)
    return {"model": name, "macs": macs_ratio, "val": evaluate(model, task, "val"), "test": test,
            "test_low": 1 - high, "test_high": 1 - low,
            "params": sum(p.numel() for p in ct.squash(model).parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--search-steps", type=int, default=80)
    parser.add_argument("--final-steps", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = BENCH / "structured_resnet56"
    out.mkdir(parents=True, exist_ok=True)
    config = study_config(STUDY, data_kwargs={"train_size": None, "test_size": None},
                          out=str(out), trials=args.trials)
    start = time.time()
    model, task = load_model_and_task(config, out)
    example = next(iter(task.batches("test")))[0][:1]
    base_macs = multiply_accumulates(model, example)
    found = ct.discover(model)
    log(f"baseline: {base_macs / 1e6:.1f} M MACs; {len(found.channel_groups)} channel groups")

    storage = f"sqlite:///{out / 'search.db'}"
    study = optuna.create_study(study_name="structured_resnet56", storage=storage, direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=0), load_if_exists=True)
    if not study.trials:
        study.enqueue_trial({"stream": 0.5, "layer1": 0.5, "layer2": 0.5, "layer3": 0.5})  # = uniform

    def objective(trial):
        shape = {k: trial.suggest_float(k, 0.0, 1.0) for k in ("stream", "layer1", "layer2", "layer3")}
        plan, ratio = fit_budget(model, found, shape, example, base_macs)
        trial.set_user_attr("plan", plan.to_json())
        trial.set_user_attr("macs", ratio)
        small = finetune(model, plan, task, args.search_steps, lr=0.01)
        value = evaluate(small, task, "val")
        log(f"trial {trial.number}: MACs {ratio:.3f}, val {value:.4f}")
        return value

    remaining = args.trials - len([t for t in study.trials if t.state.is_finished()])
    if remaining > 0:
        study.optimize(objective, n_trials=remaining)
    searched = ct.CompressionPlan.from_json(study.best_trial.user_attrs["plan"])
    uniform, uniform_ratio = fit_budget(model, found, dict.fromkeys(("stream", "layer1", "layer2", "layer3"), 1.0),
                                        example, base_macs)
    search_seconds = time.time() - start

    rows = [accuracy_row("baseline", model, task, 1.0)]
    finals = {}
    for name, plan in (("uniform", uniform), ("searched", searched)):
        small = finetune(model, plan, task, args.final_steps, lr=0.01)
        finals[name] = small
        ratio = multiply_accumulates(small, example) / base_macs
        rows.append(accuracy_row(name, small, task, ratio))
        log(f"{name}: {rows[-1]}")
    plain = {"baseline": model.eval(), **{k: ct.squash(v).eval() for k, v in finals.items()}}
    lat = {b: latency(plain, b, repeats=60 if b == 1 else 20) for b in (1, 32)}
    for row in rows:
        row.update({f"ms_b{b}": lat[b][row["model"]] for b in lat})
    result = {"machine": machine(), "threads": args.threads, "trials": args.trials, "search_steps": args.search_steps,
              "final_steps": args.final_steps, "seconds": time.time() - start, "search_seconds": search_seconds,
              "rows": rows, "searched_plan": searched.to_dict(), "uniform_ratio": uniform_ratio}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    base = rows[0]
    print(markdown_table(
        ["model", "MACs", "params", "val acc", "test acc (95% interval)", "test - baseline", "ms batch 1", "ms batch 32",
         "batch 32 vs baseline"],
        [[r["model"], f"{r['macs']:.3f}x", r["params"], f"{r['val']:.4f}",
          f"{r['test']:.4f} ({r['test_low']:.4f}-{r['test_high']:.4f})", f"{100 * (r['test'] - base['test']):+.2f} pt",
          f"{r['ms_b1']:.2f}", f"{r['ms_b32']:.1f}", f"{r['ms_b32'] / base['ms_b32']:.2f}x"] for r in rows]))
    log(f"done in {result['seconds'] / 60:.1f} min (search {search_seconds / 60:.1f} min)")


if __name__ == "__main__":
    main()
