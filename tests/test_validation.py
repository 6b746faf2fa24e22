"""One validation vocabulary: "`<field>` must be <allowed>; got <value>.", raised as
the caller's own ValueError subclass, by the plan, the space, training and the config."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from compresstune._validation import check_int, check_number, check_one_of, message
from compresstune.data import Split, iterate_batches
from compresstune.errors import CompressTuneError, ConfigError, DataError, PlanError, TrainingError
from compresstune.plan import LayerPlan


def test_the_message_format():
    assert message("lr", "a number > 0", -1) == "`lr` must be a number > 0; got -1."
    assert message("name", "a str", None) == "`name` must be a str; got None."


@pytest.mark.parametrize("value", [True, math.nan, math.inf, "0.5", None])
def test_numbers_reject_bools_non_finite_and_other_types(value):
    with pytest.raises(PlanError, match="`x` must be a number in"):
        check_number("x", value, "a number in [0, 1]", lambda v: 0 <= v <= 1, PlanError)


def test_ints_and_choices():
    check_int("n", 3, 1)
    for bad in (0, 2.0, True):
        with pytest.raises(TrainingError, match=r"`n` must be an integer >= 1; got"):
            check_int("n", bad, 1, TrainingError)
    check_one_of("bits", 4, (4, 8))
    with pytest.raises(ConfigError, match=r"`bits` must be one of \[4, 8\]; got True\."):
        check_one_of("bits", True, (4, 8), ConfigError)


def _raised(fn) -> CompressTuneError:
    with pytest.raises(CompressTuneError) as info:
        fn()
    return info.value


def test_every_caller_uses_its_own_subclass_and_the_one_format():
    from compresstune.search.config import StudyConfig
    from compresstune.spaces import Space
    from studies.training import fit

    cases = [
        (lambda: LayerPlan(sparsity=1.5), PlanError, "`sparsity` must be a number in [0, 1); got 1.5."),
        (lambda: LayerPlan(bits=9), PlanError, "`bits` must be one of"),
        (lambda: list(iterate_batches(Split(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long)), 0, shuffle=False)),
         DataError, "`batch_size` must be an integer >= 1; got 0."),
        (lambda: fit(nn.Linear(1, 2), Split(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long)), epochs=1, lr=0),
         TrainingError, "`lr` must be a finite number > 0; got 0."),
        (lambda: Space.from_config({"bits": [4, 8]}, nn.Linear(4, 2)).uniform_params(2.0, 4), ConfigError,
         "`sparsity` must be a number in [0, 1); got 2.0."),
        (lambda: StudyConfig.from_dict({"name": "x", "model": {"factory": "a:b"}, "data": {"factory": "a:c"},
                                        "space": {"bits": [4, 9]}}), ConfigError, "`bits` must be one of"),
    ]
    for fn, kind, text in cases:
        err = _raised(fn)
        assert type(err) is kind and text in str(err), (kind, str(err))
