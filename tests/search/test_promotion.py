"""Promotion to a longer fine-tune (search/_promotion.py): which trials a round picks, how the
front and the hypervolume count a promoted trial, and real searches on digits that promote,
resume and report."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from compresstune.errors import ConfigError
from compresstune.search import load_study, run, status_text
from compresstune.search._promotion import PROMOTED_FROM, PROMOTION_STEPS, candidates, superseded
from compresstune.search.config import StudyConfig, load_config
from compresstune.search.pareto import front, hypervolume_series
from compresstune.search.report import trials_frame

DIRECTIONS = ["maximize", "minimize"]


def trial(number: int, acc: float, size: float, *, over: float = 0.0, state=TrialState.COMPLETE, **attrs):
    """A recorded trial: ``over`` is its accuracy_drop constraint (positive: broken by that much)."""
    t = create_trial(state=state, values=[acc, size] if state == TrialState.COMPLETE else None,
                     params={"x": float(number)}, distributions={"x": FloatDistribution(0, 1000)},
                     user_attrs={"val_accuracy": acc, "size_bytes": size, "ratio": 1000 / size, **attrs},
                     constraints={"accuracy_drop": over, "stopped": 0.0})
    t.number = number
    return t


def pick(trials, **kw):
    kw = {"ranks": 1, "metric_key": "accuracy_drop", "margin": 0.005, "max_trials": 5, **kw}
    return [t.number for t in candidates(trials, DIRECTIONS, **kw)]


TRIALS = [
    trial(0, 0.97, 100),                      # front
    trial(1, 0.96, 50),                       # front
    trial(2, 0.95, 80),                       # dominated by 1: second layer
    trial(3, 0.94, 30, over=0.004),           # near miss, smaller than every feasible trial
    trial(4, 0.94, 200, over=0.004),          # near miss, but trial 0 dominates it
    trial(5, 0.90, 20, over=0.02),            # missed by more than the margin
    trial(6, 0.99, 10, stopped_at_rung=50),   # stopped early: its rung accuracy is not a result
    trial(7, 0.99, 10, rejected="budget"),    # over a budget: never fine-tuned
]


def test_a_round_takes_the_front_and_the_near_misses_the_smallest_first():
    assert pick(TRIALS) == [3, 1, 0]
    assert pick(TRIALS, ranks=2) == [3, 1, 2, 0]
    assert pick(TRIALS, max_trials=2) == [3, 1]
    assert pick(TRIALS, margin=0.0) == [1, 0]
    assert pick(TRIALS, metric_key=None) == [1, 0]  # no metric constraint: no near misses


def test_a_promoted_trial_stands_in_for_its_short_one_and_nothing_is_promoted_twice():
    promoted = trial(8, 0.975, 100, **{PROMOTED_FROM: 0, PROMOTION_STEPS: 800})
    assert superseded([*TRIALS, promoted]) == {0: 8}
    assert pick([*TRIALS, promoted]) == [3, 1]  # 0 is promoted; its promotion is not a candidate
    queued = create_trial(state=TrialState.WAITING, user_attrs={PROMOTED_FROM: 1, PROMOTION_STEPS: 800})
    queued.number = 9
    assert superseded([*TRIALS, queued]) == {}  # only a COMPLETE promotion replaces its trial
    assert pick([*TRIALS, queued]) == [3, 0]


def test_an_older_study_s_list_constraints_are_read_by_their_names():
    old = create_trial(state=TrialState.COMPLETE, values=[0.94, 30.0], params={"x": 0.0},
                       distributions={"x": FloatDistribution(0, 1000)}, system_attrs={"constraints": [0.004, 0.0]})
    old.number = 0
    assert pick([old], names=["accuracy_drop", "stopped"]) == [0]


def _study(trials) -> optuna.Study:
    study = optuna.create_study(directions=DIRECTIONS)
    study.set_user_attr("reference_point", {"val_accuracy": 0.9, "log2_ratio": 0.0})
    study.set_user_attr("baseline", {"val_accuracy": 0.98, "reference_bytes": 1000})
    for t in trials:
        study.add_trial(t)
    return study


def test_the_front_and_the_hypervolume_count_the_promotion_not_the_short_trial():
    short, other = trial(0, 0.96, 50), trial(1, 0.97, 100)
    longer = trial(2, 0.955, 50, **{PROMOTED_FROM: 0, PROMOTION_STEPS: 800})  # a promotion can come out worse
    study = _study([short, other, longer])
    assert front(study)["number"].tolist() == [2, 1]
    df = trials_frame(study)
    assert df.set_index("number").loc[0, "category"] == "replaced"
    assert df.set_index("number").loc[0, "promoted_to"] == 2 and df.set_index("number").loc[2, "promoted_from"] == 0
    series = hypervolume_series(df, {"val_accuracy": 0.9, "log2_ratio": 0.0})["hypervolume"].tolist()
    assert series[0] == pytest.approx(_hv([(0.96, 20)]))
    assert series[1] == pytest.approx(_hv([(0.96, 20), (0.97, 10)]))
    assert series[2] == pytest.approx(_hv([(0.955, 20), (0.97, 10)]))  # the short point left with its promotion
    again = pd.read_csv(_csv(df))  # trials.csv read back gives the same series
    assert hypervolume_series(again, {"val_accuracy": 0.9, "log2_ratio": 0.0})["hypervolume"].tolist() == series


def _hv(points) -> float:
    """Hypervolume above (0.9, log2 ratio 0) of points (accuracy, ratio), as a staircase."""
    pts = sorted(((a, math.log2(r)) for a, r in points), key=lambda p: -p[1])
    area, best = 0.0, 0.9
    for a, lr in pts:
        if a > best:
            area += (a - best) * lr
            best = a
    return area


def _csv(df: pd.DataFrame):
    import io

    return io.StringIO(df.to_csv(index=False))


def test_the_promotion_section_is_validated_with_the_field_and_the_value():
    with pytest.raises(ConfigError, match=r"promotion\.steps"):
        StudyConfig.from_dict({"promotion": {"enabled": True, "steps": 0}})
    with pytest.raises(ConfigError, match=r"promotion\.evry"):
        StudyConfig.from_dict({"promotion": {"evry": 10}})
    assert StudyConfig.from_dict({"promotion": {"enabled": True}}).fingerprint() == StudyConfig().fingerprint()


# -- real searches -----------------------------------------------------------------------------------

def write_study(folder: Path, *, trials: int, promotion: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "promo.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: promo
        model: {{factory: "studies.digits:baseline"}}
        data: {{factory: "studies.digits:data"}}
        space:
          sparsity: {{low: 0.0, high: 0.9}}
          bits: [4, 8, 32]
          rank_fraction: [0.5, 1.0]
        finetune: {{steps: 10, batch_size: 32, eval_every: 5}}
        constraints: {{max_accuracy_drop: 0.05}}
        promotion: {promotion}
        search: {{trials: {trials}, seed: 1, out: "{folder / 'out'}"}}
        """))
    return path


@pytest.fixture(scope="module")
def promoted(tmp_path_factory) -> tuple[Path, list[str]]:
    folder = tmp_path_factory.mktemp("promoted")
    study_file = write_study(folder, trials=4, promotion="{enabled: true, steps: 30, every: 2, max_trials: 2}")
    lines: list[str] = []
    run(load_config(study_file), progress=False, study_file=str(study_file), log=lines.append)
    return study_file, lines


def test_a_search_promotes_its_front_to_the_longer_fine_tune(promoted):
    study_file, lines = promoted
    study = load_study(study_file.parent / "out")
    trials = {t.number: t for t in study.get_trials()}
    promotions = [t for t in trials.values() if t.user_attrs.get(PROMOTED_FROM) is not None]
    short = [t for t in trials.values() if t.user_attrs.get(PROMOTED_FROM) is None]
    assert len(short) == 4 and all(t.state == TrialState.COMPLETE for t in trials.values())
    assert [r["after"] for r in study.user_attrs["promotion_rounds"]] == [2, 4]
    assert promotions, "the front of a 4-trial digits search has trials to promote"
    for t in promotions:
        source = trials[t.user_attrs[PROMOTED_FROM]]
        assert t.params == source.params  # the same plan and distillation settings
        assert t.user_attrs["plan"] == source.user_attrs["plan"]
        assert t.user_attrs[PROMOTION_STEPS] == 30 and t.user_attrs["curve"][-1][0] == 30
        assert source.user_attrs["curve"][-1][0] == 10
    on_front = set(front(study)["number"])
    assert not on_front & set(superseded(trials.values()))
    assert any(line.startswith("promotion after 2 trials: #") for line in lines)


def test_status_counts_promotions_apart_and_a_rerun_promotes_nothing_again(promoted):
    study_file, _ = promoted
    out = study_file.parent / "out"
    text = status_text(load_study(out), out)
    assert "trials: 4 complete of 4" in text and "promoted to a longer fine-tune (30 steps" in text
    before = len(load_study(out).get_trials())
    run(load_config(study_file), progress=False, study_file=str(study_file), log=lambda m: None)
    assert len(load_study(out).get_trials()) == before


def test_exporting_a_replaced_trial_points_to_its_promotion(promoted, tmp_path):
    from compresstune.search import export_trial

    study_file, _ = promoted
    out = study_file.parent / "out"
    source, longer = next(iter(superseded(load_study(out).get_trials()).items()))
    text = export_trial(out, source, tmp_path / "short.ctz", force=True)
    assert f"note: trial {longer} is this plan after the longer fine-tune" in text
    assert "note:" not in export_trial(out, longer, tmp_path / "long.ctz", force=True)


def test_a_redirected_run_says_which_trial_a_promotion_promotes(tmp_path, capfd):
    study_file = write_study(tmp_path, trials=2, promotion="{enabled: true, steps: 20, max_trials: 1}")
    run(load_config(study_file), progress=True, study_file=str(study_file), log=lambda m: None)
    err = capfd.readouterr().err
    assert "COMPLETE (promotes #" in err and ", 20 steps): val accuracy" in err


def test_an_interrupted_promotion_is_queued_again_as_a_promotion():
    from compresstune.search._records import Records, tally
    from compresstune.search._storage import requeue

    study = optuna.create_study(directions=DIRECTIONS)
    study.enqueue_trial({"x": 3.0}, user_attrs={PROMOTED_FROM: 0, PROMOTION_STEPS: 800})
    assert tally(study.get_trials()).queued_promotions == 1
    running = study.ask({"x": FloatDistribution(0, 1000)})
    frozen = Records(study).frozen(running)
    Records(study).fail(frozen, "interrupted: the driver stopped while it ran", "interrupted")
    requeue(study, frozen)
    again = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert len(again) == 1 and again[0].user_attrs[PROMOTED_FROM] == 0
    assert again[0].user_attrs[PROMOTION_STEPS] == 800 and again[0].user_attrs["requeued_from"] == running.number
    assert tally(study.get_trials()).queued_promotions == 1
