"""``export`` and ``status``: read the study, never write it."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from compresstune.artifact import load
from compresstune.compress import squash
from compresstune.objectives import evaluate
from compresstune.search._promotion import superseded
from compresstune.search._records import metric_of
from compresstune.search._storage import SearchError, load_study, read_pointer
from compresstune.search.config import StudyConfig, ensure_import_paths

__all__ = ["export_trial", "status_text"]


def _trial(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    trials = study.get_trials(deepcopy=False)
    if not 0 <= number < len(trials):
        raise SearchError(f"`--trial` must be a trial number in 0..{len(trials) - 1}; got {number}.")
    t = trials[number]
    if t.state != TrialState.COMPLETE or "artifact" not in t.user_attrs:
        why = t.user_attrs.get("fail_reason") or t.user_attrs.get("rejected") or t.state.name
        raise SearchError(f"trial {number} has no artifact to export ({why}); pick a COMPLETE trial, e.g. from the front.")
    return t


def _rebuild(study: optuna.Study, out: Path):
    """``(model, task or None, why no task)``: from the study's factories (a study file), or from
    ``model.pt`` / ``task.pt`` in the output folder (the Python route)."""
    config = StudyConfig.model_validate(study.user_attrs["config"])
    if config.model is None:
        from compresstune.search._objects import load_saved

        return load_saved(out)
    from compresstune.search._session import load_model_and_task

    study_file = study.user_attrs.get("study_file")
    if study_file:
        ensure_import_paths(study_file)
    model, task = load_model_and_task(config, out)
    return model, task, None


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def broken_constraints(trial: optuna.trial.FrozenTrial) -> dict[str, float]:
    """The constraints a trial breaks (name -> positive value); empty for a feasible trial."""
    return {name: float(v) for name, v in (trial.constraints or {}).items() if float(v) > 0}


ONNX_CHECK_BATCHES = 8  # validation batches the ONNX file is compared on, and calibrated on
CLASSIFICATION_POINTS = 0.01  # int8 activations may cost at most 1 point of a fraction-of-examples metric
RELATIVE_TOLERANCE = 0.01  # ... or 1% of any other metric


def _feasible(t: optuna.trial.FrozenTrial, number: int, force: bool) -> dict[str, float]:
    broken = broken_constraints(t)
    if broken and not force:
        shown = ", ".join(f"{k} by {v:.4g}" for k, v in broken.items())
        raise SearchError(f"trial {number} is infeasible: it breaks {shown}. Pass --force (force=True) to export "
                          "it anyway, or pick a trial from the feasible front (`compresstune status`).")
    return broken


def export_trial_onnx(out: str | Path, number: int, output: str | Path, *, activations: str | None = None,
                      force: bool = False, threads: int = 1) -> str:
    """Export trial ``number`` to one ONNX file (:func:`compresstune.export_onnx`), checked against the
    compressed model on the validation batches in ONNX Runtime; its test metric through ONNX Runtime is
    written next to it (``OUTPUT.metrics.json``).

    ``activations="int8"``: static int8 activations calibrated on the validation batches, weights kept at
    their codes (stored as int8); the test metric through ONNX Runtime must be within 1 point
    (a fraction-of-examples metric) or 1% (any other) of the trial's, else :class:`SearchError` after the
    file and its metrics are written.

    Returns a one-paragraph summary.
    """
    import itertools
    import json
    import tempfile

    from compresstune.onnx_export import OrtModel, export_onnx, quantize_activations, require_onnx, session

    if activations not in (None, "none", "int8"):
        raise SearchError(f"`activations` must be one of none, int8; got {activations!r}.")
    activations = None if activations == "none" else activations
    require_onnx()
    out = Path(out).resolve()
    study, t, broken, src = _exportable(out, number, force)
    model, task, why = _rebuild(study, out)
    if task is None:
        raise SearchError(f"ONNX export needs the study's task for example and check batches: {why}")
    small = load(src, into=model).eval()
    val = list(itertools.islice(task.batches("val"), ONNX_CHECK_BATCHES))
    metric = metric_of(study.user_attrs)[0]
    output = Path(output)
    if activations:
        with tempfile.TemporaryDirectory() as tmp:
            weight_only = Path(tmp) / "weights.onnx"
            result = export_onnx(small, val[0], weight_only, check_batches=val, weight_dtype="int8")
            size = quantize_activations(weight_only, output, val)
    else:
        result = export_onnx(small, val[0], output, check_batches=val)
        size = result.size_bytes
    runner = OrtModel(session(output, threads=threads))
    test = evaluate(runner, task, "test") if task.has_split("test") else None
    recorded = t.user_attrs.get("test_accuracy")
    record = {"trial": number, "file": str(output), "size_bytes": size, "activations": activations or "float32",
              "metric": metric, "test_onnxruntime": test, "test_pytorch": recorded,
              "weights": {w.name: w.dtype for w in result.weights}, "notes": result.notes,
              "max_abs_diff_weight_only": result.max_abs_diff, "output_scale": result.output_scale}
    Path(f"{output}.metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"trial {number}: {output} ({size:,} bytes; .ctz {t.user_attrs['size_bytes']:,} bytes), "
             f"activations {activations or 'float32'}; compressed weights stored as {result.stored()}",
             result.summary().split("\n", 1)[-1].replace(
                 "(CPU):", "(CPU), the weight-only export before int8 activations:" if activations else "(CPU):")
             if result.max_abs_diff is not None else "",
             f"test {metric} through ONNX Runtime {_fmt(test)} (PyTorch {_fmt(recorded)}); "
             f"written to {output}.metrics.json"]
    lines = [line for line in lines if line]
    if broken:
        lines.append("warning: infeasible, exported with --force: breaks "
                     + ", ".join(f"{k} by {v:.4g}" for k, v in broken.items()))
    if activations and test is not None and recorded is not None:
        drop = (recorded - test) if task.direction == "maximize" else (test - recorded)
        allowed = CLASSIFICATION_POINTS if task.binomial else RELATIVE_TOLERANCE * max(abs(recorded), 1e-12)
        if drop > allowed:
            raise SearchError("\n".join(lines) + f"\nint8 activations cost {drop:.4f} of test {metric}, more than "
                              f"the {allowed:.4f} allowed; use the weight-only export (no --activations)")
    return "\n".join(lines)


def _exportable(out: Path, number: int, force: bool):
    """``(study, trial, broken constraints, artifact path)`` of a trial that may be exported."""
    study = load_study(out)
    t = _trial(study, number)
    broken = _feasible(t, number, force)
    src = out / t.user_attrs["artifact"]
    if not src.exists():
        raise SearchError(f"trial {number}'s artifact {str(src)!r} is missing from the output folder.")
    return study, t, broken, src


def export_trial(out: str | Path, number: int, output: str | Path, *, squash_to: str | Path | None = None,
                 check: bool = True, force: bool = False) -> str:
    """Copy trial ``number``'s artifact to ``output``; check it loads and reproduces the stored metric.

    An infeasible trial (one breaking a constraint of the study, e.g. over the
    metric drop) is exported only with ``force=True`` (``--force``), and the summary
    says which constraints it breaks.

    Returns a one-paragraph summary.
    """
    out = Path(out).resolve()
    study, t, broken, src = _exportable(out, number, force)
    shutil.copyfile(src, output)
    metric = metric_of(study.user_attrs)[0]
    lines = [f"trial {number}: {t.user_attrs['size_bytes']:,} bytes ({t.user_attrs['ratio']:.1f}x smaller), "
             f"val {metric} {_fmt(t.user_attrs['val_accuracy'])}, test {metric} {_fmt(t.user_attrs['test_accuracy'])}",
             f"artifact: {output}"]
    if broken:
        lines.append("warning: infeasible, exported with --force: breaks "
                     + ", ".join(f"{k} by {v:.4g}" for k, v in broken.items()))
    longer = superseded(study.get_trials(deepcopy=False)).get(number)
    if longer is not None:
        lines.append(f"note: trial {longer} is this plan after the longer fine-tune of its promotion, and replaces "
                     f"it on the front: `--trial {longer}` exports that one")
    if check or squash_to:
        model, task, why = _rebuild(study, out)
        small = load(output, into=model).eval()
        if check and task is None:
            lines.append(f"not checked: {why}; the artifact loads into the saved model")
        elif check:
            value = evaluate(small, task, "val")
            recorded = t.user_attrs["val_accuracy"]
            if not math.isclose(value, recorded, rel_tol=1e-5, abs_tol=1e-6):
                raise SearchError(f"the artifact reloads with val {metric} {value:.6f}, but the study recorded "
                                  f"{recorded:.6f}; it is not the model the trial measured.")
            lines.append(f"checked: reloads and reproduces val {metric} {value:.4f}")
        if squash_to:
            lines.append(_save_squashed(squash(small), squash_to))
    return "\n".join(lines)


def _save_squashed(plain: torch.nn.Module, path) -> str:
    """``torch.save`` the squashed module; a model whose class was defined in the script that ran
    the study (kept by value in ``model.pt``) is saved with cloudpickle instead."""
    import pickle

    try:
        torch.save(plain, path)
        return f"squashed nn.Module: {path} (torch.load(..., weights_only=False); no compresstune needed)"
    except (pickle.PicklingError, AttributeError):
        from ray import cloudpickle

        torch.save(plain, path, pickle_module=cloudpickle)
        return (f"squashed nn.Module: {path} (its class came from the script that ran the study, so it was saved "
                "with cloudpickle: torch.load(..., weights_only=False) needs cloudpickle installed, not compresstune)")


def status_text(study: optuna.Study, out: Path) -> str:
    """Progress, the current front as a table, and the Optuna command that reads the same study."""
    from compresstune.search.pareto import front

    pointer = read_pointer(out)
    trials = study.get_trials(deepcopy=False)
    by_state = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    # The latest run's own target (`--trials` included); older studies: the study file's.
    wanted = study.user_attrs.get("target_trials") or study.user_attrs.get("config", {}).get("search", {}).get("trials")
    every = [t for t in trials if t.state == TrialState.COMPLETE]
    promoted = [t for t in every if t.user_attrs.get("promoted_from") is not None]
    done = [t for t in every if t.user_attrs.get("promoted_from") is None]
    kinds = [(sum(t.user_attrs.get("stopped_at_rung") is not None for t in done), "stopped early"),
             (sum(t.user_attrs.get("rejected") == "budget" for t in done), "over a budget, not fine-tuned"),
             (sum(bool(t.user_attrs.get("seed_trial")) for t in done), "seed trials"),
             (sum(t.user_attrs.get("refined_from") is not None for t in done), "refinements of the front")]
    among = ", ".join(f"{n} {what}" for n, what in kinds if n)
    steps = sorted({int(t.user_attrs.get("promotion_steps", 0)) for t in promoted})
    longer = (f", {len(promoted)} promoted to a longer fine-tune ({'/'.join(map(str, steps))} steps; each "
              "replaces its short trial on the front)") if promoted else ""
    head = (f"study {study.study_name!r} in {pointer.storage}\n"
            f"trials: {len(done)} complete" + (f" of {wanted}" if wanted else "") +
            (f" ({among})" if among else "") + longer +
            f", {by_state['FAIL']} failed, {by_state['RUNNING']} running, {by_state['WAITING']} queued")
    table = front(study)
    cols = [c for c in ("number", "val_accuracy", "test_accuracy", "size_bytes", "ratio") if c in table.columns]
    metric, direction = metric_of(study.user_attrs)
    shown = table[cols].rename(columns={"val_accuracy": f"val_{metric}", "test_accuracy": f"test_{metric}"})
    body = shown.to_string(index=False) if len(table) else "(no feasible Pareto-optimal trial yet)"
    head += f"\nmetric: {metric} ({'higher' if direction == 'maximize' else 'lower'} is better)"
    cmd = optuna_command(study.study_name, pointer.storage)
    same = ("Optuna's own CLI (its list also keeps the short trials that promotions replace)" if promoted
            else "Same set with Optuna's own CLI")
    return f"{head}\n\nPareto front (feasible):\n{body}\n\n{same}:\n  {cmd}"


def optuna_command(study_name: str, storage: str) -> str:
    """Optuna's own CLI reading the same study (a journal file needs its storage class).

    Example:
        >>> optuna_command("digits", "journal:/runs/d/study.journal")
        'optuna best-trials --study-name digits --storage /runs/d/study.journal --storage-class JournalFileBackend'
    """
    if storage.startswith("journal:"):
        return (f"optuna best-trials --study-name {study_name} --storage {storage.removeprefix('journal:')} "
                "--storage-class JournalFileBackend")
    return f"optuna best-trials --study-name {study_name} --storage {storage}"
