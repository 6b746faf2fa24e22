"""Contract tests for compresstune.spaces.Space: pure, replayable, never invalid."""

import math
import pickle
import warnings

import optuna
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FixedTrial
from torch import nn

from compresstune.compress import apply
from compresstune.search.config import SpaceConfig, StudyConfig
from compresstune.errors import ConfigError
from compresstune.plan import CompressionPlan
from compresstune.spaces import Space

SEARCH_ALL = {"structured": [False, True], "rank_fraction": [0.1, 0.25, 0.5, 1.0]}


def _random_study(seed=0, storage=None):
    return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed), storage=storage)


class Recorder:
    """A trial that records which methods the space calls."""

    def __init__(self, params):
        self._inner = FixedTrial(params)
        self.calls = []

    def __getattr__(self, name):
        self.calls.append(name)
        return getattr(self._inner, name)


# -- parameter names and distributions ---------------------------------------------

def test_param_names_follow_the_scheme_and_never_contain_a_slash(cnn):
    space = Space.from_config(SEARCH_ALL, cnn)
    names = space.param_names
    assert not [n for n in names if "/" in n]
    assert "features.0:sparsity" in names and "classifier.1:bits" in names
    assert "features.5:structured" in names and "features.0:rank_fraction" in names
    assert names[-2:] == ["distill:temperature", "distill:alpha"]
    assert list(space.distributions()) == names
    assert space.layers == ["features.0", "features.3", "features.5", "classifier.1", "classifier.3"]


def test_distribution_types(mlp):
    space = Space.from_config({"sparsity": {"low": 0.0, "high": 0.9, "step": 0.1}}, mlp)
    d = space.distributions()
    assert d["0:sparsity"] == FloatDistribution(0.0, 0.9, step=0.1)
    assert d["0:bits"] == CategoricalDistribution([2, 3, 4, 5, 6, 8, 16, 32])
    assert d["distill:temperature"] == FloatDistribution(1.0, 8.0, log=True)
    assert d["distill:alpha"] == FloatDistribution(0.0, 1.0)


def test_layer_fqn_with_slash_is_refused():
    model = nn.Sequential()
    model.add_module("a/b", nn.Linear(8, 8))
    with pytest.raises(ConfigError, match="contains '/'"):
        Space.from_config(None, model)


def test_fixed_knobs_create_no_parameter(mlp):
    space = Space.from_config({"sparsity": 0.5, "bits": 8, "rank_fraction": None, "temperature": 2.0,
                               "alpha": {"low": 0.3, "high": 0.3}}, mlp)
    assert space.param_names == []
    plan = space.decode({})
    assert all(lp.sparsity == 0.5 and lp.bits == 8 and lp.rank is None for lp in plan.layers.values())
    assert (plan.temperature, plan.alpha) == (2.0, 0.3)


def test_suggest_only_calls_trial_suggest(cnn):
    space = Space.from_config(SEARCH_ALL, cnn)
    trial = Recorder(space.uniform_params(0.5, 4, 0.5))
    space.suggest(trial)
    assert trial.calls and all(c in ("suggest_float", "suggest_categorical") for c in trial.calls)
    assert len(trial.calls) == len(space.param_names)


def test_distributions_drive_an_ask_with_fixed_distributions(cnn):
    # The path Ray's Optuna searcher takes: a static space, then decode.
    space = Space.from_config(SEARCH_ALL, cnn)
    study = _random_study(1)
    trial = study.ask(fixed_distributions=space.distributions())
    plan = space.decode(trial.params)
    apply(cnn, plan)


def test_space_pickles(cnn):
    space = Space.from_config(SEARCH_ALL, cnn)
    again = pickle.loads(pickle.dumps(space))
    params = space.uniform_params(0.3, 4, 0.25, structured=True)
    assert again.decode(params) == space.decode(params)


# -- replay ----------------------------------------------------------------------------

def _value_strategy(dist):
    if isinstance(dist, CategoricalDistribution):
        return st.sampled_from(dist.choices)
    if dist.step is not None:
        n = round((dist.high - dist.low) / dist.step)
        return st.integers(0, n).map(lambda k: min(dist.low + k * dist.step, dist.high))
    return st.floats(dist.low, dist.high, allow_nan=False)


def _params_strategy(space):
    return st.fixed_dictionaries({name: _value_strategy(d) for name, d in space.distributions().items()})


_ROUND_TRIP_SPACE = {**SEARCH_ALL, "sparsity": {"low": 0.0, "high": 0.9, "step": 0.05},
                     "groups": [{"name": "head", "pattern": "classifier.*"}]}


@pytest.fixture(scope="module")
def round_trip_space(small_cnn_class):
    torch.manual_seed(0)
    return Space.from_config(_ROUND_TRIP_SPACE, small_cnn_class())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_suggest_decode_round_trip(round_trip_space, data):
    space = round_trip_space
    params = data.draw(_params_strategy(space))
    study = optuna.create_study()
    study.enqueue_trial(params)
    trial = study.ask()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an off-grid or out-of-range value would warn
        plan = space.suggest(trial)
    assert trial.params == params
    assert space.decode(trial.params) == plan
    assert space.decode(params) == plan
    assert CompressionPlan.from_json(plan.to_json()) == plan


def test_round_trip_through_sqlite(tmp_path, text_model):
    space = Space.from_config(SEARCH_ALL, text_model)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = _random_study(3, storage)
    study.enqueue_trial(space.uniform_params(0.5, 4, 0.25))
    for _ in range(3):
        trial = study.ask()
        plan = space.suggest(trial)
        trial.set_user_attr("plan", plan.to_json())
        study.tell(trial, 0.0)
    loaded = optuna.load_study(study_name=study.study_name, storage=storage)
    for t in loaded.trials:
        assert space.decode(t.params) == CompressionPlan.from_json(t.user_attrs["plan"])


def test_decode_rejects_missing_and_out_of_range_params(mlp):
    space = Space.from_config({"bits": [4, 8]}, mlp)
    params = space.uniform_params(0.5, 4)
    with pytest.raises(ConfigError, match="lacks"):
        space.decode({k: v for k, v in params.items() if k != "0:bits"})
    with pytest.raises(ConfigError, match=r"'0:bits' = 5 is outside .*\{4, 8\}"):
        space.decode({**params, "0:bits": 5})
    with pytest.raises(ConfigError, match="0:sparsity"):
        space.decode({**params, "0:sparsity": 0.99})


# -- no invalid plans ----------------------------------------------------------------

@pytest.mark.parametrize("model_name, example, trials", [
    ("cnn", lambda: torch.randn(2, 3, 6, 6), 50),
    ("text_model", lambda: torch.randint(0, 50, (2, 5)), 20),
])
def test_random_plans_all_apply(request, model_name, example, trials):
    model = request.getfixturevalue(model_name)
    space = Space.from_config(SEARCH_ALL, model)
    study = _random_study(7)
    x = example()
    for i in range(trials):
        trial = study.ask()
        small = apply(model, space.suggest(trial))  # raises PlanError on an invalid plan
        if i < 5:  # a forward pass is slow on 2 cores; a few show the model still runs
            assert torch.isfinite(small(x)).all()
        study.tell(trial, 0.0)


def test_structured_pruning_then_rank_fits_the_shrunken_matrix(cnn):
    # 90% of features.5's 16 channels go; rank 0.5 of the full 16 would exceed what is left.
    space = Space.from_config({"structured": True, "rank_fraction": 0.5, "sparsity": 0.9, "bits": 32}, cnn)
    plan = space.decode(space.uniform_params(0.9, 32, 0.5, structured=True))
    assert plan.layers["features.5"].structured
    rows = 16 - round(0.9 * 16)
    rank = plan.layers["features.5"].rank
    assert rank is None or rank <= rows
    apply(cnn, plan)


# -- what layers can take --------------------------------------------------------------

def test_knobs_a_layer_cannot_take_are_removed(cnn):
    space = Space.from_config(SEARCH_ALL, cnn)
    names = set(space.param_names)
    assert "features.3:rank_fraction" not in names  # grouped conv: no low-rank
    assert "features.3:structured" not in names  # grouped conv
    assert "features.0:structured" not in names  # feeds the grouped conv
    assert "classifier.3:structured" not in names  # model output
    assert "features.5:structured" in names


def test_structured_true_on_a_refusing_layer_is_fixed_false(cnn):
    space = Space.from_config({"structured": True, "sparsity": 0.5, "bits": 8, "rank_fraction": None,
                               "temperature": 2, "alpha": 0.5}, cnn)
    plan = space.decode({})
    assert plan.layers["features.5"].structured and plan.layers["classifier.1"].structured
    assert not plan.layers["features.3"].structured and not plan.layers["classifier.3"].structured
    apply(cnn, plan)


def test_structured_is_not_searched_when_sparsity_is_zero(cnn):
    space = Space.from_config({"structured": [False, True], "sparsity": 0.0}, cnn)
    assert not [n for n in space.param_names if n.endswith(":structured") or n.endswith(":sparsity")]


def test_fractions_that_do_not_shrink_a_layer_collapse_to_no_factorisation():
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2), nn.ReLU(), nn.Linear(2, 2))
    # 16x16: rank 12 (0.75) does not save storage (12*32 > 256); 2x2: no rank saves.
    space = Space.from_config({"rank_fraction": [0.25, 0.75], "sparsity": 0.0, "bits": 32}, model)
    assert space.distributions()["0:rank_fraction"].choices == (0.25, 1.0)
    assert "4:rank_fraction" not in space.param_names
    assert space.decode(space.uniform_params(0.0, 32, 0.75)).layers["0"].rank is None


def test_rank_fraction_null_means_never_factorised(cnn):
    space = Space.from_config({"rank_fraction": None}, cnn)
    assert not [n for n in space.param_names if n.endswith(":rank_fraction")]


# -- overrides, priority, groups -----------------------------------------------------------

def test_override_priority_global_type_pattern_name(cnn):
    cfg = {
        "bits": [2, 4],
        "overrides": [  # listed from highest to lowest priority on purpose
            {"name": "classifier.3", "bits": 16},
            {"pattern": "classifier.*", "bits": [6, 8]},
            {"type": "linear", "bits": 5},
            {"type": "conv2d", "bits": 3},
            {"pattern": "features.5", "bits": [8, 32]},
            {"pattern": "features.*", "bits": 4},  # same priority, later: wins over the line above
        ],
    }
    space = Space.from_config(cfg, cnn)
    choices = {n.split(":")[0]: d.choices for n, d in space.distributions().items() if n.endswith(":bits")}
    assert choices == {"classifier.1": (6, 8)}
    plan = space.decode(space.uniform_params(0.0, 8))
    assert {n: lp.bits for n, lp in plan.layers.items()} == {
        "features.0": 4, "features.3": 4, "features.5": 4, "classifier.1": 8, "classifier.3": 16}


def test_override_sets_only_its_knobs(mlp):
    space = Space.from_config({"overrides": [{"name": "2", "sparsity": {"low": 0.1, "high": 0.2}}]}, mlp)
    d = space.distributions()
    assert d["2:sparsity"] == FloatDistribution(0.1, 0.2)
    assert d["2:bits"] == d["0:bits"]


def test_groups_share_one_set_of_knobs(cnn):
    cfg = {**SEARCH_ALL, "groups": [{"name": "convs", "pattern": "features.*"}]}
    space = Space.from_config(cfg, cnn)
    assert space.groups == {"convs": ("features.0", "features.3", "features.5")}
    assert not [n for n in space.param_names if n.startswith("features.")]
    assert {"convs:sparsity", "convs:bits", "convs:rank_fraction", "convs:structured"} <= set(space.param_names)
    study = _random_study(2)
    for _ in range(5):
        plan = space.suggest(study.ask())
        convs = [plan.layers[n] for n in ("features.0", "features.3", "features.5")]
        # One value each: a layer that takes structured pruning holds it as its channel fraction.
        assert len({(max(lp.sparsity, lp.structured), lp.bits) for lp in convs}) == 1
        apply(cnn, plan)  # members map shared values to what each can take


def test_group_own_knobs_win_and_conflicts_are_reported(cnn):
    conflict = {"overrides": [{"name": "features.0", "bits": 8}], "groups": [{"name": "g", "pattern": "features.*"}]}
    with pytest.raises(ConfigError, match=r"group 'g' .*different settings.*Set `bits` on the group"):
        Space.from_config(conflict, cnn)
    fixed = {**conflict, "groups": [{"name": "g", "pattern": "features.*", "bits": [4, 8]}]}
    space = Space.from_config(fixed, cnn)
    assert space.distributions()["g:bits"].choices == (4, 8)


def test_a_layer_in_two_groups_is_an_error(cnn):
    cfg = {"groups": [{"name": "a", "pattern": "features.*"}, {"name": "b", "pattern": "features.5"}]}
    with pytest.raises(ConfigError, match="matches both group 'a' and group 'b'"):
        Space.from_config(cfg, cnn)


def test_group_named_like_a_layer_is_an_error():
    model = nn.Sequential()
    model.add_module("fc", nn.Linear(4, 4))
    model.add_module("head", nn.Linear(4, 2))
    with pytest.raises(ConfigError, match="also a layer name"):
        Space.from_config({"groups": [{"name": "head", "pattern": "fc"}]}, model)


# -- selectors that match nothing -------------------------------------------------------------

@pytest.mark.parametrize("cfg, field, close", [
    ({"include": ["featurs.*"]}, "space.include[0]", "features.*"),
    ({"exclude": ["clasifier.1"]}, "space.exclude[0]", "classifier.1"),
    ({"overrides": [{"name": "classifer.3", "bits": 8}]}, "space.overrides[0].name", "classifier.3"),
    ({"overrides": [{"pattern": "feature.*", "bits": 8}]}, "space.overrides[0].pattern", "features.*"),
    ({"groups": [{"name": "g", "pattern": "classifiers.*"}]}, "space.groups[0].pattern", "classifier.*"),
])
def test_selector_matching_nothing_lists_close_names(cnn, cfg, field, close):
    with pytest.raises(ConfigError) as info:
        Space.from_config(cfg, cnn)
    msg = str(info.value)
    assert f"`{field}`" in msg and "matches no" in msg
    assert close in msg.split("Close names:")[1].split("Available layers")[0]
    assert "Available layers: features.0 (conv2d)" in msg


def test_type_selector_matching_nothing(mlp):
    with pytest.raises(ConfigError, match=r"`space.overrides\[0\].type` 'conv2d' matches no selected layer.*linear"):
        Space.from_config({"overrides": [{"type": "conv2d", "bits": 8}]}, mlp)
    with pytest.raises(ConfigError, match=r"`space.types\[0\]` 'embedding' matches no compressible layer"):
        Space.from_config({"types": ["embedding"]}, mlp)


def test_override_on_an_excluded_layer_says_so(mlp):
    with pytest.raises(ConfigError, match="left out by include/exclude/types: 4"):
        Space.from_config({"exclude": ["4"], "overrides": [{"name": "4", "bits": 8}]}, mlp)


def test_selector_naming_a_skipped_module_says_why(cnn):
    with pytest.raises(ConfigError, match="normalisation layer"):
        Space.from_config({"overrides": [{"pattern": "features.1", "bits": 8}]}, cnn)


def test_include_exclude_types_select_layers(cnn):
    space = Space.from_config({"include": ["re:features\\.\\d"], "exclude": ["features.3"]}, cnn)
    assert space.layers == ["features.0", "features.5"]
    assert set(space.decode(space.uniform_params(0.5, 8)).layers) == {"features.0", "features.5"}
    assert Space.from_config({"types": ["linear"]}, cnn).layers == ["classifier.1", "classifier.3"]
    with pytest.raises(ConfigError, match="no layer is left"):
        Space.from_config({"include": ["features.*"], "types": ["linear"]}, cnn)


def test_accepts_space_config_and_study_config(mlp):
    cfg = StudyConfig.from_dict({"model": {"factory": "m:f"}, "data": {"factory": "m:d"}, "space": {"bits": 8}})
    a = Space.from_config(cfg, mlp)
    b = Space.from_config(SpaceConfig(bits=8), mlp)
    assert a.param_names == b.param_names
    with pytest.raises(ConfigError, match=r"unknown key `bitz` — did you mean `bits`"):
        Space.from_config({"bitz": 8}, mlp)


# -- uniform params ---------------------------------------------------------------------------

def test_uniform_params_decode_to_the_uniform_plan(cnn):
    space = Space.from_config(SEARCH_ALL, cnn)
    for sparsity, bits, fraction in [(0.5, 4, None), (0.0, 32, 0.25), (0.8, 8, 0.5)]:
        plan = space.decode(space.uniform_params(sparsity, bits, fraction, temperature=3.0, alpha=0.7))
        expected = CompressionPlan.uniform(cnn, sparsity=sparsity, bits=bits, rank_fraction=fraction,
                                           temperature=3.0, alpha=0.7, layers=space.layers)
        assert plan == expected


def test_uniform_params_clamp_to_each_layers_choices(mlp):
    cfg = {"sparsity": {"low": 0.0, "high": 0.9, "step": 0.2},
           "overrides": [{"name": "4", "bits": [4, 8], "sparsity": {"low": 0.0, "high": 0.3}}],
           "temperature": {"low": 1.0, "high": 2.0}}
    space = Space.from_config(cfg, mlp)
    assert space.distributions()["0:sparsity"].high == pytest.approx(0.8)
    params = space.uniform_params(0.5, 6, temperature=10)
    assert params["4:bits"] == 8  # 6 is as near to 4 as to 8: ties go to the larger
    assert params["0:bits"] == 6
    assert params["0:sparsity"] == pytest.approx(0.4) or params["0:sparsity"] == pytest.approx(0.6)
    assert params["4:sparsity"] == pytest.approx(0.3)
    assert params["distill:temperature"] == 2.0
    plan = space.decode(params)
    assert plan.layers["4"].sparsity == pytest.approx(0.3)


@pytest.mark.parametrize("kwargs, match", [
    ({"sparsity": 1.0, "bits": 4}, "`sparsity` must be a number in"),
    ({"sparsity": 0.5, "bits": 9}, "`bits` must be one of"),
    ({"sparsity": 0.5, "bits": 4, "rank_fraction": 0}, "`rank_fraction`"),
    ({"sparsity": math.nan, "bits": 4}, "`sparsity`"),
])
def test_uniform_params_rejects_bad_input(mlp, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Space.from_config(None, mlp).uniform_params(**kwargs)


def test_describe_lists_layers_knobs_and_groups(cnn):
    text = Space.from_config({**SEARCH_ALL, "groups": [{"name": "head", "pattern": "classifier.*"}]}, cnn).describe()
    assert text.splitlines()[0].startswith("Search space: 5 layers")
    for needle in ("features.3", "conv2d", "8x2x3x3", "head", "[0, 0.95]", "no lowrank", "temperature [1, 8] log"):
        assert needle in text
