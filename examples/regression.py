"""Compress a regressor: scikit-learn's bundled diabetes data, an MLP, the Regression preset.

    python examples/regression.py [--trials 20] [--out runs/example-regression]
"""

import argparse

import torch
from sklearn.datasets import load_diabetes
from torch import nn

import compresstune as ct
from compresstune.tasks import Regression

args = argparse.ArgumentParser()
args.add_argument("--trials", type=int, default=20)
args.add_argument("--out", default="runs/example-regression")
opts = args.parse_args()

x, y = load_diabetes(return_X_y=True)
x = torch.tensor((x - x.mean(0)) / x.std(0), dtype=torch.float32)
y = torch.tensor((y - y.mean()) / y.std(), dtype=torch.float32).unsqueeze(1)
train, val, test = (x[:300], y[:300]), (x[300:370], y[300:370]), (x[370:], y[370:])
task = Regression(train, val, test, batch_size=32)

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(10, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 1))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for epoch in range(25):
    for batch in task.batches("train"):
        opt.zero_grad()
        task.loss(task.outputs(model, batch), batch).backward()
        opt.step()
model.eval()
print(f"baseline val MSE {task.evaluate(model, 'val'):.4f}")

study, front = ct.search.run(model, task, constraints={"max_relative_drop": 0.05},
                             finetune={"steps": 100, "eval_every": 50}, trials=opts.trials, out=opts.out,
                             sampler="tpe", seed=0)
print(front[["number", "val_accuracy", "size_bytes", "ratio"]].rename(columns={"val_accuracy": "val_mse"}))
