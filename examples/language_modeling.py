"""Compress a causal language model from transformers (built from its config, trained here):
GPT-2 on SST-2's sentences, scored by perplexity, with the LanguageModeling preset.

    python examples/language_modeling.py [--data ../shared/data/sst2] [--trials 20] [--out runs/example-lm]
"""

import argparse
import collections
import csv
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

import compresstune as ct
from compresstune.tasks import LanguageModeling

args = argparse.ArgumentParser()
args.add_argument("--data", default="../shared/data/sst2", help="folder with train.tsv, dev.tsv, test.tsv")
args.add_argument("--trials", type=int, default=20)
args.add_argument("--rows", type=int, default=4000, help="training sentences used")
args.add_argument("--out", default="runs/example-lm")
opts = args.parse_args()


def sentences(name: str, limit: int) -> list[list[str]]:
    with open(Path(opts.data) / name, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:limit + 1]
    return [row[0].lower().split() for row in rows]


train_s, val_s, test_s = sentences("train.tsv", opts.rows), sentences("dev.tsv", 500), sentences("test.tsv", 500)
words = [w for w, _ in collections.Counter(w for s in train_s for w in s).most_common(2000)]
index = {w: i + 3 for i, w in enumerate(words)}  # 0 padding, 1 unknown, 2 start


def ids(sents: list[list[str]], length: int = 24) -> torch.Tensor:
    rows = [[2] + [index.get(w, 1) for w in s][: length - 1] for s in sents]
    return torch.tensor([r + [0] * (length - len(r)) for r in rows])


task = LanguageModeling(ids(train_s), ids(val_s), ids(test_s), batch_size=32, pad_id=0)
torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(vocab_size=len(words) + 3, n_positions=24, n_embd=64, n_layer=2, n_head=2))
opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
model.train()
for epoch in range(3):
    for batch in task.batches("train"):
        opt.zero_grad()
        task.loss(task.outputs(model, batch), batch).backward()
        opt.step()
model.eval()
print(f"baseline val perplexity {task.evaluate(model, 'val'):.2f}")

study, front = ct.search.run(model, task, constraints={"max_relative_drop": 0.05},
                             finetune={"steps": 60, "eval_every": 30}, trials=opts.trials, out=opts.out,
                             sampler="tpe", seed=0)
print(front[["number", "val_accuracy", "size_bytes", "ratio"]].rename(columns={"val_accuracy": "val_perplexity"}))
