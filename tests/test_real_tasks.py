"""Real tasks as tests: the task API on real data and real ``transformers`` models.

Each test takes a small subset of a real dataset in ``../shared/data`` (SST-2 sentences,
CIFAR-10 JPEGs) or scikit-learn's bundled diabetes set, read by the project's own loaders
(``studies/datasets.py``), and a ``transformers`` model built from a tiny config with
random weights (nothing is downloaded). It then runs the task through ``check_task``,
the recovery fine-tune (``objectives.recover``), ``objectives.evaluate`` and a two-trial
``compresstune.search.run`` in-process:

* BERT sequence classification, dict batches through a DataLoader (``Classification``);
* GPT-2 causal language modelling, token-id tensors with padding (``LanguageModeling``,
  perplexity, minimised);
* a ResNet image classifier on CIFAR-10 whose Dataset augments (random crop, flip);
* an MLP regressor on the diabetes targets (``Regression``, MSE, minimised);
* a user's own ``Task`` with dict batches and a minimised metric that overrides
  ``evaluate`` instead of ``update``/``compute``.
"""

from __future__ import annotations

import math
import os
import tarfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from optuna.study import StudyDirection  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

transformers = pytest.importorskip("transformers")

import compresstune as ct  # noqa: E402
from compresstune.objectives._finetune import evaluate, recover, teacher_outputs  # noqa: E402
from compresstune.task import check_task, has_sums  # noqa: E402
from compresstune.tasks import Classification, LanguageModeling, Regression  # noqa: E402
from studies.datasets import PAD_ID, load_cifar10, load_tsv  # noqa: E402

transformers.logging.set_verbosity_error()

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SST2 = DATA / "sst2"
CIFAR = DATA / "cifar10-jpg.tar.gz"

MAX_LEN = 24  # tokens per sentence
SEARCH = dict(finetune={"steps": 10, "eval_every": 5, "lr": 1e-3}, sensitivity={"enabled": False}, trials=2,
              sampler="random", seed=0, workers=0, progress=False, log=lambda m: None)
SPACE = {"bits": [4, 8], "sparsity": {"low": 0.0, "high": 0.5}, "rank_fraction": None}


def need(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"{path} is not here (the shared data folder of the project)")


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before: dict[str, torch.Tensor], model: nn.Module) -> list[str]:
    after = model.state_dict()
    return [k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k])]


def completed(study, trials: int = 2) -> list:
    """The study's trials, all COMPLETE and fine-tuned (validation measured at steps 5 and 10)."""
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == trials, [(t.state, t.user_attrs.get("fail_reason")) for t in study.trials]
    for t in done:
        assert [step for step, _ in t.user_attrs["curve"]] == [5, 10], t.user_attrs["curve"]
        assert t.user_attrs["curve"][-1][1] == pytest.approx(t.user_attrs["val_accuracy"])
    return done


def train(model: nn.Module, task, steps: int, lr: float) -> None:
    """Plain torch: ``steps`` Adam steps of the task's own loss over its training batches."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    done = 0
    while done < steps:
        for batch in task.batches("train"):
            loss = task.loss(task.outputs(model, batch), batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done == steps:
                break
    model.eval()


# -- data: small subsets of the real files, read by the project's loaders ---------------------------

@pytest.fixture(scope="module")
def sst2(tmp_path_factory):
    """The first rows of SST-2's three files, through ``load_tsv`` (vocabulary from these rows)."""
    need(SST2)
    folder = tmp_path_factory.mktemp("sst2")
    for name, rows in (("train", 1200), ("dev", 300), ("test", 200)):
        lines = (SST2 / f"{name}.tsv").read_text(encoding="utf-8").splitlines()
        (folder / f"{name}.tsv").write_text("\n".join(lines[: rows + 1]) + "\n", encoding="utf-8")
    return load_tsv(folder / "train.tsv", folder / "dev.tsv", folder / "test.tsv", max_len=MAX_LEN,
                    vocab_size=800, min_freq=2, name="sst2")


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """A few real CIFAR-10 JPEGs per class (24 train, 4 test), through ``load_cifar10``."""
    need(CIFAR)
    root = tmp_path_factory.mktemp("cifar10")
    per_class = {"train": 24, "test": 4}
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(CIFAR, "r:*") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) != 3 or parts[0] not in per_class:
                continue
            key = parts[:2]
            if taken.get(key, 0) >= per_class[parts[0]]:
                continue
            taken[key] = taken.get(key, 0) + 1
            out = root.joinpath(*parts)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(tar.extractfile(member).read())
    return load_cifar10(root, val_size=40, seed=0)


# -- 1. BERT sequence classification: dict batches through a DataLoader -----------------------------

class SentenceDicts(Dataset):
    """One tokenised sentence as a tokenizer would give it: ids, attention mask, label."""

    def __init__(self, split) -> None:
        self.x, self.y = split.x, split.y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.x[i]
        return {"input_ids": ids, "attention_mask": (ids != PAD_ID).long(), "labels": self.y[i]}


@pytest.fixture(scope="module")
def bert_task(sst2):
    def loader(split, shuffle: bool) -> DataLoader:
        return DataLoader(SentenceDicts(split), batch_size=32, shuffle=shuffle, drop_last=shuffle)

    return Classification(loader(sst2.train, True), loader(sst2.val, False), loader(sst2.test, False))


@pytest.fixture(scope="module")
def bert(sst2, bert_task):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(sst2.vocab), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=MAX_LEN,
                                     num_labels=2, pad_token_id=PAD_ID)
    model = transformers.BertForSequenceClassification(config)
    before = evaluate(model, bert_task, "val")
    train(model, bert_task, steps=80, lr=3e-3)
    return model, before


def test_bert_on_sst2_dict_batches_check_and_recover(bert, bert_task):
    model, untrained = bert
    task = bert_task
    batch = next(iter(task.batches("train")))
    assert set(batch) == {"input_ids", "attention_mask", "labels"} and batch["input_ids"].shape == (32, MAX_LEN)
    train_acc, val_acc = evaluate(model, task, "train"), evaluate(model, task, "val")
    assert train_acc > 0.75 and val_acc > 0.58, (untrained, train_acc, val_acc)  # learnt, not at chance
    check_task(task, model)  # one batch of each split through outputs, loss and distill_loss
    teacher = state(model)

    student = ct.apply(model, ct.CompressionPlan.uniform(model, sparsity=0.5, bits=4))
    before = state(student)
    result = recover(student, model, task, temperature=2.0, alpha=0.5, steps=10, eval_every=5, lr=1e-3)
    assert changed(before, student), "the fine-tune left the student as it was"
    assert not changed(teacher, model), "the fine-tune changed the teacher"
    assert result.steps == 10 and [s for s, _ in result.curve] == [5, 10]
    acc = evaluate(student, task, "val")
    assert math.isfinite(acc) and 0.0 <= acc <= 1.0
    assert result.curve[-1][1] == pytest.approx(acc)  # the curve's last point is the student's metric


def test_bert_on_sst2_search(bert, bert_task, tmp_path):
    model, _ = bert
    teacher = state(model)
    study, front = ct.search.run(model, bert_task, space=SPACE, constraints={"max_accuracy_drop": None},
                                 out=str(tmp_path / "bert"), **SEARCH)
    assert study.directions[0] == StudyDirection.MAXIMIZE and study.metric_names[0] == "val_accuracy"
    base = study.user_attrs["baseline"]["val_accuracy"]
    assert base == pytest.approx(evaluate(model, bert_task, "val"))
    for t in completed(study):
        assert 0.0 <= t.user_attrs["val_accuracy"] <= 1.0 and t.values[0] == t.user_attrs["val_accuracy"]
        assert 0 < t.values[1] < ct.reference_size(model)  # 4- or 8-bit: smaller than fp32
    assert len(front) >= 1
    assert not changed(teacher, model), "the search changed the user's model"


# -- 2. GPT-2 causal language modelling: token ids with padding, perplexity minimised --------------

def gpt2(vocab: int) -> nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=vocab, n_positions=MAX_LEN + 8,
                                     use_cache=False, pad_token_id=PAD_ID)
    return transformers.GPT2LMHeadModel(config)


@pytest.fixture(scope="module")
def lm_task(sst2):
    # Sentences of at least two tokens (a one-token row has nothing to predict).
    def ids(split):
        return split.x[(split.x != PAD_ID).sum(1) >= 2]

    return LanguageModeling(ids(sst2.train), ids(sst2.val), ids(sst2.test), batch_size=32, eval_batch_size=128,
                            pad_id=PAD_ID)


@pytest.fixture(scope="module")
def lm(sst2, lm_task):
    """``(task, trained GPT-2, val perplexity before training, after)``."""
    model = gpt2(len(sst2.vocab))
    before = evaluate(model, lm_task, "val")
    train(model, lm_task, steps=40, lr=3e-3)
    return lm_task, model, before, evaluate(model, lm_task, "val")


def test_gpt2_language_modelling_perplexity_drops(lm):
    task, model, before, after = lm
    assert (task.metric, task.direction) == ("perplexity", "minimize")
    batch = next(iter(task.batches("train")))
    assert batch["attention_mask"].sum() < batch["attention_mask"].numel()  # padding is masked
    check_task(task, model)
    assert before > 0.5 * model.config.vocab_size  # random weights: about as unsure as a uniform guess
    assert math.isfinite(after) and 1.0 < after < 0.5 * before, (before, after)
    # Padding does not count: four more padding columns leave the perplexity as it was.
    val = torch.cat([b["input_ids"] for b in task.batches("val")])
    padded = torch.cat([val, torch.full((len(val), 4), PAD_ID)], 1)
    assert evaluate(model, LanguageModeling(val, padded, pad_id=PAD_ID), "val") == pytest.approx(after, rel=1e-4)


def test_gpt2_language_modelling_search(lm, tmp_path):
    task, model, _, after = lm
    out = tmp_path / "gpt2"
    study, front = ct.search.run(model, task, space=SPACE, constraints={"max_relative_drop": 1.0}, out=str(out),
                                 **SEARCH)
    assert study.directions[0] == StudyDirection.MINIMIZE and study.metric_names[0] == "val_perplexity"
    assert study.user_attrs["metric"]["direction"] == "minimize"
    assert study.user_attrs["baseline"]["val_accuracy"] == pytest.approx(after)
    for t in completed(study):
        assert math.isfinite(t.values[0]) and t.values[0] > 1.0 and t.values[0] == t.user_attrs["val_accuracy"]
    # The artifact (the tied embedding and head stored once) reloads and reproduces the perplexity.
    number = int(front["number"].iloc[0])
    summary = ct.search.export_trial(out, number, tmp_path / "small.ctz")
    assert "checked: reloads and reproduces val perplexity" in summary, summary


def test_gpt2_bit_operations_follow_the_plan(lm):
    """transformers' Conv1D layers are counted, and the tied lm_head costs what wte's plan says."""
    from compresstune.objectives import bit_operations

    task, model, _, _ = lm
    batch = next(iter(task.batches("val")))
    bops = {bits: bit_operations(ct.apply(model, ct.CompressionPlan.uniform(model, bits=bits)), batch, task=task)
            for bits in (32, 8)}
    assert bops[8] == pytest.approx(bops[32] / 4), bops  # every counted weight went from 32 to 8 bits


# -- 3. A ResNet on CIFAR-10 through an augmenting Dataset ------------------------------------------

MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)


class Cifar(Dataset):
    """Normalised CIFAR-10 images; with ``augment``, a random 32x32 crop of the image padded by 4
    and a horizontal flip half of the time, drawn anew at every ``__getitem__``."""

    def __init__(self, split, augment: bool) -> None:
        self.x = (split.x.float() / 255 - MEAN) / STD
        self.y, self.augment = split.y, augment

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.x[i]
        if self.augment:
            top, left = torch.randint(0, 9, (2,)).tolist()
            img = F.pad(img, (4, 4, 4, 4))[:, top: top + 32, left: left + 32]
            if torch.rand(()) < 0.5:
                img = img.flip(-1)
        return img, self.y[i]


def cifar_task(cifar, augment: bool = True) -> Classification:
    return Classification(DataLoader(Cifar(cifar.train, augment), batch_size=25, shuffle=True, drop_last=True),
                          DataLoader(Cifar(cifar.val, False), batch_size=100),
                          DataLoader(Cifar(cifar.test, False), batch_size=100))


@pytest.fixture(scope="module")
def resnet(cifar):
    torch.manual_seed(0)
    config = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                       layer_type="basic", num_labels=10)
    model = transformers.ResNetForImageClassification(config)
    task = cifar_task(cifar)
    train(model, task, steps=8, lr=3e-3)
    return task, model


def pass_of(task) -> tuple[list[float], list[int]]:
    """One pass over the training batches, order-free: the sorted image sums and labels."""
    images, labels = zip(*task.batches("train"))
    sums = torch.cat(images).flatten(1).sum(1)
    return sorted(round(float(s), 3) for s in sums), sorted(torch.cat(labels).tolist())


def test_resnet_on_cifar10_augmented_batches_and_finetune(cifar, resnet):
    task, model = resnet
    assert cifar.num_classes == 10 and len(cifar.train) == 200 and cifar.train.x.dtype == torch.uint8
    (sums1, labels1), (sums2, labels2) = pass_of(task), pass_of(task)
    assert labels1 == labels2 and sums1 != sums2  # the same images, cropped and flipped anew
    plain = cifar_task(cifar, augment=False)
    assert pass_of(plain) == pass_of(plain)  # without augmentation two passes hold the same images
    assert teacher_outputs(model, task) is None  # augmented batches: the teacher runs on each one
    check_task(task, model)

    student = ct.apply(model, ct.CompressionPlan.uniform(model, sparsity=0.5, bits=8))
    before = state(student)
    result = recover(student, model, task, temperature=4.0, alpha=0.7, steps=10, eval_every=5, lr=1e-3)
    assert changed(before, student)
    assert result.steps == 10 and len(result.curve) == 2
    assert all(0.0 <= acc <= 1.0 for _, acc in result.curve)


def test_resnet_on_cifar10_search(resnet, tmp_path):
    task, model = resnet
    study, front = ct.search.run(model, task, space=SPACE, constraints={"max_accuracy_drop": None},
                                 out=str(tmp_path / "resnet"), **SEARCH)
    for t in completed(study):
        assert 0.0 <= t.user_attrs["val_accuracy"] <= 1.0
    assert len(front) >= 1


# -- 4. An MLP regressor on scikit-learn's diabetes targets ----------------------------------------

@pytest.fixture(scope="module")
def diabetes():
    """The 442 diabetes rows, features and target standardised with the training rows' statistics."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    parts = perm[:300], perm[300:370], perm[370:]
    mx, sx, my, sy = x[parts[0]].mean(0), x[parts[0]].std(0), y[parts[0]].mean(), y[parts[0]].std()
    return [((x[i] - mx) / sx, (y[i] - my) / sy) for i in parts]


@pytest.fixture(scope="module")
def regressor(diabetes):
    task = Regression(*diabetes, batch_size=32)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))
    train(model, task, steps=150, lr=3e-3)
    return task, model


def test_regression_on_diabetes_mse_and_distill_loss(diabetes, regressor):
    task, model = regressor
    assert (task.metric, task.direction) == ("mse", "minimize")
    check_task(task, model)
    x, y = diabetes[1]
    with torch.no_grad():
        mse = float(((model(x).squeeze(1) - y) ** 2).mean())
    assert evaluate(model, task, "val") == pytest.approx(mse, rel=1e-5)
    assert mse < 0.8  # the standardised target has variance about 1: the model explains part of it

    cached = teacher_outputs(model, task)  # in-memory tensors: the teacher's outputs are computed once
    assert cached is not None and cached.shape == (300, 1)
    student = ct.apply(model, ct.CompressionPlan.uniform(model, sparsity=0.5, bits=4))
    batch = next(iter(task.batches("train")))
    s, t = student(batch[0]), model(batch[0]).detach()
    for temperature in (1.0, 4.0):  # the temperature does not apply to regression
        assert task.distill_loss(s, t, batch, temperature, 1.0).item() == pytest.approx(
            F.mse_loss(s.squeeze(1), t.squeeze(1)).item())
    assert task.distill_loss(s, t, batch, 2.0, 0.0).item() == pytest.approx(task.loss(s, batch).item())

    before = state(student)
    result = recover(student, model, task, temperature=1.0, alpha=1.0, steps=10, eval_every=5, cached_teacher=cached)
    assert changed(before, student) and all(math.isfinite(v) and v > 0 for _, v in result.curve)


def test_regression_on_diabetes_search(regressor, tmp_path):
    task, model = regressor
    study, front = ct.search.run(model, task, space=SPACE, constraints={"max_relative_drop": 1.0},
                                 out=str(tmp_path / "mlp"), **SEARCH)
    assert study.directions[0] == StudyDirection.MINIMIZE and study.metric_names[0] == "val_mse"
    base = study.user_attrs["baseline"]["val_accuracy"]
    assert base == pytest.approx(evaluate(model, task, "val"))
    for t in completed(study):
        assert 0 < t.values[0] == t.user_attrs["val_accuracy"] and math.isfinite(t.values[0])
    assert len(front) >= 1


# -- 5. A user's own Task: dict batches, a minimised metric, `evaluate` instead of sums ------------

class BagOfWords(nn.Module):
    """Mean of the word embeddings of the unmasked tokens -> two logits."""

    def __init__(self, vocab: int, dim: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.hidden = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, 2)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).float()
        h = (self.emb(tokens) * m).sum(1) / m.sum(1).clamp_min(1)
        return self.out(torch.relu(self.hidden(h)))


class SentimentNLL(ct.Task):
    """SST-2 sentences as dicts ``{"tokens", "mask", "labels"}``; the metric is the mean negative
    log-likelihood of the labels, computed whole in ``evaluate`` (no ``update``/``compute``)."""

    metric, direction = "nll", "minimize"

    def __init__(self, splits, batch_size: int = 64) -> None:
        self.splits, self.batch_size = {"train": splits.train, "val": splits.val, "test": splits.test}, batch_size
        self.evaluations = 0

    def batches(self, split):
        s = self.splits[split]
        order = torch.randperm(len(s.y)) if split == "train" else torch.arange(len(s.y))
        return [{"tokens": s.x[i], "mask": (s.x[i] != PAD_ID).long(), "labels": s.y[i]}
                for i in order.split(self.batch_size)]

    def loss(self, outputs, batch):
        return F.cross_entropy(outputs, batch["labels"])

    def evaluate(self, model, split):
        self.evaluations += 1
        model.eval()
        with torch.no_grad():
            total = sum(float(F.cross_entropy(self.outputs(model, b), b["labels"], reduction="sum"))
                        for b in self.batches(split))
        return total / len(self.splits[split].y)


@pytest.fixture(scope="module")
def sentiment(sst2):
    task = SentimentNLL(sst2)
    torch.manual_seed(0)
    model = BagOfWords(len(sst2.vocab))
    train(model, task, steps=60, lr=1e-2)
    return task, model


def test_a_custom_task_that_overrides_evaluate_works_in_recover_and_evaluate(sentiment):
    task, model = sentiment
    assert not has_sums(task)
    check_task(task, model)
    assert evaluate(model, task, "train") < 0.9 * math.log(2)  # it learnt: below the NLL of a coin flip
    base = evaluate(model, task, "val")
    assert base == pytest.approx(task.evaluate(model, "val")) and math.isfinite(base)
    student = ct.apply(model, ct.CompressionPlan.uniform(model, sparsity=0.7, bits=4))
    before, calls = state(student), task.evaluations
    result = recover(student, model, task, temperature=2.0, alpha=0.5, steps=10, eval_every=5, lr=1e-3)
    assert changed(before, student)
    assert task.evaluations - calls == 2 and [s for s, _ in result.curve] == [5, 10]  # through `evaluate`
    assert result.curve[-1][1] == pytest.approx(evaluate(student, task, "val"))
    assert all(math.isfinite(v) and v > 0 for _, v in result.curve)


def test_a_custom_task_that_overrides_evaluate_runs_a_search(sentiment, tmp_path):
    task, model = sentiment
    study, _ = ct.search.run(model, task, space=SPACE, constraints={"max_relative_drop": 1.0},
                             out=str(tmp_path / "nll"), **SEARCH)
    assert study.directions[0] == StudyDirection.MINIMIZE and study.metric_names[0] == "val_nll"
    for t in completed(study):
        assert math.isfinite(t.values[0]) and t.values[0] > 0
