"""The record schema and the one wrapper around Optuna internals, against the
installed Optuna and real storages (SQLite, a journal file, in-memory)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from compresstune.search.config import StudyConfig
from compresstune.search import _records
from compresstune.search._records import FrontCache, Records, fail_kind, keys_table, tally
from compresstune.search._storage import SearchError, open_storage

ROOT = Path(__file__).resolve().parents[2]


def _storages(tmp_path: Path):
    return {"sqlite": open_storage(f"sqlite:///{tmp_path / 'study.db'}"),
            "journal": open_storage(f"journal:{tmp_path / 'study.journal'}"),
            "memory": optuna.storages.InMemoryStorage()}


@pytest.mark.parametrize("kind", ["sqlite", "journal", "memory"])
def test_write_sets_user_attrs_and_constraints_as_optuna_does(tmp_path, kind):
    study = optuna.create_study(storage=_storages(tmp_path)[kind], directions=["maximize", "minimize"])
    records = Records(study)
    trial = study.ask()
    records.write(trial, {"plan": "{}", "curve": [[5, 0.9]], "worker": {"pid": 1}}, {"stopped": 0.0, "max": 2})
    study.tell(trial, [0.9, 100.0])
    frozen = study.get_trials()[0]
    assert frozen.user_attrs == {"plan": "{}", "curve": [[5, 0.9]], "worker": {"pid": 1}}
    assert frozen.constraints == {"stopped": 0.0, "max": 2.0}  # what Optuna's samplers and best_trials read
    assert study.best_trials == []  # infeasible: max > 0
    assert records.frozen(trial).state == TrialState.COMPLETE
    with pytest.raises(ValueError, match="NaN"):
        records.write(study.ask(), {}, {"stopped": float("nan")})


@pytest.mark.parametrize("kind", ["sqlite", "journal", "memory"])
def test_batched_params_are_stored_and_seen_by_the_trial(tmp_path, kind):
    study = optuna.create_study(storage=_storages(tmp_path)[kind], directions=["maximize", "minimize"],
                                sampler=optuna.samplers.TPESampler(seed=0, multivariate=True, constant_liar=True))
    records = Records(study)
    for _ in range(3):
        trial = study.ask()
        with records.batched_params(trial):
            a = trial.suggest_float("a", 0.0, 1.0)
            assert trial.suggest_float("a", 0.0, 1.0) == a and trial.params["a"] == a
            b = trial.suggest_categorical("b", [2, 4, 8])
        stored = records.frozen(trial)
        assert stored.params == {"a": a, "b": b}
        assert stored.distributions == {"a": FloatDistribution(0.0, 1.0), "b": CategoricalDistribution([2, 4, 8])}
        study.tell(trial, [a, float(b)])
    trial = study.ask()
    with pytest.raises(ValueError):  # an incompatible distribution is refused, as one call at a time would
        with records.batched_params(trial):
            trial.suggest_float("b", 0.0, 1.0)


def test_the_storage_url_of_each_kind(tmp_path):
    storages = _storages(tmp_path)
    assert Records(optuna.create_study(storage=storages["sqlite"])).url() == f"sqlite:///{tmp_path / 'study.db'}"
    assert Records(optuna.create_study(storage=storages["journal"])).url() == f"journal:{tmp_path / 'study.journal'}"
    assert Records(optuna.create_study()).url() is None


def test_fail_kind_reads_schema_1_prefixes_and_tally_counts_like_the_loop():
    assert fail_kind({"fail_reason": "interrupted: the driver stopped while it ran"}) == "interrupted"
    assert fail_kind({"fail_reason": "RuntimeError: boom"}) == "error"
    assert fail_kind({"fail_reason": "interrupted by nothing", "fail_kind": "error"}) == "error"
    assert fail_kind({}) is None
    study = optuna.create_study(directions=["maximize", "minimize"])
    for reason, kind in (("interrupted: old", None), ("ValueError: x", "error"), ("stopped by the user", "interrupted")):
        t = study.ask()
        t.set_user_attr("fail_reason", reason)
        if kind:
            t.set_user_attr("fail_kind", kind)
        study.tell(t, state=TrialState.FAIL)
    study.tell(study.ask(), [0.5, 10.0])
    study.ask()
    assert tally(study.get_trials()) == _records.Tally(complete=1, failed=1, running=1, interrupted=2)


def test_front_cache_matches_optunas_best_trials():
    study = optuna.create_study(directions=["maximize", "minimize"])
    points = [(0.9, 100.0, 0.0), (0.8, 50.0, 0.0), (0.95, 200.0, 0.0), (0.7, 60.0, 0.0), (0.99, 10.0, 1.0),
              (0.8, 50.0, 0.0), (0.85, 40.0, -1.0)]
    front = FrontCache(study.directions)
    for acc, size, violation in points:
        t = study.ask()
        t.set_constraint("c", violation)
        study.tell(t, [acc, size])
        front.add_values(t.number, [acc, size], {"c": violation})
        assert len(front) == len(study.best_trials)
    again = FrontCache(study.directions)
    again.add_trials(study.get_trials())
    assert len(again) == len(study.best_trials)


def test_every_key_has_a_row_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for key in (*_records.STUDY_KEYS, *_records.TRIAL_KEYS):
        assert f"`{key}`" in readme, key
    assert keys_table().count("\n") == 1 + len(_records.STUDY_KEYS) + len(_records.TRIAL_KEYS)


def test_a_bad_storage_url_fails_before_the_baseline_is_trained(tmp_path, monkeypatch):
    from compresstune.search import _controller

    trained = []
    monkeypatch.setattr(_controller, "load_model_and_task", lambda *a, **k: trained.append(1))
    for url, words in (("postgresql+nosuchdriver://u:p@localhost/db", "cannot open storage"),
                       (f"sqlite:///{tmp_path / 'no' / 'such' / 'folder' / 'study.db'}", "cannot open storage"),
                       (f"journal:{tmp_path / 'missing' / 'study.journal'}", "no folder")):
        config = StudyConfig.from_dict({"model": {"factory": "studies.digits:baseline"},
                                        "data": {"factory": "studies.digits:data"},
                                        "search": {"storage": url, "out": str(tmp_path / "out")}})
        with pytest.raises(SearchError, match=words):
            _controller.run(config, progress=False, log=lambda m: None)
    assert trained == []
