"""The ``macs`` objective and the ``max_macs`` budget (issue 15, item 4), end to end.

Real Optuna studies of a tiny MLP in a SQLite file under ``tmp_path``: every trial
records ``macs`` equal to ``objectives.multiply_accumulates`` of its own compressed
model, counted before training and once per distinct structure; a plan over
``max_macs`` is scored without fine-tuning with a positive ``max_macs`` constraint,
as ``max_bops`` is; bad values are refused before any compute.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

from compresstune.compress import apply
from compresstune.errors import ConfigError
from compresstune.objectives import macs_key, multiply_accumulates, teacher_outputs
from compresstune.plan import CompressionPlan, LayerPlan
from compresstune.search import run
from compresstune.search._budgets import Budgets, preflight
from compresstune.search._trial import TrialContext, TrialSettings, run_checked, stopped_outcome
from compresstune.search.config import StudyConfig
from compresstune.search.report import trials_frame
from compresstune.tasks import Classification


def _data(n: int = 96, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=gen)
    return x, (x[:, 0] + x[:, 1] > 0).long()


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2)).eval()


def _task() -> Classification:
    x, y = _data()
    return Classification((x, y), (x, y), (x, y), batch_size=32, eval_batch_size=96)


# Bits and unstructured sparsity leave MACs alone; rank and structured pruning of "0" lower them.
SPACE = {"sparsity": {"low": 0.0, "high": 0.5}, "bits": [8, 32], "rank_fraction": [0.25, 1.0],
         "structured": [False], "overrides": [{"name": "0", "structured": [False, True]}]}


def _run(tmp_path: Path, *, objectives=None, constraints=None, trials: int = 6):
    model, task = _model(), _task()
    study, _ = run(model, task, space=SPACE, objectives=objectives, finetune={"steps": 4, "eval_every": 4},
                   constraints={"max_accuracy_drop": None, **(constraints or {})},
                   sensitivity={"enabled": False}, trials=trials, out=str(tmp_path / "out"), sampler="random",
                   seed=1, progress=False, log=lambda m: None)
    return model, study


def _macs_of(model: nn.Module, trial) -> float:
    plan = CompressionPlan.from_json(trial.user_attrs["plan"])
    return multiply_accumulates(apply(model, plan), _data()[0][:1])


def test_the_macs_objective_records_each_trials_multiply_accumulates(tmp_path: Path) -> None:
    model, study = _run(tmp_path, objectives=["accuracy", "size", "macs"])
    assert study.metric_names == ["val_accuracy", "size_bytes", "macs"]
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]
    reference = multiply_accumulates(model, _data()[0][:1])
    assert study.user_attrs["baseline"]["macs"] == reference == 8 * 32 + 32 * 2
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 6
    for t in done:
        assert t.values[2] == t.user_attrs["macs"] == pytest.approx(_macs_of(model, t), rel=0, abs=1e-9)
        assert t.user_attrs["macs"] <= reference
    assert len({t.user_attrs["macs"] for t in done}) > 1  # the plans' structures differ
    frame = trials_frame(study)
    assert list(frame["macs"]) == [t.user_attrs["macs"] for t in sorted(done, key=lambda t: t.number)]
    assert (frame["values_macs"] == frame["macs"]).all()
    html = (tmp_path / "out" / "report.html").read_text()
    assert "MACs" in html


def test_a_max_macs_budget_below_the_reference_rejects_plans_before_training(tmp_path: Path) -> None:
    limit = 200.0  # the reference is 320; rank 0.25 of "0" (or pruned channels) brings a plan under it
    model, study = _run(tmp_path, constraints={"max_macs": limit}, trials=8)
    assert "max_macs" in study.user_attrs["constraint_names"]
    assert study.user_attrs["baseline"]["macs"] == 320
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 8
    over = [t for t in done if t.user_attrs["macs"] > limit]
    assert over and len(over) < len(done)  # both kinds, so the test shows the difference
    for t in done:
        macs = t.user_attrs["macs"]
        assert macs == pytest.approx(_macs_of(model, t), rel=0, abs=1e-9)
        assert t.constraints["max_macs"] == pytest.approx(macs - limit)  # positive when over
        if macs > limit:  # as max_bops: COMPLETE, not fine-tuned, infeasible, no artifact
            assert t.user_attrs["rejected"] == "budget" and t.user_attrs["over_budget"] == ["max_macs"]
            assert t.user_attrs["curve"] == [] and "artifact" not in t.user_attrs
        else:
            assert "rejected" not in t.user_attrs and t.user_attrs["curve"]
            assert (tmp_path / "out" / t.user_attrs["artifact"]).is_file()
    assert all(t.number not in {o.number for o in over} for t in study.best_trials)
    frame = trials_frame(study).set_index("number")
    for t in over:
        assert not frame.loc[t.number, "feasible"] and "max_macs" in frame.loc[t.number, "violated"]
        assert frame.loc[t.number, "category"] == "rejected"


# -- the trial body, without a study -------------------------------------------------------------

def _context(extra: str | None = None) -> TrialContext:
    model, task = _model(), _task()
    settings = TrialSettings(
        steps=4, lr=1e-2, weight_decay=0.0, optimizer="adam", eval_every=4, seed=0, max_drop=None,
        max_size_bytes=None, min_ratio=None, extra_objective=extra, activation_bits=32, latency_batch_size=1,
        latency_repeats=1, latency_warmup=0, baseline_value=0.9, reference_bytes=4 * (8 * 32 + 32 + 32 * 2 + 2))
    return TrialContext(model=model, task=task, settings=settings, cached_teacher=teacher_outputs(model, task),
                        example=_data()[0][:1])


def test_macs_are_counted_before_training_once_per_structure(monkeypatch) -> None:
    from compresstune import objectives
    from compresstune.search import _trial

    ctx = _context(extra="macs")
    calls, seen_at_training = [], []
    real_count, real_recover = objectives.multiply_accumulates, _trial.recover
    monkeypatch.setattr(objectives, "multiply_accumulates", lambda *a, **k: calls.append(1) or real_count(*a, **k))
    monkeypatch.setattr(_trial, "recover", lambda *a, **k: seen_at_training.append(dict(ctx.macs_cache))
                        or real_recover(*a, **k))
    same = [CompressionPlan({"0": LayerPlan(sparsity=s, bits=b)}) for s, b in ((0.5, 8), (0.2, 4), (0.0, 32))]
    factored = CompressionPlan({"0": LayerPlan(bits=8, rank=2)})
    outs = [run_checked(p, ctx, budgets=Budgets(max_macs=1e9)) for p in [*same, factored, factored]]
    assert len(calls) == 2  # one structure without a rank, one with
    assert [o.user_attrs["macs"] for o in outs] == [320.0] * 3 + [8 * 2 + 2 * 32 + 64.0] * 2
    assert [o.values[2] for o in outs] == [o.user_attrs["macs"] for o in outs]
    assert seen_at_training and all(len(c) >= 1 for c in seen_at_training)  # known before the fine-tune began
    assert macs_key(apply(ctx.model, same[0])) == macs_key(apply(ctx.model, same[1]))


def test_each_channel_fraction_is_its_own_structure() -> None:
    ctx = _context(extra="macs")
    plans = [CompressionPlan({"0": LayerPlan(structured=f, sparsity=sp, bits=8)})
             for f, sp in ((0.5, 0.0), (0.25, 0.0), (0.5, 0.3))]
    outs = [run_checked(p, ctx, budgets=Budgets(max_macs=250.0)) for p in plans]
    truth = [multiply_accumulates(apply(ctx.model, p), ctx.example) for p in plans]
    assert [o.user_attrs["macs"] for o in outs] == truth == [8 * 16 + 16 * 2.0, 8 * 24 + 24 * 2.0, 160.0]
    assert len(ctx.macs_cache) == 2  # the third plan only adds unstructured zeros to the first
    assert [o.constraints["max_macs"] for o in outs] == [-90.0, -10.0, -90.0]


def test_the_macs_objective_without_a_budget_still_records_macs() -> None:
    ctx = _context(extra="macs")
    out = run_checked(CompressionPlan({"0": LayerPlan(bits=8, rank=2)}), ctx)  # no budget: run_trial itself
    assert out.state == "complete" and out.values[2] == out.user_attrs["macs"] == 144.0


def test_over_max_macs_is_scored_without_training_like_max_bops() -> None:
    ctx = _context()
    plan = CompressionPlan({"0": LayerPlan(sparsity=0.5, bits=8)})
    pre = preflight(plan, ctx, Budgets(max_macs=100.0))
    assert pre.macs == 320.0 and pre.over == ["max_macs"] and pre.bops is None
    out = run_checked(plan, ctx, budgets=Budgets(max_macs=100.0))
    assert out.user_attrs["rejected"] == "budget" and out.user_attrs["over_budget"] == ["max_macs"]
    assert out.constraints["max_macs"] == 220.0 and out.artifact is None and out.user_attrs["curve"] == []
    within = run_checked(plan, ctx, budgets=Budgets(max_macs=1000.0, max_bops=1e12))
    assert within.constraints["max_macs"] == -680.0 and within.constraints["max_bops"] < 0
    assert within.artifact is not None and "rejected" not in within.user_attrs


def test_a_stopped_trial_carries_its_macs_and_the_macs_constraint() -> None:
    """What both executors build for a trial stopped at a rung (the Ray searcher from the rung report)."""
    settings = _context(extra="macs").settings
    out = stopped_outcome(settings, plan_json="{}", size_bytes=900, step=4, accuracy=0.7, extra_value=144.0,
                          budgets=Budgets(max_macs=200.0))
    assert out.values == [0.7, 900.0, 144.0] and out.user_attrs["macs"] == 144.0
    assert out.constraints["max_macs"] == -56.0 and out.constraints["stopped"] == 1.0
    plain = stopped_outcome(_context().settings, plan_json="{}", size_bytes=900, step=4, accuracy=0.7,
                            budgets=Budgets(max_macs=200.0), macs=320.0)
    assert plain.user_attrs["macs"] == 320.0 and plain.constraints["max_macs"] == 120.0


# -- validation -------------------------------------------------------------------------------

@pytest.mark.parametrize("sections, field, says", [
    ({"constraints": {"max_macs": -3}}, "`constraints.max_macs`", "greater than 0 (got -3)"),
    ({"constraints": {"max_macs": 0}}, "`constraints.max_macs`", "greater than 0 (got 0)"),
    ({"constraints": {"max_macs": True}}, "`constraints.max_macs`", "not a boolean; got True"),
    ({"constraints": {"max_macs": "lots"}}, "`constraints.max_macs`", "valid number"),
    ({"objectives": ["accuracy", "macz"]}, "`objectives[1]`",
     "'bops', 'macs', 'onnx_size' or 'onnx_latency' (got 'macz')"),
    ({"objectives": ["accuracy", "size", "macs", "bops"]}, "`objectives`", "at most one third objective"),
])
def test_bad_macs_settings_name_the_field_the_value_and_what_is_allowed(sections, field, says) -> None:
    with pytest.raises(ConfigError) as err:
        StudyConfig.from_dict({"model": {"factory": "m:f"}, "data": {"factory": "m:d"}, **sections})
    assert field in str(err.value) and says in str(err.value)


def test_a_bad_max_macs_fails_before_any_compute(tmp_path: Path, monkeypatch) -> None:
    from compresstune.search import _controller

    monkeypatch.setattr(_controller, "prepare", lambda *a, **k: pytest.fail("prepared a study"))
    with pytest.raises(ConfigError, match=r"`constraints.max_macs`.*\(got -3\)"):
        run(_model(), _task(), constraints={"max_macs": -3}, out=str(tmp_path / "out"), progress=False)
    assert not (tmp_path / "out").exists()


def test_max_macs_is_fingerprinted_only_when_set() -> None:
    base = {"model": {"factory": "m:f"}, "data": {"factory": "m:d"}}
    cfg = StudyConfig.from_dict(base)
    assert cfg.constraints.max_macs is None and "max_macs" not in cfg.fingerprint_data()["constraints"]
    assert StudyConfig.from_dict({**base, "constraints": {"max_macs": 1e6}}).fingerprint() != cfg.fingerprint()
    assert StudyConfig.from_dict({**base, "objectives": ["macs", "size", "accuracy"]}).objectives == [
        "accuracy", "size", "macs"]


# -- Ray: the worker function, without a cluster (as tests/search/test_ray.py drives it) ---------

@pytest.mark.ray
def test_the_ray_worker_records_macs_as_the_local_loop_does() -> None:
    pytest.importorskip("ray.tune", reason="the Ray executor needs ray[tune]")
    from compresstune.search import _ray

    ctx = _context(extra="macs")
    budgets = Budgets(max_macs=200.0)
    for plan in (CompressionPlan({"0": LayerPlan(bits=8)}), CompressionPlan({"0": LayerPlan(bits=8, rank=2)})):
        remote = pickle.loads(_ray.execute({"plan": plan.to_json()}, ctx, budgets=budgets)["outcome"])
        local = run_checked(plan, ctx, budgets=budgets)
        assert remote.user_attrs["macs"] == local.user_attrs["macs"] == remote.values[2] == local.values[2]
        assert remote.constraints == local.constraints
        assert remote.user_attrs.get("rejected") == local.user_attrs.get("rejected")
        assert (remote.constraints["max_macs"] > 0) == (remote.user_attrs.get("rejected") == "budget")
