"""A user's own task, as a test would write one: dict batches and a minimised metric.

It lives in an importable module (not a test file) so that Ray workers and
``compresstune export`` can load the pickled task, as a user's own module would.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from compresstune import Task


class DigitsNLL(Task):
    """scikit-learn's digits as dict batches ``{"pixels", "labels"}``, scored by the mean
    negative log-likelihood of the labels (lower is better)."""

    metric = "nll"
    direction = "minimize"

    def __init__(self, batch_size: int = 32) -> None:
        x, y = load_digits(return_X_y=True)
        x = torch.tensor(x, dtype=torch.float32) / 16.0
        y = torch.tensor(y, dtype=torch.int64)
        self.parts = {"train": (x[:1000], y[:1000]), "val": (x[1000:1400], y[1000:1400]), "test": (x[1400:], y[1400:])}
        self.batch_size = batch_size

    def batches(self, split):
        x, y = self.parts[split]
        order = torch.randperm(len(x)) if split == "train" else torch.arange(len(x))
        for i in range(0, len(x), self.batch_size):
            idx = order[i:i + self.batch_size]
            yield {"pixels": x[idx], "labels": y[idx]}

    def outputs(self, model, batch):
        return model(batch["pixels"])

    def loss(self, outputs, batch):
        return F.cross_entropy(outputs, batch["labels"])

    def update(self, outputs, batch):
        return {"nll": float(F.cross_entropy(outputs, batch["labels"], reduction="sum")), "n": len(batch["labels"])}

    def compute(self, sums):
        return sums["nll"] / sums["n"]


def digits_mlp(task: DigitsNLL, steps: int = 150) -> nn.Module:
    """A small MLP trained on the task's training batches."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    done = 0
    while done < steps:
        for batch in task.batches("train"):
            opt.zero_grad()
            task.loss(task.outputs(model, batch), batch).backward()
            opt.step()
            done += 1
            if done == steps:
                break
    return model.eval()
