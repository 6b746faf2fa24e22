"""BatchNorm during the recovery fine-tune: one ResNet-20 plan fine-tuned with BatchNorm frozen
(the default, ``finetune.batchnorm: frozen``) and in train mode, at several learning rates.

The plan is the exact allocator's 4x seed of the ResNet-20 results study (stages 1-2 at 6 bits,
stage 3 at 8, the classifier at 16, no sparsity); every row starts from the same compressed model
and fine-tunes 150 steps x 64 images of the whole training split, then scores the study's
validation split and its 2,000-image test subset.

    nice -n 10 .venv/bin/python benchmarks/batchnorm_finetune.py
"""

from __future__ import annotations

import time

from common import BENCH, log, machine, markdown_table, study_config, today  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from compresstune.compress import apply  # noqa: E402
from compresstune.objectives import evaluate, recover  # noqa: E402
from compresstune.search._session import load_model_and_task  # noqa: E402
from compresstune.spaces import Space  # noqa: E402

PARAMS = {"stage1:sparsity": 0.0, "stage1:bits": 6, "stage2:sparsity": 0.0, "stage2:bits": 6, "stage3:sparsity": 0.0,
          "stage3:bits": 8, "linear:sparsity": 0.0, "linear:bits": 16, "distill:temperature": 3.1306,
          "distill:alpha": 0.7152}
# (label, batchnorm, optimizer, lr, BatchNorm momentum 0: normalise with batch statistics, update none)
ROWS = [("train mode, Adam 5e-4 (the study file's)", "train", "adam", 5e-4, False),
        ("train mode, Adam 1e-4", "train", "adam", 1e-4, False),
        ("train mode, Adam 2e-5", "train", "adam", 2e-5, False),
        ("train mode, SGD 0.01", "train", "sgd", 1e-2, False),
        ("train mode, Adam 1e-9 (the running statistics alone)", "train", "adam", 1e-9, False),
        ("batch statistics, running ones not updated, Adam 1e-4", "train", "adam", 1e-4, True),
        ("frozen, Adam 1e-4", "frozen", "adam", 1e-4, False),
        ("frozen, Adam 5e-4", "frozen", "adam", 5e-4, False)]
STEPS = 150


def _no_running_updates(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = 0.0


def main() -> None:
    torch.set_num_threads(1)
    out = BENCH / "batchnorm_finetune"
    config = study_config("studies/cifar10_resnet20.yaml", data_kwargs={"train_size": None})
    model, task = load_model_and_task(config, out)
    plan = Space.from_config(config.space, model).decode(PARAMS)
    rows = [("baseline, float32", f"{evaluate(model, task, 'val'):.4f}", f"{evaluate(model, task, 'test'):.4f}", "-"),
            ("the plan, before fine-tuning", f"{evaluate(apply(model, plan), task, 'val'):.4f}", "-", "-")]
    for label, batchnorm, optimizer, lr, frozen_stats in ROWS:
        small = apply(model, plan)
        if frozen_stats:
            _no_running_updates(small)
        start = time.perf_counter()
        recover(small, model.eval(), task, temperature=plan.temperature, alpha=plan.alpha, steps=STEPS, lr=lr,
                optimizer=optimizer, eval_every=STEPS, seed=0, batchnorm=batchnorm)
        rows.append((label, f"{evaluate(small, task, 'val'):.4f}", f"{evaluate(small, task, 'test'):.4f}",
                     f"{time.perf_counter() - start:.0f}"))
        log(str(rows[-1]))
    text = (f"{today()}; {machine()}\n\n"
            + markdown_table(["BatchNorm during the fine-tune", "val accuracy", "test accuracy (2,000)",
                              "fine-tune s"], rows) + "\n")
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
