"""Pareto-aware early stopping: the pure rule on hand-built rung tables (ties, NaN,
equal sizes), the Ray Tune scheduler deciding with the same rule, budgets known
before training, and a real digits run that stops a trial and keeps it off the front."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from torch import nn

from compresstune.data import Split
from compresstune.objectives import teacher_outputs
from compresstune.plan import CompressionPlan, LayerPlan
from compresstune.search._budgets import Budgets
from compresstune.search._early_stop import RungTable, StopRule, TrialHooks, margin
from compresstune.search._trial import StopTrial, TrialContext, TrialSettings, run_checked, stopped_outcome
from compresstune.tasks import Classification

N = 400
RULE = StopRule(n_val=N, final_step=150, margin_se=2.0)


def table(*rows) -> RungTable:
    t = RungTable()
    for key, step, size, acc in rows:
        t.add(key, step=step, size_bytes=size, accuracy=acc)
    return t


# -- the pure rule ---------------------------------------------------------------------------------

def test_margin_is_k_binomial_standard_errors_plus_the_floor() -> None:
    assert margin(0.9, 0.9, 400) == pytest.approx(2 * math.sqrt(0.09 / 400))
    assert margin(0.8, 0.9, 400, margin_se=1.0, min_margin=0.01) == pytest.approx(math.sqrt(0.85 * 0.15 / 400) + 0.01)
    # A perfect score still has a margin (p kept half an example away from 1).
    assert margin(1.0, 1.0, 400) > 0


def test_a_no_larger_clearly_better_trial_stops_it() -> None:
    t = table((0, 50, 1000, 0.95))
    decision = RULE.decide(t, key=1, step=50, size_bytes=2000, accuracy=0.80)
    assert decision is not None and decision.by == 0 and decision.step == 50 and decision.accuracy == 0.80
    assert decision.margin == pytest.approx(margin(0.80, 0.95, N))


def test_a_larger_better_trial_does_not() -> None:
    assert RULE.decide(table((0, 50, 3000, 0.99)), key=1, step=50, size_bytes=2000, accuracy=0.80) is None


def test_within_the_noise_margin_does_not() -> None:
    m = margin(0.90, 0.91, N)
    assert 0.01 < m
    assert RULE.decide(table((0, 50, 100, 0.91)), key=1, step=50, size_bytes=2000, accuracy=0.90) is None


def test_equal_sizes_count_and_equal_accuracy_never_dominates() -> None:
    assert RULE.decide(table((0, 50, 2000, 0.97)), key=1, step=50, size_bytes=2000, accuracy=0.80) is not None
    assert RULE.decide(table((0, 50, 2000, 0.80)), key=1, step=50, size_bytes=2000, accuracy=0.80) is None
    zero = StopRule(n_val=N, final_step=150, margin_se=0.0)  # even with no margin a tie is not "higher"
    assert zero.decide(table((0, 50, 1000, 0.80)), key=1, step=50, size_bytes=2000, accuracy=0.80) is None


def test_only_the_same_rung_counts() -> None:
    t = table((0, 100, 1000, 0.99))
    assert RULE.decide(t, key=1, step=50, size_bytes=2000, accuracy=0.5) is None


def test_the_trial_itself_is_ignored() -> None:
    t = table((1, 50, 1000, 0.99))
    assert RULE.decide(t, key=1, step=50, size_bytes=2000, accuracy=0.5) is None


def test_nan_and_inf_are_ignored_never_stopping_by_accident() -> None:
    t = table((0, 50, 1000, math.nan), (2, 50, math.nan, 0.99), (3, 50, 1000, math.inf), (4, 50, -math.inf, 0.99))
    assert RULE.decide(t, key=1, step=50, size_bytes=2000, accuracy=0.5) is None
    good = table((0, 50, 1000, 0.99))
    assert RULE.decide(good, key=1, step=50, size_bytes=2000, accuracy=math.nan) is None
    assert RULE.decide(good, key=1, step=50, size_bytes=math.nan, accuracy=0.5) is None


def test_never_at_the_last_step_nor_before_the_grace_period() -> None:
    t = table((0, 150, 1000, 0.99), (0, 20, 1000, 0.99), (0, 50, 1000, 0.99))
    assert RULE.decide(t, key=1, step=150, size_bytes=2000, accuracy=0.5) is None
    graced = StopRule(n_val=N, final_step=150, min_step=50)
    assert graced.decide(t, key=1, step=20, size_bytes=2000, accuracy=0.5) is None
    assert graced.decide(t, key=1, step=50, size_bytes=2000, accuracy=0.5) is not None


def test_early_rungs_need_a_larger_gap() -> None:
    slack = StopRule(n_val=N, final_step=150, rung_slack=2.0)
    t = table((0, 50, 1000, 0.95), (0, 100, 1000, 0.95))
    # 0.15 below, with 12.5 % error left to recover: within the allowance 2/3 of the way
    # from the end, beyond it 1/3 of the way.
    assert slack.decide(t, key=1, step=50, size_bytes=2000, accuracy=0.80) is None
    decision = slack.decide(t, key=1, step=100, size_bytes=2000, accuracy=0.80)
    assert decision is not None
    assert decision.margin == pytest.approx(margin(0.80, 0.95, N) + 2.0 * (1 / 3) * (1 - 0.875))


def test_the_allowance_is_a_share_of_the_error_left() -> None:
    # The same 0.03 gap two thirds of the way from the end: noise for a trial near 50 %,
    # decisive for one near 98 % (n_val large, so the binomial term is small).
    rule = StopRule(n_val=100_000, final_step=150, rung_slack=0.5)
    assert rule.decide(table((0, 50, 10, 0.53)), key=1, step=50, size_bytes=20, accuracy=0.50) is None
    assert rule.decide(table((0, 50, 10, 0.995)), key=1, step=50, size_bytes=20, accuracy=0.965) is not None


def test_a_dip_after_a_good_rung_is_judged_on_the_best_so_far() -> None:
    t = table((0, 25, 1000, 0.97), (0, 50, 1000, 0.97))
    assert t.add(1, step=25, size_bytes=2000, accuracy=0.978) == 0.978
    best = t.add(1, step=50, size_bytes=2000, accuracy=0.90)  # a dip
    assert best == 0.978 and t.at(50)[1] == (2000.0, 0.978)
    assert RULE.decide(t, key=1, step=50, size_bytes=2000, accuracy=best) is None


def test_the_rule_of_a_config_maps_grace_to_a_step() -> None:
    from compresstune.search.config import StudyConfig

    cfg = StudyConfig.from_dict({"model": {"factory": "m:f"}, "data": {"factory": "m:d"},
                                 "finetune": {"steps": 150, "eval_every": 50},
                                 "early_stopping": {"enabled": True, "grace": 0.5, "rung_slack": 0.2}})
    assert StudyConfig.from_dict({"model": {"factory": "m:f"}, "data": {"factory": "m:d"}}).early_stopping.grace == 0.25
    rule = StopRule.from_config(cfg, n_val=360)
    assert (rule.min_step, rule.final_step, rule.rung_slack, rule.n_val) == (75, 150, 0.2, 360)


def test_the_decision_names_the_most_accurate_dominator() -> None:
    t = table((0, 50, 1000, 0.95), (2, 50, 1500, 0.99), (3, 50, 500, 0.99), (4, 50, 5000, 1.0))
    decision = RULE.decide(t, key=1, step=50, size_bytes=2000, accuracy=0.5)
    assert decision.by == 3 and decision.by_accuracy == 0.99 and decision.by_size == 500
    assert decision.as_attr()["by"] == 3


def test_a_plain_mapping_works_as_a_table() -> None:
    assert RULE.decide({50: {0: (1000, 0.99)}}, key=1, step=50, size_bytes=2000, accuracy=0.5) is not None


@pytest.mark.parametrize("bad", [{"n_val": 0}, {"final_step": 0}, {"margin_se": -1.0}, {"min_margin": math.nan},
                                 {"rung_slack": -0.1}])
def test_rule_arguments_are_validated_by_name(bad) -> None:
    name = next(iter(bad))
    with pytest.raises(ValueError, match=f"`{name}`"):
        StopRule(**{"n_val": 10, "final_step": 10, **bad})


def test_table_is_rebuilt_from_recorded_trials() -> None:
    dist = {"x": FloatDistribution(0, 1)}
    done = create_trial(state=TrialState.COMPLETE, values=[0.9, 100.0], params={"x": 0.1}, distributions=dist,
                        user_attrs={"size_bytes": 100, "curve": [[50, 0.8], [100, 0.9]]})
    stopped = create_trial(state=TrialState.COMPLETE, values=[0.5, 300.0], params={"x": 0.2}, distributions=dist,
                           user_attrs={"size_bytes": 300, "curve": [], "rungs": [[50, 0.5]], "stopped_at_rung": 50})
    failed = create_trial(state=TrialState.FAIL, user_attrs={"size_bytes": 10, "rungs": [[50, 1.0]]})
    broken = create_trial(state=TrialState.COMPLETE, values=[0.1, 5.0], params={"x": 0.3}, distributions=dist,
                          user_attrs={"size_bytes": "?", "rungs": [[50, 1.0]]})
    for number, t in enumerate([done, stopped, failed, broken]):
        t.number = number
    t = RungTable.from_trials([done, stopped, failed, broken])
    assert t.at(50) == {0: (100.0, 0.8), 1: (300.0, 0.5)}
    assert t.at(100) == {0: (100.0, 0.9)} and len(t) == 3 and t.steps == [50, 100]
    dipped = create_trial(state=TrialState.COMPLETE, values=[0.8, 100.0], params={"x": 0.4}, distributions=dist,
                          user_attrs={"size_bytes": 100, "curve": [[100, 0.8], [50, 0.95]]})  # any order
    assert RungTable.from_trials([dipped]).at(100) == {dipped.number: (100.0, 0.95)}


# -- the Ray Tune scheduler ----------------------------------------------------------------------------

def test_ray_scheduler_stops_with_the_same_rule() -> None:
    from ray.tune.schedulers import TrialScheduler

    from compresstune.search._ray.scheduler import ParetoStopScheduler

    sched = ParetoStopScheduler(rule=RULE, table=table((7, 50, 100, 0.99)))
    a, b, c = (SimpleNamespace(trial_id=i) for i in ("a", "b", "c"))
    report = lambda step, acc, size: {"rung_step": step, "val_accuracy": acc, "size_bytes": size}  # noqa: E731
    assert sched.on_trial_result(None, a, report(50, 0.985, 80)) == TrialScheduler.CONTINUE  # smallest
    assert sched.on_trial_result(None, b, report(50, 0.70, 500)) == TrialScheduler.STOP  # dominated by a and 7
    assert sched.decisions["b"].by == 7
    assert sched.on_trial_result(None, c, {"val_accuracy": 0.1}) == TrialScheduler.CONTINUE  # not a rung report
    assert sched.on_trial_result(None, c, report(150, 0.1, 900)) == TrialScheduler.CONTINUE  # last step
    assert sched.table.at(50)["b"] == (500.0, 0.70)
    assert "1 trials stopped" in sched.debug_string()
    assert not sched.supports_buffered_results
    with pytest.raises(ValueError, match="`rule`"):
        ParetoStopScheduler(rule="nope")


# -- run_checked: budgets before training and rung reports on a tiny model ----------------------------------

def _tiny_context(steps: int = 12, extra: str | None = None) -> TrialContext:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(96, 8, generator=gen)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)).eval()
    split = Split(x, y)
    settings = TrialSettings(
        steps=steps, lr=1e-2, weight_decay=0.0, optimizer="adam", eval_every=4,
        seed=0, max_drop=0.5, max_size_bytes=None, min_ratio=None, extra_objective=extra,
        activation_bits=32, latency_batch_size=1, latency_repeats=1, latency_warmup=0, baseline_value=0.9,
        reference_bytes=4 * (8 * 16 + 16 + 16 * 2 + 2))
    task = Classification(split, split, split, batch_size=16, eval_batch_size=64)
    return TrialContext(model=model, task=task, settings=settings, cached_teacher=teacher_outputs(model, task),
                        example=x[:1])


PLAN = CompressionPlan({"0": LayerPlan(sparsity=0.5, bits=8)}, temperature=2.0, alpha=0.5)


def test_over_the_bops_budget_is_rejected_before_training() -> None:
    ctx = _tiny_context()
    out = run_checked(PLAN, ctx, budgets=Budgets(max_bops=10.0))
    assert out.state == "complete" and out.user_attrs["rejected"] == "budget"
    assert out.user_attrs["over_budget"] == ["max_bops"] and out.user_attrs["curve"] == []
    assert out.constraints["max_bops"] == pytest.approx(out.user_attrs["bops"] - 10.0) and out.constraints["max_bops"] > 0
    assert out.artifact is None


def test_within_the_bops_budget_trains_and_carries_the_same_constraint() -> None:
    ctx = _tiny_context()
    seen = []
    out = run_checked(PLAN, ctx, budgets=Budgets(max_bops=1e12), on_rung=lambda *a: seen.append(a))
    assert out.state == "complete" and "rejected" not in out.user_attrs
    assert out.constraints["max_bops"] < 0 and out.artifact is not None
    assert [s for s, _, _ in seen] == [4, 8, 12] and {size for _, _, size in seen} == {out.user_attrs["size_bytes"]}
    assert [list(p) for p in out.user_attrs["curve"]] == [[s, a] for s, a, _ in seen]


def test_the_plan_is_applied_once_with_budgets_and_rungs(monkeypatch) -> None:
    import compresstune.compress as compress_mod
    from compresstune.search import _trial as trial_mod

    calls = []
    real = compress_mod.apply

    def counting(model, plan):
        calls.append(plan)
        return real(model, plan)

    monkeypatch.setattr(compress_mod, "apply", counting)
    monkeypatch.setattr(trial_mod, "apply", counting)
    out = run_checked(PLAN, _tiny_context(), budgets=Budgets(max_bops=1e12), on_rung=lambda *a: None)
    assert len(calls) == 1 and out.artifact is not None and len(out.artifact) == out.user_attrs["size_bytes"]
    assert out.user_attrs["timings"]["apply_s"] > 0


def test_a_latency_budget_is_checked_before_training_too() -> None:
    ctx = _tiny_context()
    over = run_checked(PLAN, ctx, budgets=Budgets(max_latency_ms=1e-9))  # no forward pass is that fast
    assert over.user_attrs["rejected"] == "budget" and over.user_attrs["over_budget"] == ["max_latency_ms"]
    assert over.user_attrs["curve"] == [] and over.artifact is None
    measured = over.user_attrs["latency_before_training_ms"]
    assert measured > 0 and over.constraints["max_latency_ms"] == pytest.approx(measured - 1e-9)
    within = run_checked(PLAN, ctx, budgets=Budgets(max_latency_ms=1e6))
    assert "rejected" not in within.user_attrs and within.constraints["max_latency_ms"] < 0
    assert within.artifact is not None and len(within.user_attrs["curve"]) == 3


def test_latency_budgets_are_study_constraints(tmp_path: Path) -> None:
    from compresstune.search.config import StudyConfig
    from compresstune.errors import ConfigError

    base = {"model": {"factory": "m:f"}, "data": {"factory": "m:d"}}
    with pytest.raises(ConfigError, match="constraints.max_latency_ms"):
        StudyConfig.from_dict({**base, "constraints": {"max_latency_ms": 0}})
    cfg = StudyConfig.from_dict({**base, "constraints": {"max_latency_ms": 2.5}})
    assert Budgets.from_config(cfg) == Budgets(max_latency_ms=2.5) and Budgets.from_config(cfg).any
    # An unset budget leaves the fingerprint of existing studies as it was.
    assert "max_latency_ms" not in StudyConfig.from_dict(base).fingerprint_data()["constraints"]


def test_a_rung_callback_stop_gives_a_stopped_trial_with_its_curve() -> None:
    ctx = _tiny_context()

    def stop_at_8(step, acc, size):
        if step == 8:
            raise StopTrial(step, acc)

    out = run_checked(PLAN, ctx, on_rung=stop_at_8)
    assert out.state == "complete" and out.user_attrs["stopped_at_rung"] == 8
    assert out.constraints["stopped"] == 1.0 and out.values[0] == out.user_attrs["curve"][-1][1]
    assert [s for s, _ in out.user_attrs["curve"]] == [4, 8] and out.artifact is None


def test_stopped_outcome_for_the_ray_driver() -> None:
    s = _tiny_context().settings
    out = stopped_outcome(s, plan_json=PLAN.to_json(), size_bytes=200, step=50, accuracy=0.7,
                          curve=[[50, 0.7]], budgets=Budgets(max_bops=5.0), bops=4.0)
    assert out.state == "complete" and out.values == [0.7, 200.0]
    assert out.constraints["stopped"] == 1.0 and out.constraints["max_bops"] == -1.0
    assert out.user_attrs["stopped_at_rung"] == 50 and out.user_attrs["ratio"] == s.reference_bytes / 200
    three = _tiny_context(extra="bops").settings
    with pytest.raises(ValueError, match="`extra_value`"):
        stopped_outcome(three, plan_json="{}", size_bytes=10, step=5, accuracy=0.5)
    assert stopped_outcome(three, plan_json="{}", size_bytes=10, step=5, accuracy=0.5, extra_value=3.0).values[2] == 3.0
    assert stopped_outcome(s, plan_json="{}", size_bytes=10, step=5, accuracy=math.nan).state == "fail"


# -- a real run on digits --------------------------------------------------------------------------------

def _study_file(folder: Path, shared_cache: Path, *, trials: int, workers: int = 0) -> Path:
    out = folder / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "cache").symlink_to(shared_cache, target_is_directory=True)
    path = folder / "es.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: es
        model: {{factory: "studies.digits:baseline"}}
        data: {{factory: "studies.digits:data"}}
        space:
          sparsity: {{low: 0.0, high: 0.9}}
          bits: [4, 8, 32]
          rank_fraction: [0.5, 1.0]
        finetune: {{steps: 15, batch_size: 32, eval_every: 5}}
        constraints: {{max_accuracy_drop: 0.05}}
        search: {{trials: {trials}, seed: 1, out: "{out}", workers: {workers}}}
        sensitivity: {{seed_ratios: [8, 16], refine_seeds: 0}}
        early_stopping: {{enabled: true, margin_se: 2.0}}
        """))
    return path


@pytest.fixture(scope="session")
def digits_cache(tmp_path_factory) -> Path:
    """One baseline cache for every digits run of these tests."""
    path = tmp_path_factory.getbasetemp() / "ct-digits-cache"
    path.mkdir(exist_ok=True)
    return path


def test_a_real_run_stops_a_dominated_trial_and_keeps_it_off_the_front(tmp_path: Path, digits_cache: Path) -> None:
    from compresstune.search.config import load_config
    from compresstune.search._controller import prepare
    from compresstune.search._local import run_local
    from compresstune.search.pareto import front

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = load_config(_study_file(tmp_path, digits_cache, trials=4))
    session = prepare(cfg, Path(cfg.search.out), log=lambda m: None)
    # After the two seeds: a large plan that loses a lot of accuracy (conv1 pruned hard),
    # which the small, accurate seeds dominate at the first rung.
    bad = session.space.uniform_params(0.0, 32, None)
    bad["conv1:sparsity"] = 0.9
    session.study.enqueue_trial(bad)
    run_local(session, progress=False)
    study = session.study
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 4 and sum(bool(t.user_attrs.get("seed_trial")) for t in trials) == 2
    stopped = [t for t in trials if t.user_attrs.get("stopped_at_rung") is not None]
    assert stopped and 2 in {t.number for t in stopped}
    for t in stopped:
        rung = t.user_attrs["stopped_at_rung"]
        assert rung < 15 and t.constraints["stopped"] == 1.0
        assert t.values[0] == t.user_attrs["val_accuracy"] == t.user_attrs["curve"][-1][1]
        assert t.user_attrs["curve"][-1][0] == rung and "rungs" not in t.user_attrs  # schema 2: rungs in `curve`
        assert t.user_attrs["test_accuracy"] is None  # no test pass spent on a stopped trial
        by = t.user_attrs["stopped_by"]
        assert by["by_size_bytes"] <= t.user_attrs["size_bytes"] and by["by_accuracy"] > t.values[0]
    best = {t.number for t in study.best_trials}
    assert best and not best & {t.number for t in stopped}
    assert not set(front(study)["number"]) & {t.number for t in stopped}
    # Completed trials carry their rungs too (the table of a resumed run is rebuilt from them).
    full = [t for t in trials if t.user_attrs.get("stopped_at_rung") is None]
    assert all(t.user_attrs["curve"][-1][0] == 15 for t in full)
    assert len(RungTable.from_trials(trials).at(5)) == 4
    assert TrialHooks.for_session(session).table.at(5).keys() == {t.number for t in trials}
    from compresstune.search import status_text

    assert f"({len(stopped)} stopped early, 2 seed trials)" in status_text(study, Path(cfg.search.out))


@pytest.mark.ray
def test_on_ray_the_scheduler_stops_the_same_dominated_trial(tmp_path: Path, digits_cache: Path) -> None:
    """The run above on one Ray worker: the same trial is stopped, by the Tune scheduler."""
    pytest.importorskip("ray.tune")
    from compresstune.search.config import load_config
    from compresstune.search._controller import prepare
    from compresstune.search._ray import run_ray
    from compresstune.search.pareto import front

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = load_config(_study_file(tmp_path, digits_cache, trials=4, workers=1))
    session = prepare(cfg, Path(cfg.search.out), log=lambda m: None)
    bad = session.space.uniform_params(0.0, 32, None)
    bad["conv1:sparsity"] = 0.9
    session.study.enqueue_trial(bad)
    run_ray(session, progress=False)
    trials = session.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    stopped = [t for t in trials if t.user_attrs.get("stopped_at_rung") is not None]
    assert 2 in {t.number for t in stopped}
    for t in stopped:
        rung = t.user_attrs["stopped_at_rung"]
        assert rung < 15 and t.constraints["stopped"] == 1.0 and t.values[0] == t.user_attrs["curve"][-1][1]
        assert t.user_attrs["stopped_by"]["by_accuracy"] > t.values[0] and "worker" in t.user_attrs
    assert not set(front(session.study)["number"]) & {t.number for t in stopped}
