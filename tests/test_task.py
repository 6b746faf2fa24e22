"""The task contract and its presets: defaults, sums, bad input caught before any search."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import compresstune as ct
from compresstune.errors import TaskError
from compresstune.objectives import evaluate, recover, teacher_outputs
from compresstune.plan import CompressionPlan, LayerPlan
from compresstune.task import Task, check_task, logits_of, measure
from compresstune.tasks import Classification, LanguageModeling, Regression


def _blobs(n: int = 256, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=gen)
    return x, (x[:, 0] + x[:, 1] > 0).long()


def _trained_classifier(x, y) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


class DictModel(nn.Module):
    """A model called with keywords, returning an object with ``.logits`` (as transformers do)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.out = nn.Linear(8, 20)

    def forward(self, input_ids, attention_mask=None):
        return type("Out", (), {"logits": self.out(self.emb(input_ids))})()


class MeanAbsError(Task):
    """A custom task: dict batches, a minimised metric, only ``evaluate`` (no sums)."""

    metric, direction = "mae", "minimize"

    def __init__(self, x, y) -> None:
        self.data = [{"x": x[i:i + 16], "labels": y[i:i + 16]} for i in range(0, len(x), 16)]

    def batches(self, split):
        return self.data

    def outputs(self, model, batch):
        return model(batch["x"]).squeeze(-1)

    def loss(self, outputs, batch):
        return nn.functional.l1_loss(outputs, batch["labels"])

    def distill_loss(self, student, teacher, batch, temperature, alpha):
        return alpha * nn.functional.l1_loss(student, teacher) + (1 - alpha) * self.loss(student, batch)

    def evaluate(self, model, split):
        with torch.no_grad():
            errs = [(self.outputs(model, b) - b["labels"]).abs() for b in self.batches(split)]
        return float(torch.cat(errs).mean())


def test_classification_from_tensors_dataloaders_and_datasets_agree():
    x, y = _blobs()
    model = _trained_classifier(x, y)
    by_tensors = Classification((x, y), (x, y), batch_size=32)
    by_loader = Classification(DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True),
                               DataLoader(TensorDataset(x, y), batch_size=50))
    by_dataset = Classification(TensorDataset(x, y), TensorDataset(x, y), eval_batch_size=7)
    expected = float((model(x).argmax(1) == y).float().mean())
    for task in (by_tensors, by_loader, by_dataset):
        assert evaluate(model, task) == pytest.approx(expected)
    value, sums = measure(by_tensors, model, "val")
    assert sums["n"] == 256 and by_tensors.standard_error(sums) == pytest.approx(math.sqrt(value * (1 - value) / 256))
    assert not by_tensors.has_split("test")


def test_recover_through_a_dataloader_task_matches_the_cached_teacher_path():
    x, y = _blobs()
    model = _trained_classifier(x, y)
    plan = CompressionPlan({"0": LayerPlan(sparsity=0.7, bits=3), "2": LayerPlan(bits=3)}, temperature=2.0, alpha=0.7)
    tensors = Classification((x, y), (x, y), batch_size=32)
    cached = teacher_outputs(model, tensors)
    assert cached.shape == (256, 2)
    students = []
    for task, cache in ((tensors, cached), (tensors, None)):
        student = ct.apply(model, plan)
        result = recover(student, model, task, temperature=2.0, alpha=0.7, steps=30, eval_every=10, lr=1e-2,
                         seed=3, cached_teacher=cache)
        assert [s for s, _ in result.curve] == [10, 20, 30]
        students.append(student)
    # On the fly or cached, the same batches and the same teacher outputs: the same student.
    a, b = (s(x) for s in students)
    assert torch.allclose(a, b, atol=1e-5)
    seed_state = torch.random.get_rng_state()
    recover(ct.apply(model, plan), model, tensors, temperature=2.0, alpha=0.7, steps=3, seed=0)
    assert torch.equal(torch.random.get_rng_state(), seed_state)  # the caller's random state is untouched


def test_dict_batches_and_output_objects_work_through_the_defaults():
    ids = torch.randint(2, 20, (24, 6))
    ids[:, -2:] = 0  # padding
    task = LanguageModeling(ids, ids, batch_size=8, pad_id=0)
    model = DictModel()
    check_task(task, model)
    batch = next(iter(task.batches("train")))
    out = task.outputs(model, batch)
    assert out.shape == (8, 6, 20)
    before = evaluate(model, task)
    recover(model, DictModel().eval(), task, temperature=1.0, alpha=0.0, steps=40, lr=5e-2, eval_every=40)
    assert evaluate(model, task) < before  # perplexity is minimised
    assert task.direction == "minimize" and task.metric == "perplexity"
    # Padding counts nowhere: changing the padded positions' logits changes neither loss nor KD.
    logits = out.detach().clone()
    other = logits.clone()
    other[:, -1] += 100.0
    assert torch.allclose(task.loss(logits, batch), task.loss(other, batch))  # the last position predicts nothing
    padded = logits.clone()
    padded[:, -2:] += torch.randn(8, 2, 20)  # padding positions: no KD term either
    assert torch.allclose(task.distill_loss(padded, logits, batch, 2.0, 1.0), torch.tensor(0.0), atol=1e-6)


def test_regression_distills_towards_the_teacher():
    x = torch.randn(64, 3)
    y = x.sum(1, keepdim=True)
    task = Regression((x, y), (x, y), batch_size=16)
    teacher = nn.Linear(3, 1)
    student = nn.Linear(3, 1)
    pred, teach = student(x), teacher(x).detach()
    batch = (x, y)
    assert torch.allclose(task.distill_loss(pred, teach, batch, 4.0, 1.0), nn.functional.mse_loss(pred, teach))
    assert torch.allclose(task.distill_loss(pred, teach, batch, 4.0, 0.0), nn.functional.mse_loss(pred, y))
    assert evaluate(nn.Identity(), Regression((x, x), (x, x))) == 0.0


def test_a_custom_task_with_only_evaluate_trains_and_scores():
    x = torch.randn(64, 4)
    y = x[:, 0] * 2
    task = MeanAbsError(x, y)
    model = nn.Linear(4, 1)
    check_task(task, model)
    before = evaluate(model, task)
    teacher = nn.Linear(4, 1)
    with torch.no_grad():
        teacher.weight.copy_(torch.tensor([[2.0, 0, 0, 0]]))
        teacher.bias.zero_()
    recover(model, teacher, task, temperature=1.0, alpha=1.0, steps=60, lr=5e-2, eval_every=30)
    assert evaluate(model, task) < before
    assert measure(task, model, "val")[1] is None  # no sums: early stopping is refused for it


def test_presets_pickle_for_ray_workers():
    x, y = _blobs(32)
    for task in (Classification((x, y), (x, y)), LanguageModeling(torch.randint(0, 9, (8, 4)), torch.randint(0, 9, (8, 4))),
                 Regression(TensorDataset(x, x), TensorDataset(x, x))):
        again = pickle.loads(pickle.dumps(task))
        assert type(again) is type(task) and next(iter(again.batches("val"))) is not None


@pytest.mark.parametrize("make, words", [
    (lambda: ("not a module", Classification(*[_blobs(8)] * 2)), "must be a torch.nn.Module; got str"),
    (lambda: (nn.Linear(8, 2), object()), "must be a compresstune.Task"),
    (lambda: (nn.Linear(8, 2), type("T", (Classification,), {"direction": "up"})(*[_blobs(8)] * 2)),
     r"`T.direction` must be one of \['maximize', 'minimize'\]; got 'up'"),
    (lambda: (nn.Linear(8, 2), Classification([], [])), r"Classification.batches\('train'\) yielded no batches"),
    (lambda: (nn.Linear(8, 3, bias=False), type("T", (Classification,), {"outputs": lambda s, m, b: "text"})(
        *[_blobs(8)] * 2)), "T.loss failed on the first 'train' batch"),
    (lambda: (nn.Linear(8, 2), Classification(iter([1]), [])), "must be re-iterable"),
])
def test_bad_tasks_fail_before_any_search_naming_the_method(make, words):
    with pytest.raises(TaskError, match=words):
        model, task = make()
        check_task(task, model)


def test_a_metric_that_is_not_a_finite_number_is_an_error_naming_evaluate():
    class Broken(Classification):
        def compute(self, sums):
            return float("nan")

    x, y = _blobs(16)
    with pytest.raises(TaskError, match=r"Broken.evaluate\(model, 'val'\) must return a finite number .*nan"):
        evaluate(nn.Linear(8, 2), Broken((x, y), (x, y)))


def test_logits_of_reads_tensors_objects_dicts_and_tuples():
    t = torch.zeros(2, 3)
    assert logits_of(t) is t
    assert logits_of({"logits": t}) is t
    assert logits_of((t, "hidden")) is t
    assert logits_of(type("O", (), {"logits": t})()) is t


@pytest.mark.parametrize("batchnorm", ["frozen", "train"])
def test_the_fine_tune_leaves_batchnorm_statistics_alone_unless_told_to_train_them(batchnorm):
    torch.manual_seed(0)
    x, y = torch.randn(128, 6) * 3 + 1, torch.randint(0, 3, (128,))
    task = Classification((x, y), (x[:32], y[:32]), batch_size=32)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3)).eval()
    student = ct.apply(model, CompressionPlan({"0": LayerPlan(bits=8), "3": LayerPlan(bits=8)}))
    bn = student[1]
    stats = (bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked))
    affine = bn.weight.detach().clone()
    recover(student, model, task, temperature=2.0, alpha=0.5, steps=8, lr=1e-2, eval_every=4, batchnorm=batchnorm)
    same = torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    assert same == (batchnorm == "frozen") and (int(bn.num_batches_tracked) == stats[2]) == same
    assert not torch.equal(bn.weight.detach(), affine)  # its scale trains either way
    assert not student.training and not bn.training
    with pytest.raises(ValueError, match="`batchnorm` must be 'frozen' or 'train'; got 'eval'"):
        recover(student, model, task, temperature=2.0, alpha=0.5, steps=1, batchnorm="eval")
