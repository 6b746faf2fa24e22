"""Seed trials planned from the sensitivity scan: the size model against the real
packed size, the greedy allocation hitting target ratios (measured with the real
packed size), and seeds enqueued exactly once across a resume, with the stored
narrowing re-applied."""

from __future__ import annotations

import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from torch import nn

from compresstune.artifact import reference_size, to_bytes
from compresstune.compress import apply
from compresstune.search.config import StudyConfig, load_config
from compresstune.layers import discover
from compresstune.plan import CompressionPlan, LayerPlan
from compresstune.search._seeds import estimate_bytes, narrowed_space, narrowing, plan_seeds
from compresstune.tasks import Classification
from compresstune.search._sensitivity import scan
from compresstune.spaces import Space


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from studies import digits as mod

    cache = tmp_path_factory.getbasetemp() / "ct-digits-cache"
    cache.mkdir(exist_ok=True)
    splits = mod.data()
    model = mod.baseline(data=splits, cache_dir=cache)
    cfg = StudyConfig.from_dict({"model": {"factory": "studies.digits:baseline"},
                                 "data": {"factory": "studies.digits:data"}})
    space = Space.from_config(cfg.space, model)
    return splits, model, space, scan(model, Classification.from_splits(splits), space, cfg.sensitivity)


@pytest.mark.parametrize("shape", [(64, 512), (100, 300), (200, 400)])
def test_the_size_model_matches_the_real_packed_size(shape) -> None:
    layer = nn.Linear(shape[1], shape[0], bias=False)
    other = len(to_bytes(layer)) - 4 * layer.weight.numel()  # header and framing of the plain module
    info = discover(layer).layers[""]
    for sparsity in (0.0, 0.5, 0.9):
        for bits in (2, 4, 8, 16, 32):
            for fraction in (None, 0.25):
                rank = info.rank_for_fraction(fraction) if fraction else None
                if sparsity == 0 and bits == 32 and rank is None:
                    continue
                lp = LayerPlan(sparsity=sparsity, bits=bits, rank=rank)
                real = len(to_bytes(apply(layer, CompressionPlan({"": lp})))) - other
                est = estimate_bytes(*shape, sparsity=sparsity, bits=bits, rank=rank)
                assert est == pytest.approx(real, rel=0.08), (lp, real, est)


def test_seeds_hit_the_target_ratios_by_real_packed_size(digits) -> None:
    splits, model, space, table = digits
    ref = reference_size(model)
    targets = [4, 8, 16, 32, 64]
    seeds = plan_seeds(space, model, table, ratios=targets, reference_bytes=ref)
    assert [s.target_ratio for s in seeds] == targets and all(s.reached for s in seeds)
    for seed in seeds:
        size = len(to_bytes(apply(model, space.decode(seed.params))))  # the real packed size
        assert size == seed.size_bytes
        assert seed.target_ratio <= ref / size <= 1.10 * seed.target_ratio
        assert set(seed.params) == set(space.param_names)
        assert seed.user_attrs()["seed_trial"] is True
    # The scan finds near-free compression up to 16x on this model: spend it there.
    assert all(s.predicted_drop < 0.03 for s in seeds[:3])
    # The most fragile layer under pruning (conv1) keeps most of its weights in the cheap seeds.
    assert all(s.params["conv1:sparsity"] <= 0.5 for s in seeds[:3])


def test_an_unreachable_target_gives_the_most_compressed_plan_once(digits) -> None:
    splits, model, space, table = digits
    ref = reference_size(model)
    seeds = plan_seeds(space, model, table, ratios=[4, 5000, 10000], reference_bytes=ref)
    assert [s.reached for s in seeds] == [True, False]
    assert seeds[1].ratio < 5000 and seeds[1].ratio > 30


def test_narrowing_caps_knobs_at_the_cliff(digits) -> None:
    splits, model, space, table = digits
    narrow = narrowing(space, table, cliff=0.3)
    layers, drops = table["layers"], table["drop"]
    for prefix, knobs in narrow.items():
        row = dict(zip(map(tuple, table["knobs"]), drops[layers.index(prefix)]))
        if "sparsity" in knobs:
            edge = knobs["sparsity"]["high"]
            assert row[("sparsity", edge)] >= 0.3
            assert all(d < 0.3 for (k, v), d in row.items() if k == "sparsity" and v < edge and d is not None)
    cfg = StudyConfig.from_dict({"model": {"factory": "studies.digits:baseline"},
                                 "data": {"factory": "studies.digits:data"}})
    narrowed = narrowed_space(cfg, model, narrow).distributions()
    for prefix, knobs in narrow.items():
        for knob, value in knobs.items():
            d = narrowed[f"{prefix}:{knob}"]
            assert (d.high == value["high"]) if knob == "sparsity" else (list(d.choices) == value)


def _study_file(folder: Path, cache: Path, *, trials: int, narrow: bool, refine: int = 0, extra: str = "") -> Path:
    out = folder / "out"
    if not out.exists():
        out.mkdir(parents=True)
        (out / "cache").symlink_to(cache, target_is_directory=True)
    path = folder / "seeded.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: seeded
        model: {{factory: "studies.digits:baseline"}}
        data: {{factory: "studies.digits:data"}}
        space:
          sparsity: {{low: 0.0, high: 0.95}}
          bits: [2, 4, 8, 32]
          rank_fraction: [0.5, 1.0]
        finetune: {{steps: 6, batch_size: 32, eval_every: 3}}
        search: {{trials: {trials}, seed: 3, out: "{out}"}}
        sensitivity: {{seed_ratios: [4, 16], narrow: {str(narrow).lower()}, cliff: 0.02, examples: 200,
                       refine_seeds: {refine}}}
        """) + extra)
    return path


def test_seeds_are_capped_at_half_the_trials_and_spread(digits) -> None:
    from compresstune.search._seeds import spread

    assert spread([4, 8, 16, 32, 64], 2) == [4.0, 64.0] and spread([4, 8, 16, 32, 64], 3) == [4.0, 16.0, 64.0]
    assert spread([8, 4], 5) == [4.0, 8.0] and spread([4, 8], 1) == [4.0]


def test_seeds_are_enqueued_once_across_a_resume_and_narrowing_is_restored(digits, tmp_path: Path,
                                                                          tmp_path_factory) -> None:
    from compresstune.search import run
    from compresstune.search._controller import prepare

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cache = tmp_path_factory.getbasetemp() / "ct-digits-cache"
    first_log, second_log = [], []
    study, _ = run(load_config(_study_file(tmp_path, cache, trials=4, narrow=True)), progress=False,
                   log=first_log.append)
    seeds = [t for t in study.get_trials() if t.user_attrs.get("seed_trial")]
    assert [t.number for t in seeds] == [0, 1] and [t.user_attrs["seed_target_ratio"] for t in seeds] == [4, 16]
    for t in seeds:  # per-layer knobs fixed; the distillation settings are left to the sampler
        fixed = t.system_attrs["fixed_params"]
        assert fixed and not [k for k in fixed if k.startswith("distill:")] and "distill:alpha" in t.params
        # the trial's own packed size (its header holds the sampler's floats) still reaches the target
        assert t.user_attrs["seed_target_ratio"] <= t.user_attrs["ratio"] <= 1.1 * t.user_attrs["seed_target_ratio"]
    assert any(line.startswith("seed trials enqueued: 2") for line in first_log)
    attrs = study.user_attrs
    assert attrs["sensitivity"]["layers"] == ["conv1", "conv2", "fc1", "fc2"] and len(attrs["seed_trials"]) == 2
    narrow = attrs["narrowing"]
    assert narrow, "cliff 0.02 narrows at least one layer of the digits CNN"
    # Resume with narrowing switched off and more trials: no new seeds, no new scan,
    # and the space is still the narrowed one (a categorical must not change mid-study).
    cfg = load_config(_study_file(tmp_path, cache, trials=5, narrow=False))
    study, _ = run(cfg, progress=False, log=second_log.append)
    trials = study.get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 5
    assert [t.number for t in trials if t.user_attrs.get("seed_trial")] == [0, 1]
    assert not any("seed trials" in line or "sensitivity scan" in line for line in second_log)
    assert study.user_attrs["narrowing"] == narrow
    session = prepare(cfg, Path(cfg.search.out), log=lambda m: None)
    dists = session.space.distributions()
    for prefix, knobs in narrow.items():
        for knob, value in knobs.items():
            d = dists[f"{prefix}:{knob}"]
            assert (d.high == value["high"]) if knob == "sparsity" else (list(d.choices) == value)
    for t in trials:
        for name, value in t.params.items():
            assert dists[name]._contains(dists[name].to_internal_repr(value))
    assert len(session.study.get_trials()) == 5  # preparing again queued nothing


def test_a_second_seed_round_bisects_where_the_seed_path_stops_being_feasible(digits, tmp_path: Path,
                                                                             tmp_path_factory) -> None:
    from compresstune.search import run
    from compresstune.search._seeds import _seed_point, refine_targets

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cache = tmp_path_factory.getbasetemp() / "ct-digits-cache"
    log: list[str] = []
    path = _study_file(tmp_path, cache, trials=5, narrow=False, refine=2,
                       extra="constraints: {max_accuracy_drop: 0.5}\n")
    study, _ = run(load_config(path), progress=False, log=log.append)
    trials = study.get_trials()
    first = [t for t in trials if t.user_attrs.get("seed_round") == 1]
    second = [t for t in trials if t.user_attrs.get("seed_round") == 2]
    targets = refine_targets([_seed_point(t) for t in first], 2)
    assert [t.number for t in first] == [0, 1] and targets  # 4x keeps accuracy within 0.5 of the baseline
    assert study.user_attrs["seed_refinement"]["targets"] == [round(x, 3) for x in targets]
    assert [t.number for t in second] == [2, 3][:len(second)] and second
    for t in second:  # planned along the same path: at (or just above) a bisection target
        target = t.user_attrs["seed_target_ratio"]
        assert any(abs(target - x) < 1e-9 for x in targets) and target <= t.user_attrs["ratio"] <= 1.1 * target
    assert any(line.startswith("seed trials, second round") for line in log)
    assert len(study.user_attrs["seed_trials"]) == 2 + len(second)
