"""Refining around the front (``sensitivity.refine_front``, search/_refine.py): which front trial
is continued next, and a real digits search in which refinements continue feasible front trials
along the seed path, keep their distillation settings, are recorded and are not repeated on resume."""

from __future__ import annotations

import textwrap
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from compresstune.errors import ConfigError
from compresstune.search import load_study, run, status_text
from compresstune.search._refine import _front_2d, _next_source
from compresstune.search.config import StudyConfig, load_config


def _t(number: int, ratio: float, acc: float):
    return SimpleNamespace(number=number, values=[acc, 1000.0 / ratio], user_attrs={"ratio": ratio})


def test_the_front_is_continued_from_its_largest_ratio_down_and_narrow_gaps_are_skipped():
    front = _front_2d([_t(1, 10, 0.99), _t(2, 20, 0.98), _t(3, 22, 0.97), _t(4, 15, 0.95)], maximize=True)
    assert [t.number for t in front] == [3, 2, 1]  # 4 is beaten by 2 on both
    assert _next_source(front, [], 1.25, set()) == (front[0], 1.25)
    # 3 was continued once and broke a constraint: the second time by half the step (in log ratio).
    source, step = _next_source(front, [{"of": 3}], 1.25, set())
    assert source.number == 3 and step == pytest.approx(1.25 ** 0.5)
    # 3 tried twice: 2 (20x) would aim at 25x, but 3 already stands at 22x: 1 (10x -> 12.5x) is next.
    assert _next_source(front, [{"of": 3}, {"of": 3}], 1.25, set())[0].number == 1
    # 1's continuation met the constraints: nothing is left to continue.
    assert _next_source(front, [{"of": 3}, {"of": 3}, {"of": 1}], 1.25, {1}) is None
    assert _next_source(front, [{"of": 3}] * 2 + [{"of": 1}] * 2, 1.25, set()) is None


def test_front_refinement_settings_are_validated_naming_the_field():
    with pytest.raises(ConfigError, match=r"sensitivity\.refine_front"):
        StudyConfig.from_dict({"sensitivity": {"refine_front": -1}})
    with pytest.raises(ConfigError, match=r"sensitivity\.refine_step"):
        StudyConfig.from_dict({"sensitivity": {"refine_step": 1.0}})
    assert StudyConfig.from_dict({}).sensitivity.refine_front == 0  # off by default


def _study(folder: Path, trials: int) -> Path:
    path = folder / "refined.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: refined
        model: {{factory: "studies.digits:baseline"}}
        data: {{factory: "studies.digits:data"}}
        space:
          sparsity: {{low: 0.0, high: 0.95}}
          bits: [2, 4, 8, 32]
          rank_fraction: [0.5, 1.0]
        finetune: {{steps: 20, batch_size: 64, eval_every: 20}}
        constraints: {{max_accuracy_drop: 0.05}}
        search: {{trials: {trials}, seed: 0, out: "{folder / 'out'}"}}
        sensitivity: {{seed_ratios: [8, 32], refine_seeds: 1, refine_front: 2, examples: 200}}
        """))
    return path


def test_refinements_continue_feasible_front_trials_along_the_seed_path(tmp_path: Path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    log: list[str] = []
    study, _ = run(load_config(_study(tmp_path, 10)), progress=False, log=log.append)
    trials = study.get_trials()
    refined = [t for t in trials if t.user_attrs.get("refined_from") is not None]
    records = study.user_attrs["front_refinements"]
    assert refined and len([r for r in records if r["ratio"] is not None]) == len(refined)
    last_seed = max(t.number for t in trials if t.user_attrs.get("seed_trial"))
    for t in refined:
        source = trials[t.user_attrs["refined_from"]]
        assert t.number > last_seed and source.number < t.number
        assert all(v <= 0 for v in source.constraints.values())  # a feasible trial was continued
        assert t.user_attrs["ratio"] >= t.user_attrs["refine_target_ratio"] * 0.99  # just at its target
        assert t.user_attrs["refine_target_ratio"] > source.user_attrs["ratio"]
        assert {k: v for k, v in t.params.items() if k.startswith("distill:")} == \
            {k: v for k, v in source.params.items() if k.startswith("distill:")}
    assert len({tuple(sorted(t.params.items())) for t in trials}) == len(trials)
    assert any(line.startswith("refining the front: trial") for line in log)
    assert "refinements of the front" in status_text(study, tmp_path / "out")

    # Resume with more trials: what was planned is not planned again.
    run(load_config(_study(tmp_path, 14)), progress=False, log=lambda m: None)
    again = load_study(tmp_path / "out").user_attrs["front_refinements"]
    assert again[:len(records)] == records
    sources = [r["of"] for r in again]
    assert all(sources.count(n) <= 2 for n in sources)
    html = (tmp_path / "out" / "report.html").read_text()
    assert "refined_from" in (tmp_path / "out" / "trials.csv").read_text().splitlines()[0]
    front_refined = [t for t in load_study(tmp_path / "out").best_trials if t.user_attrs.get("refined_from") is not None]
    assert all(f"refined from #{t.user_attrs['refined_from']}" in html for t in front_refined)
