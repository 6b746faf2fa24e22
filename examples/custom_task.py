"""Your own task: dict batches and a metric to minimise (the mean negative log-likelihood),
written as a compresstune.Task subclass.

    python examples/custom_task.py [--trials 20] [--out runs/example-custom] [--workers 0]
"""

import argparse

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

import compresstune as ct

args = argparse.ArgumentParser()
args.add_argument("--trials", type=int, default=20)
args.add_argument("--workers", type=int, default=0, help="N > 0: trials on a local Ray cluster of N workers")
args.add_argument("--out", default="runs/example-custom")
opts = args.parse_args()


class DigitsNLL(ct.Task):
    metric, direction = "nll", "minimize"

    def __init__(self) -> None:
        x, y = load_digits(return_X_y=True)
        x, y = torch.tensor(x, dtype=torch.float32) / 16.0, torch.tensor(y)
        self.parts = {"train": (x[:1200], y[:1200]), "val": (x[1200:1500], y[1200:1500]), "test": (x[1500:], y[1500:])}

    def batches(self, split):  # dict batches, reshuffled every training pass
        x, y = self.parts[split]
        order = torch.randperm(len(y)) if split == "train" else torch.arange(len(y))
        for i in range(0, len(y), 64):
            yield {"pixels": x[order[i:i + 64]], "labels": y[order[i:i + 64]]}

    def outputs(self, model, batch):
        return model(batch["pixels"])

    def loss(self, outputs, batch):
        return F.cross_entropy(outputs, batch["labels"])

    def update(self, outputs, batch):
        return {"nll": F.cross_entropy(outputs, batch["labels"], reduction="sum").item(), "n": len(batch["labels"])}

    def compute(self, sums):
        return sums["nll"] / sums["n"]


task = DigitsNLL()
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for epoch in range(20):
    for batch in task.batches("train"):
        opt.zero_grad()
        task.loss(task.outputs(model, batch), batch).backward()
        opt.step()
model.eval()
print(f"baseline val nll {task.evaluate(model, 'val'):.4f}")

study, front = ct.search.run(model, task, constraints={"max_relative_drop": 0.1},
                             finetune={"steps": 100, "eval_every": 50}, trials=opts.trials, out=opts.out,
                             workers=opts.workers, sampler="tpe", seed=0)
print(front[["number", "val_accuracy", "size_bytes", "ratio"]].rename(columns={"val_accuracy": "val_nll"}))
