"""The LeNet baseline recipes compared on validation accuracy only (studies/checkpoints/README.md).

Each recipe trains from the same seed with ``fit(..., keep_best=True)`` and prints
the epoch it keeps and that epoch's validation accuracy; the test split is never
scored here. The winning recipe goes into the study file, and
``benchmarks/common.py checkpoint`` then writes the committed checkpoint.

    nice -n 10 .venv/bin/python benchmarks/lenet_recipes.py lenet300
"""
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.chdir(ROOT)
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

torch.set_num_threads(1)
from studies.mnist import data
from studies.models import LeNet300, LeNet5
from studies.training import fit
d = data(path="../shared/data/mnist", val_size=5000, seed=0)
arch = sys.argv[1]
variants = {
 "lenet300": [
   dict(optimizer="sgd", lr=0.1, weight_decay=1e-4, epochs=40, schedule="cosine"),
   dict(optimizer="adam", lr=1e-3, weight_decay=0.0, epochs=40, schedule="cosine"),
   dict(optimizer="sgd", lr=0.05, weight_decay=5e-4, epochs=40, schedule="cosine"),
 ],
 "lenet5": [
   dict(optimizer="sgd", lr=0.05, weight_decay=5e-4, epochs=20, schedule="cosine"),  # the one used, untuned
 ]}[arch]
for v in variants:
    torch.manual_seed(0)
    m = {"lenet300": LeNet300, "lenet5": LeNet5}[arch]()
    t = time.time()
    r = fit(m, d.train, val=d.val, batch_size=128, seed=0, keep_best=True, log=lambda s: print(s, flush=True), **v)
    print(arch, v, "best_epoch", r["best_epoch"], "val", r["val_accuracy"], f"{time.time()-t:.0f}s", flush=True)
