"""The exact allocator (search/_allocate.py): the knapsack against brute force, plans on the real
digits baseline that fit their budget, exact seed trials, and ``compresstune plan``."""

from __future__ import annotations

import itertools
import math
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from compresstune.artifact import reference_size, to_bytes
from compresstune.compress import apply
from compresstune.search._allocate import allocate, solve
from compresstune.search._seeds import plan_seeds
from compresstune.search._sensitivity import scan
from compresstune.search.config import StudyConfig
from compresstune.spaces import Space
from compresstune.tasks import Classification

ROOT = Path(__file__).resolve().parents[2]


def _brute(items, capacity):
    best, pick = math.inf, None
    for combo in itertools.product(*(range(len(g)) for g in items)):
        weight = sum(items[g][i][1] for g, i in enumerate(combo))
        cost = sum(items[g][i][0] for g, i in enumerate(combo))
        if weight <= capacity and cost < best - 1e-12:
            best, pick = cost, combo
    return best, pick


@pytest.mark.parametrize("seed", range(40))
def test_the_knapsack_is_exact(seed):
    rng = random.Random(seed)
    items = [[(round(rng.random(), 3), rng.randint(0, 12)) for _ in range(rng.randint(1, 4))]
             for _ in range(rng.randint(1, 4))]
    capacity = rng.randint(0, 30)
    best, _ = _brute(items, capacity)
    picks = solve(items, capacity)
    if best == math.inf:
        assert picks is None
    else:
        assert sum(items[g][i][1] for g, i in enumerate(picks)) <= capacity
        assert sum(items[g][i][0] for g, i in enumerate(picks)) == pytest.approx(best)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from studies import digits as mod

    cache = tmp_path_factory.mktemp("alloc-cache")
    splits = mod.data()
    model = mod.baseline(data=splits, cache_dir=cache)
    task = Classification.from_splits(splits)
    config = StudyConfig.from_dict({"name": "alloc", "sensitivity": {"examples": 200}})
    space = Space.from_config(config.space, model)
    table = scan(model, task, space, config.sensitivity)
    return model, space, table, reference_size(model)


@pytest.mark.parametrize("ratio", [8, 32, 64])
def test_a_plan_fits_its_budget_packed_for_real(digits, ratio):
    model, space, table, ref = digits
    budget = ref // ratio
    alloc = allocate(space, model, table, max_bytes=budget, reference_bytes=ref)
    assert alloc.fits and alloc.real_bytes <= budget
    assert alloc.real_bytes == len(to_bytes(apply(model, space.decode(alloc.params))))
    assert alloc.real_bytes >= 0.8 * budget  # the budget is used, not thrown away
    assert alloc.predicted_drop >= 0 and 1 <= alloc.solves <= 9


def test_a_budget_below_the_space_gives_its_smallest_plan_unfit(digits):
    model, space, table, ref = digits
    alloc = allocate(space, model, table, max_bytes=100, reference_bytes=ref)
    assert not alloc.fits and alloc.real_bytes > 100


def test_exact_seeds_reach_their_ratios_with_no_more_predicted_drop_than_free(digits):
    model, space, table, ref = digits
    seeds = plan_seeds(space, model, table, ratios=[8, 32], reference_bytes=ref, allocator="exact")
    assert [s.target_ratio for s in seeds] == [8.0, 32.0]
    assert all(s.reached and s.ratio >= s.target_ratio for s in seeds)
    assert seeds[0].predicted_drop <= seeds[1].predicted_drop
    assert all(s.params.keys() == seeds[0].params.keys() for s in seeds)


def test_the_allocator_setting_is_validated():
    from compresstune.errors import ConfigError

    with pytest.raises(ConfigError, match=r"sensitivity\.allocator"):
        StudyConfig.from_dict({"sensitivity": {"allocator": "ilp"}})


def _plan_cli(study: str, out, *args) -> subprocess.CompletedProcess:
    """``compresstune plan STUDY --out OUT ARGS`` from the repository root."""
    return subprocess.run([sys.executable, "-m", "compresstune.cli", "plan", study, "--out", str(out), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_compresstune_plan_prints_the_plan_and_its_real_size(tmp_path):
    run = lambda *a: _plan_cli("studies/digits.yaml", tmp_path, *a)  # noqa: E731
    ok = run("--ratio", "32")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("layer  sparsity  bits  rank") and "fits" in ok.stdout
    ratio = float(re.search(r"real packed size [\d,]+ bytes \(([\d.]+)x\)", ok.stdout).group(1))
    assert 32 <= ratio < 40
    bad = run("--ratio", "500")
    assert bad.returncode == 2 and "no plan of this space fits --ratio 500" in bad.stderr
    neither = run()
    assert neither.returncode == 2
    assert "one of the arguments --ratio --max-size --max-macs --max-bops is required" in neither.stderr


# -- a MACs budget: ranks and channel groups ---------------------------------------------------------

@pytest.fixture(scope="module")
def digits_channels(digits):
    model = digits[0]
    from studies import digits as mod

    task = Classification.from_splits(mod.data())
    config = StudyConfig.from_dict({"name": "alloc", "space": {"structured": [False, True]},
                                    "sensitivity": {"examples": 200}})
    space = Space.from_config(config.space, model)
    example = next(iter(task.batches("val")))
    return model, space, scan(model, task, space, config.sensitivity), task, example


@pytest.mark.parametrize("share", [0.5, 0.1])
def test_a_macs_plan_fits_its_budget_counted_for_real(digits_channels, share):
    from compresstune.objectives import multiply_accumulates
    from compresstune.search._allocate import allocate_macs

    model, space, table, task, example = digits_channels
    reference = multiply_accumulates(model, example, task=task)
    budget = share * reference
    alloc = allocate_macs(space, model, table, max_macs=budget, example=example, task=task,
                          reference_bytes=reference_size(model))
    small = apply(model, space.decode(alloc.params))
    assert alloc.fits and alloc.real_count == multiply_accumulates(small, example, task=task) <= budget
    assert alloc.real_count >= 0.8 * budget and alloc.reference_count == reference
    assert alloc.real_bytes == len(to_bytes(small))
    plan = space.decode(alloc.params)
    assert all(lp.bits == 32 and (lp.structured or lp.sparsity == 0) for lp in plan.layers.values())  # MACs only
    if share == 0.1:  # no rank alone gets there: channels are cut
        assert any(lp.structured for lp in plan.layers.values())


def test_a_space_that_cannot_lower_macs_is_refused_naming_the_knobs(digits):
    from compresstune.errors import ConfigError
    from compresstune.search._allocate import allocate_macs

    model, _, table, ref = digits
    space = Space.from_config(StudyConfig.from_dict({"space": {"rank_fraction": [1.0]}}).space, model)
    with pytest.raises(ConfigError, match=r"no knob of this space lowers MACs.*rank_fraction.*structured"):
        allocate_macs(space, model, table, max_macs=1e5, example=None, reference_bytes=ref)


def test_compresstune_plan_max_macs_prints_the_plan_and_its_count(tmp_path):
    study = tmp_path / "digits_channels.yaml"
    study.write_text((ROOT / "studies" / "digits.yaml").read_text().replace("structured: [false]",
                                                                              "structured: [false, true]"))
    run = lambda *a: _plan_cli(str(study), tmp_path / "out", *a)  # noqa: E731
    ok = run("--max-macs", "100000")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("layer  sparsity  bits  rank  channels cut"), ok.stdout
    macs = float(re.search(r"MACs per example ([\d,]+)", ok.stdout).group(1).replace(",", ""))
    assert 80000 <= macs <= 100000 and "fits" in ok.stdout
    bad = run("--max-macs", "10")
    assert bad.returncode == 2 and "no plan of this space fits --max-macs 10" in bad.stderr


# -- a bit-operations budget ------------------------------------------------------------------------

@pytest.mark.parametrize(("share", "activation_bits"), [(0.2, 32), (0.02, 8)])
def test_a_bops_plan_fits_its_budget_counted_for_real(digits_channels, share, activation_bits):
    from compresstune.objectives import bit_operations
    from compresstune.search._allocate import allocate_bops

    model, _, table, task, example = digits_channels
    space = Space.from_config(StudyConfig.from_dict({"space": {"rank_fraction": [0.5, 1.0]}}).space, model)
    count = lambda m: bit_operations(m, example, activation_bits=activation_bits, task=task)  # noqa: E731
    reference = count(model)
    budget = share * reference
    alloc = allocate_bops(space, model, table, max_bops=budget, example=example, task=task,
                          activation_bits=activation_bits, reference_bytes=reference_size(model))
    small = apply(model, space.decode(alloc.params))
    assert alloc.fits and alloc.count == "bit-operations"
    assert alloc.real_count == count(small) <= budget and alloc.reference_count == reference
    assert alloc.real_count >= 0.9 * budget  # the budget is used
    assert alloc.real_bytes == len(to_bytes(small)) and alloc.solves <= 3
    plan = space.decode(alloc.params)
    assert any(lp.bits < 32 for lp in plan.layers.values())


def test_compresstune_plan_max_bops_prints_the_count_and_refuses_what_no_plan_reaches(tmp_path):
    run = lambda *a: _plan_cli("studies/digits.yaml", tmp_path, *a)  # noqa: E731
    ok = run("--max-bops", "2e7")
    assert ok.returncode == 0, ok.stderr
    count = float(re.search(r"bit-operations per example ([\d,]+)", ok.stdout).group(1).replace(",", ""))
    assert 0.9 * 2e7 <= count <= 2e7 and "fits" in ok.stdout
    bad = run("--max-bops", "10")
    assert bad.returncode == 2 and "no plan of this space fits --max-bops 10" in bad.stderr
    assert "bit-operations has" in bad.stderr
