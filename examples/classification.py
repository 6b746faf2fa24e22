"""Compress an image classifier trained through your own DataLoaders (with augmentation):
scikit-learn's bundled 8x8 digits, a small CNN, the Classification preset.

    python examples/classification.py [--trials 20] [--out runs/example-classification]
"""

import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, Dataset

import compresstune as ct
from compresstune.tasks import Classification

args = argparse.ArgumentParser()
args.add_argument("--trials", type=int, default=20)
args.add_argument("--out", default="runs/example-classification")
opts = args.parse_args()


class Digits(Dataset):
    """8x8 digit images; training images are shifted by up to one pixel (augmentation)."""

    def __init__(self, x, y, augment: bool) -> None:
        self.x, self.y, self.augment = x, y, augment

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        img = self.x[i]
        if self.augment:
            dx, dy = torch.randint(-1, 2, (2,)).tolist()
            img = torch.roll(img, shifts=(dy, dx), dims=(1, 2))
        return img, self.y[i]


x, y = load_digits(return_X_y=True)
x = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
y = torch.tensor(y)
train = DataLoader(Digits(x[:1200], y[:1200], augment=True), batch_size=64, shuffle=True)
val = DataLoader(Digits(x[1200:1500], y[1200:1500], augment=False), batch_size=256)
test = DataLoader(Digits(x[1500:], y[1500:], augment=False), batch_size=256)
task = Classification(train, val, test)

torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                      nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 16, 128), nn.ReLU(), nn.Linear(128, 10))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for epoch in range(8):
    for batch in task.batches("train"):
        opt.zero_grad()
        task.loss(task.outputs(model, batch), batch).backward()
        opt.step()
model.eval()
print(f"baseline val accuracy {task.evaluate(model, 'val'):.4f}")

study, front = ct.search.run(model, task, constraints={"max_accuracy_drop": 0.01},
                             finetune={"steps": 100, "eval_every": 50}, trials=opts.trials, out=opts.out,
                             sampler="tpe", seed=0)
print(front[["number", "val_accuracy", "test_accuracy", "size_bytes", "ratio"]])
