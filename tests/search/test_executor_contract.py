"""Every executor passes the executor contract (compresstune/search/testing.py):
the same queued plans give, per kind of outcome, the same records."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from compresstune.search import testing

EXECUTORS = [pytest.param(name, marks=[pytest.mark.ray] if spec["workers"] else [])
             for name, spec in testing.EXECUTORS.items()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The in-process executor's records: what every executor must match."""
    supplier = testing.ExecutorSupplier("in-process")
    with supplier.session():
        trials = testing.run_contract_study(tmp_path_factory.mktemp("in-process"), supplier)
    return testing.signatures(trials)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_every_kind_of_outcome_is_recorded_alike(executor, reference, tmp_path_factory):
    supplier = testing.ExecutorSupplier(executor)
    with supplier.session():
        trials = testing.run_contract_study(tmp_path_factory.mktemp(executor), supplier)
    print(f"{executor}: runs took {supplier.seconds} s")
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    found = testing.signatures(trials)
    assert set(found) == set(testing.KINDS), sorted(found)
    for kind in testing.KINDS:
        assert found[kind] == reference[kind], kind
    stopped = [t for t in trials if testing.kind_of(t) == "stopped"]
    assert stopped and all(t.user_attrs["test_accuracy"] is None and t.user_attrs["curve"] for t in stopped)
    assert all(t.constraints["stopped"] == 1.0 for t in stopped)
    failed = {testing.kind_of(t): t.user_attrs["fail_reason"] for t in trials if t.state == TrialState.FAIL}
    assert "contract: an exception inside the trial" in failed["failed-exception"]
    assert failed["failed-nan"].startswith("NonFiniteLoss")
    assert failed["interrupted"].startswith("interrupted")
