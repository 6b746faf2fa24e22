"""``compresstune finetune``: a longer recovery fine-tune of one trial's compressed model.

The search fine-tunes every trial briefly; that budget ranks plans. A plan you
pick (or one rejected by the metric constraint by a little) often recovers more
with a longer fine-tune. This takes the trial's artifact, fine-tunes it with the
trial's own distillation settings (temperature, alpha) against the uncompressed
model, and writes a new artifact (same plan, same size), reporting the
validation and test metric before and after. It never writes the study.
"""

from __future__ import annotations

from pathlib import Path

import torch

from compresstune.artifact import load, save
from compresstune.compress import plan_of
from compresstune.objectives import evaluate, recover
from compresstune.search._export import _rebuild, _trial, broken_constraints
from compresstune.search._records import metric_of
from compresstune.search._storage import SearchError, load_study
from compresstune.search.config import StudyConfig

__all__ = ["finetune_trial"]


def _steps(task, steps: int | None, epochs: float | None) -> int:
    if (steps is None) == (epochs is None):
        raise SearchError(f"give exactly one of `steps` and `epochs`; got steps={steps!r}, epochs={epochs!r}.")
    if steps is not None:
        if steps < 1:
            raise SearchError(f"`steps` must be an integer >= 1; got {steps!r}.")
        return int(steps)
    if not epochs > 0:
        raise SearchError(f"`epochs` must be a number > 0; got {epochs!r}.")
    try:
        per_epoch = len(task.batches("train"))
    except TypeError:
        raise SearchError("`epochs` needs training batches with a length (a DataLoader or a list); this task's "
                          "`batches('train')` has none: give `steps` instead.") from None
    return max(1, round(epochs * per_epoch))


def finetune_trial(out: str | Path, number: int, output: str | Path, *, steps: int | None = None,
                   epochs: float | None = None, lr: float | None = None, log=print) -> str:
    """Fine-tune trial ``number``'s compressed model for ``steps`` (or ``epochs``) and save it to
    ``output``; returns a summary of the metric before and after.

    Example:
        >>> print(finetune_trial("runs/digits", 12, "small.ctz", epochs=3))  # doctest: +SKIP
    """
    out = Path(out).resolve()
    study = load_study(out)
    t = _trial(study, number)
    model, task, why = _rebuild(study, out)
    if task is None:
        raise SearchError(f"cannot fine-tune trial {number}: {why}.")
    n = _steps(task, steps, epochs)
    config = StudyConfig.model_validate(study.user_attrs["config"])
    f = config.finetune
    device = torch.device("cuda" if torch.cuda.is_available() and config.resources.device != "cpu" else "cpu")
    teacher = model.to(device).eval()
    student = load(out / t.user_attrs["artifact"], into=teacher).to(device)
    metric = metric_of(study.user_attrs)[0]
    before = {s: evaluate(student, task, s) for s in ("val", "test") if task.has_split(s)}
    plan = plan_of(student)
    log(f"trial {number}: fine-tuning {n} steps (temperature {plan.temperature:.3g}, alpha {plan.alpha:.3g}, "
        f"lr {lr or f.lr:g}) on {device}")
    result = recover(student, teacher, task, temperature=plan.temperature, alpha=plan.alpha, steps=n,
                     lr=lr or f.lr, weight_decay=f.weight_decay, optimizer=f.optimizer, batchnorm=f.batchnorm,
                     eval_every=max(1, min(f.eval_every * 10, n)), seed=config.search.seed,
                     on_eval=lambda step, value: log(f"  step {step}: val {metric} {value:.4f}"))
    after = {s: evaluate(student, task, s) for s in before}
    size = save(student.cpu(), output)
    lines = [f"trial {number}: {size:,} bytes ({t.user_attrs['ratio']:.1f}x smaller), {n} more steps "
             f"({result.seconds:.1f} s)"]
    lines += [f"{s} {metric}: {before[s]:.4f} -> {after[s]:.4f}" for s in before]
    broken = broken_constraints(t)
    if broken:
        lines.append("the trial broke " + ", ".join(broken) + " after its short fine-tune; compare the "
                     f"val {metric} above with the study's limit")
    lines.append(f"artifact: {output} (ct.load(path, into=model); `compresstune export` exports the study's own)")
    return "\n".join(lines)
