"""The executor contract: what every executor must record, per kind of outcome.

Modelled on Optuna's ``optuna/testing/storages.py`` (``STORAGE_MODES`` and
``StorageSupplier``): :data:`EXECUTORS` names every executor and how to run a
study on it, and :class:`ExecutorSupplier` sets up and tears down what it needs
(a Ray session, reused for every study of that executor). A test module
parametrises over :data:`EXECUTORS` and calls :func:`run_contract_study`, which
runs one small real study from the same queued plans on that executor:

* phase 1: a dominating trial alone (small and accurate), so that it is
  recorded before the trial it must stop;
* phase 2: a trial that raises, one whose loss becomes NaN, a plain complete
  trial, one over the size budget and one that the dominating trial stops at
  its first rung (it is larger and its accuracy is at chance);
* phase 3: a trial that interrupts its own driver (SIGINT, as Ctrl-C) while it
  runs: the run raises KeyboardInterrupt, the trial is FAIL "interrupted" and
  queued again;
* phase 4: the same command again: the queued trial runs to the end.

:func:`signature` reduces each kind of record to what must not differ between
executors: state, attribute keys and their types, constraint names, failure
kind and the reason's first words. Which trial lands on which worker, and the
numbers, may differ.

Adding an executor is one line in :data:`EXECUTORS`.

Example:
    >>> sorted(EXECUTORS)
    ['in-process', 'ray-1', 'ray-2']
"""

from __future__ import annotations

import json
import os
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from optuna.trial import TrialState
from torch import nn

__all__ = ["EXECUTORS", "KINDS", "ContractNet", "ExecutorSupplier", "contract_data", "contract_model",
           "run_contract_study", "signature"]

EXECUTORS: dict[str, dict[str, Any]] = {
    "in-process": {"workers": 0},
    "ray-1": {"workers": 1},
    "ray-2": {"workers": 2},
}
"""Executor name -> the ``search`` settings that select it (and its Ray size)."""

KINDS = ("complete", "rejected", "stopped", "failed-exception", "failed-nan", "interrupted", "requeued")

FEATURES, CLASSES, PAD = 16, 4, 48

# What the plan of the `pad` layer makes the contract model do while it fine-tunes.
RAISE_BITS, NAN_BITS, INTERRUPT_BITS, CHANCE_BITS = 3, 5, 6, 16


def contract_data(seed: int = 0):
    """Four well-separated Gaussian classes in 16 dimensions (train 512, val and test 256)."""
    from compresstune.data import Split, Splits

    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(CLASSES, FEATURES, generator=g) * 3.0

    def split(n: int) -> Split:
        y = torch.arange(n) % CLASSES
        return Split(centers[y] + torch.randn(n, FEATURES, generator=g), y)

    return Splits(train=split(512), val=split(256), test=split(256), num_classes=CLASSES, name="contract")


class ContractNet(nn.Module):
    """A linear classifier (``crit``) and a layer that only adds size (``pad``), whose
    bit-width in the plan chooses what happens while the trial fine-tunes:
    raise, a NaN loss, an interrupt of the driver (once per ``marker`` file), or
    logits at chance (the dominated trial)."""

    def __init__(self, *, driver_pid: int, marker: str) -> None:
        super().__init__()
        self.crit = nn.Linear(FEATURES, CLASSES)
        self.pad = nn.Linear(FEATURES, PAD)
        self.driver_pid, self.marker = driver_pid, marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.crit(x) + 0.0 * self.pad(x).sum(dim=1, keepdim=True)
        bits = self._pad_bits()
        if bits == CHANCE_BITS:  # always class 0: accuracy 1/4, whatever the training does
            first = torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), CLASSES)
            return first.to(logits.dtype) + 0.0 * logits
        if not self.training:
            return logits
        if bits == RAISE_BITS:
            raise RuntimeError("contract: an exception inside the trial")
        if bits == NAN_BITS:
            return logits * float("nan")
        if bits == INTERRUPT_BITS and not os.path.exists(self.marker):
            Path(self.marker).write_text("interrupted once\n")
            os.kill(self.driver_pid, signal.SIGINT)
            time.sleep(10.0)  # the driver interrupts this trial meanwhile
        return logits

    def _pad_bits(self) -> int | None:
        from compresstune.compress import plan_of

        layer = plan_of(self).layers.get("pad")
        return None if layer is None else layer.bits


def contract_model(*, data=None, cache_dir=None, marker: str = "") -> ContractNet:
    """The baseline: trained to near-perfect accuracy in a few hundred steps."""
    torch.manual_seed(0)
    model = ContractNet(driver_pid=os.getpid(), marker=marker)
    if data is not None:
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        for _ in range(150):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(data.train.x), data.train.y).backward()
            opt.step()
    return model.eval()


def _params(pad_bits: int, pad_sparsity: float, crit_bits: int = 32, crit_sparsity: float = 0.0) -> dict:
    return {"crit:sparsity": crit_sparsity, "crit:bits": crit_bits, "pad:sparsity": pad_sparsity,
            "pad:bits": pad_bits, "distill:temperature": 2.0, "distill:alpha": 0.5}


PLANS = {
    "dominating": _params(4, 0.9),
    "failed-exception": _params(RAISE_BITS, 0.0),
    "failed-nan": _params(NAN_BITS, 0.0),
    "complete": _params(8, 0.5, crit_bits=8),
    "rejected": _params(32, 0.0),
    "stopped": _params(CHANCE_BITS, 0.0),
    "interrupted": _params(INTERRUPT_BITS, 0.0),
}


def _size_of(params: dict) -> int:
    from compresstune.artifact import packed_size
    from compresstune.compress import apply
    from compresstune.plan import CompressionPlan, LayerPlan

    layers = {name: LayerPlan(sparsity=params[f"{name}:sparsity"], bits=params[f"{name}:bits"])
              for name in ("crit", "pad")}
    model = ContractNet(driver_pid=0, marker="")
    return packed_size(apply(model, CompressionPlan(layers, temperature=2.0, alpha=0.5)))


def study_config(out: Path, *, trials: int, workers: int):
    """The contract study: early stopping on, a size budget between the stopped and the rejected plan."""
    from compresstune.search.config import StudyConfig

    budget = (_size_of(PLANS["stopped"]) + _size_of(PLANS["rejected"])) // 2
    return StudyConfig.model_validate({
        "name": "contract",
        "model": {"factory": "compresstune.search.testing:contract_model", "kwargs": {"marker": str(out / "marker")}},
        "data": {"factory": "compresstune.search.testing:contract_data"},
        "space": {"include": ["crit", "pad"], "sparsity": {"low": 0.0, "high": 0.9},
                  "bits": [RAISE_BITS, 4, NAN_BITS, INTERRUPT_BITS, 8, CHANCE_BITS, 32], "rank_fraction": None},
        "finetune": {"steps": 20, "batch_size": 64, "eval_every": 5, "lr": 0.01},
        "constraints": {"max_accuracy_drop": None, "max_size_bytes": budget},
        "sensitivity": {"enabled": False},
        "early_stopping": {"enabled": True},
        "search": {"trials": trials, "sampler": "random", "seed": 0, "max_failures": 10, "out": str(out),
                   "workers": workers},
    })


@dataclass
class ExecutorSupplier:
    """Sets up what an executor needs for a whole test module (a Ray session, reused)."""

    name: str
    seconds: list = field(default_factory=list)  # each run's wall time, for the curious

    @property
    def workers(self) -> int:
        return int(EXECUTORS[self.name]["workers"])

    def start(self) -> None:
        if self.workers:
            import ray

            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
            if not ray.is_initialized():
                ray.init(address="local", num_cpus=self.workers, include_dashboard=False, log_to_driver=False,
                         logging_level="ERROR")

    def restart(self) -> None:
        """After an interrupted run: a trial's process may still be running; start clean."""
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.workers:
            import ray

            ray.shutdown()

    @contextmanager
    def session(self):
        self.start()
        try:
            yield self
        finally:
            self.stop()


def _run(out: Path, supplier: ExecutorSupplier, trials: int, queue: list[str] = ()) -> None:
    """One run of the study, as ``compresstune run`` does it, after queueing ``queue``."""
    from compresstune.search._controller import _execute, prepare
    from compresstune.search._storage import RunLock

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = study_config(out, trials=trials, workers=supplier.workers)
    t0 = time.perf_counter()
    with RunLock(out):
        session = prepare(config, out, log=lambda msg: None)
        for kind in queue:
            session.study.enqueue_trial(PLANS[kind], user_attrs={"contract_kind": kind})
        try:
            _execute(session, progress=False)
        finally:
            supplier.seconds.append(round(time.perf_counter() - t0, 1))


def run_contract_study(out: Path, supplier: ExecutorSupplier) -> list:
    """Run the four phases on one executor; returns the study's trials."""
    from compresstune.search import load_study

    out.mkdir(parents=True, exist_ok=True)
    _run(out, supplier, trials=1, queue=["dominating"])
    _run(out, supplier, trials=4, queue=["failed-exception", "failed-nan", "complete", "rejected", "stopped"])
    try:
        _run(out, supplier, trials=5, queue=["interrupted"])
    except KeyboardInterrupt:
        supplier.restart()
    else:
        raise AssertionError(f"{supplier.name}: the interrupting trial did not interrupt the run")
    _run(out, supplier, trials=5)
    return load_study(out).get_trials()


def kind_of(trial) -> str | None:
    """Which contract kind a recorded trial is."""
    attrs = trial.user_attrs
    if trial.state == TrialState.FAIL and attrs.get("fail_kind") == "interrupted":
        return "interrupted"
    if "requeued_from" in attrs:
        return "requeued"
    kind = attrs.get("contract_kind")
    return "complete" if kind == "dominating" else kind


def signature(trial) -> dict[str, Any]:
    """What must be the same on every executor for a kind of record."""
    attrs = {k: v for k, v in trial.user_attrs.items() if k != "contract_kind"}
    reason = attrs.get("fail_reason")
    return {
        "state": trial.state.name,
        "attrs": {k: type(v).__name__ for k, v in sorted(attrs.items())},
        "constraints": sorted(trial.constraints),
        "values": None if trial.values is None else len(trial.values),
        "fail_kind": attrs.get("fail_kind"),
        "reason": None if reason is None else str(reason).split(":")[0],
    }


def signatures(trials) -> dict[str, dict[str, Any]]:
    """One signature per kind; the trials of one kind must agree among themselves."""
    out: dict[str, dict[str, Any]] = {}
    for t in trials:
        kind = kind_of(t)
        if kind is None:
            continue
        sig = signature(t)
        if kind in out and out[kind] != sig:
            raise AssertionError(f"two {kind} records differ: {json.dumps(out[kind])} vs {json.dumps(sig)}")
        out[kind] = sig
    return out
