"""LayerPlan / CompressionPlan: frozen, validated at the door, JSON round-trip, uniform()."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import pickle

import pytest
from torch import nn

import compresstune as ct
from compresstune.compress import effective_shapes
from compresstune.errors import CompressTuneError, PlanError
from compresstune.plan import ALLOWED_BITS, SCHEMA_VERSION, CompressionPlan, LayerPlan
from tests.conftest import EveryKind, SmallCNN, TiedLM


def test_errors_are_value_errors():
    for cls in (ct.PlanError, ct.ArtifactError, ct.ConfigError):
        assert issubclass(cls, CompressTuneError) and issubclass(cls, ValueError)


def test_layer_plan_defaults_are_identity():
    lp = LayerPlan()
    assert (lp.sparsity, lp.bits, lp.rank, lp.structured) == (0.0, 32, None, False)
    assert lp.is_identity
    assert not LayerPlan(bits=16).is_identity
    assert not LayerPlan(rank=3).is_identity


def test_plans_are_frozen():
    lp = LayerPlan(sparsity=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        lp.sparsity = 0.1
    plan = CompressionPlan({"a": lp})
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.alpha = 0.2
    with pytest.raises(TypeError):
        plan.layers["b"] = lp  # the mapping itself is read-only
    source = {"a": lp}
    plan = CompressionPlan(source)
    source["b"] = LayerPlan()
    assert list(plan.layers) == ["a"]  # a copy, not a view of the caller's dict


def test_sparsity_int_is_normalised_to_float():
    assert LayerPlan(sparsity=0).sparsity == 0.0 and isinstance(LayerPlan(sparsity=0).sparsity, float)


@pytest.mark.parametrize(
    "kwargs, field, allowed",
    [
        ({"sparsity": -0.1}, "sparsity", "[0, 1)"),
        ({"sparsity": 1.0}, "sparsity", "[0, 1)"),
        ({"sparsity": 1.5}, "sparsity", "[0, 1)"),
        ({"sparsity": math.nan}, "sparsity", "[0, 1)"),
        ({"sparsity": math.inf}, "sparsity", "[0, 1)"),
        ({"sparsity": "0.5"}, "sparsity", "[0, 1)"),
        ({"sparsity": True}, "sparsity", "[0, 1)"),
        ({"bits": 1}, "bits", "[2, 3, 4, 5, 6, 7, 8, 16, 32]"),
        ({"bits": 9}, "bits", "[2, 3, 4, 5, 6, 7, 8, 16, 32]"),
        ({"bits": 0}, "bits", "[2, 3, 4, 5, 6, 7, 8, 16, 32]"),
        ({"bits": 64}, "bits", "[2, 3, 4, 5, 6, 7, 8, 16, 32]"),
        ({"bits": 4.0}, "bits", "[2, 3, 4, 5, 6, 7, 8, 16, 32]"),
        ({"bits": True}, "bits", "[2, 3, 4, 5, 6, 7, 8, 16, 32]"),
        ({"rank": 0}, "rank", ">= 1"),
        ({"rank": -3}, "rank", ">= 1"),
        ({"rank": 2.5}, "rank", ">= 1"),
        ({"rank": True}, "rank", ">= 1"),
        ({"structured": "yes"}, "structured", "[0, 1)"),
        ({"structured": 1.0}, "structured", "[0, 1)"),
        ({"structured": -0.1}, "structured", "[0, 1)"),
    ],
)
def test_layer_plan_rejects_bad_values(kwargs, field, allowed):
    with pytest.raises(PlanError) as info:
        LayerPlan(**kwargs)
    message = str(info.value)
    value = next(iter(kwargs.values()))
    assert f"`{field}`" in message and repr(value) in message and allowed in message


@pytest.mark.parametrize(
    "kwargs, field, allowed",
    [
        ({"temperature": 0}, "temperature", "> 0"),
        ({"temperature": -1.0}, "temperature", "> 0"),
        ({"temperature": math.nan}, "temperature", "> 0"),
        ({"temperature": "4"}, "temperature", "> 0"),
        ({"alpha": -0.01}, "alpha", "[0, 1]"),
        ({"alpha": 1.01}, "alpha", "[0, 1]"),
        ({"alpha": math.inf}, "alpha", "[0, 1]"),
    ],
)
def test_compression_plan_rejects_bad_distillation_settings(kwargs, field, allowed):
    with pytest.raises(PlanError) as info:
        CompressionPlan({}, **kwargs)
    message = str(info.value)
    assert f"`{field}`" in message and repr(next(iter(kwargs.values()))) in message and allowed in message


def test_distillation_bounds_are_inclusive_where_documented():
    assert CompressionPlan({}, alpha=0.0).alpha == 0.0
    assert CompressionPlan({}, alpha=1).alpha == 1.0
    assert CompressionPlan({}, temperature=1e-3).temperature == 1e-3


def test_compression_plan_rejects_malformed_layers():
    with pytest.raises(PlanError, match="mapping"):
        CompressionPlan([("a", LayerPlan())])
    with pytest.raises(PlanError, match="LayerPlan"):
        CompressionPlan({"a": {"bits": 4}})
    with pytest.raises(PlanError, match="strings"):
        CompressionPlan({3: LayerPlan()})


def test_root_module_name_is_a_valid_layer_name():
    # discover() names a bare nn.Linear's weight "" (the root module), so plans must accept it.
    model = nn.Linear(16, 8)
    plan = CompressionPlan({"": LayerPlan(sparsity=0.5, bits=4)})
    assert int((ct.apply(model, plan).weight == 0).sum()) == 64
    assert CompressionPlan.from_json(plan.to_json()) == plan


def test_json_round_trip_with_schema_version():
    plan = CompressionPlan(
        {"a.b": LayerPlan(sparsity=0.25, bits=4, rank=3), "c": LayerPlan(sparsity=0.5, structured=True), "d": LayerPlan(bits=16)},
        temperature=2.5, alpha=0.3,
    )
    data = plan.to_dict()
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["layers"]["a.b"] == {"sparsity": 0.25, "bits": 4, "rank": 3, "structured": False}
    assert CompressionPlan.from_dict(data) == plan
    text = plan.to_json()
    assert json.loads(text)["schema_version"] == SCHEMA_VERSION
    again = CompressionPlan.from_json(text)
    assert again == plan and hash(again) == hash(plan) and again.to_json() == text
    assert pickle.loads(pickle.dumps(plan)) == plan
    assert copy.deepcopy(plan) == plan


@pytest.mark.parametrize(
    "data, match",
    [
        ({"layers": {}}, "schema_version"),
        ({"schema_version": 99, "layers": {}}, "schema_version"),
        ({"schema_version": SCHEMA_VERSION, "layers": {}, "extra": 1}, "extra"),
        ({"schema_version": SCHEMA_VERSION, "layers": []}, "`layers` must be a mapping"),
        ({"schema_version": SCHEMA_VERSION, "layers": {"fc": {"bits": 9}}}, r"layers\['fc'\].*`bits`"),
        ({"schema_version": SCHEMA_VERSION, "layers": {"fc": {"bits": 4, "prune": 1}}}, "unknown field"),
        ({"schema_version": SCHEMA_VERSION, "layers": {"fc": 4}}, r"layers\['fc'\]"),
        ({"schema_version": SCHEMA_VERSION, "layers": {"fc": None}}, r"layers\['fc'\]"),
        ({"schema_version": SCHEMA_VERSION, "layers": {}, "alpha": 2}, "alpha"),
        ([1, 2], "mapping"),
    ],
)
def test_from_dict_rejects_malformed_data(data, match):
    with pytest.raises(PlanError, match=match):
        CompressionPlan.from_dict(data)


@pytest.mark.parametrize("text", ["not json", "", None, "[1]", '{"schema_version": 1, "layers": {"x": "y"}}'])
def test_from_json_rejects_garbage_with_plan_error(text):
    with pytest.raises(PlanError):
        CompressionPlan.from_json(text)


def test_active_drops_identity_layers():
    plan = CompressionPlan({"a": LayerPlan(), "b": LayerPlan(bits=8)})
    assert list(plan.active) == ["b"]


def test_uniform_covers_every_compressible_layer():
    model = EveryKind()
    plan = CompressionPlan.uniform(model, sparsity=0.5, bits=4, temperature=3.0, alpha=0.7)
    found = ct.discover(model)
    assert list(plan.layers) == list(found.layers)  # one entry per tied weight, not per alias
    assert "head" not in plan.layers and "emb" in plan.layers
    assert all(lp == LayerPlan(sparsity=0.5, bits=4) for lp in plan.layers.values())
    assert (plan.temperature, plan.alpha) == (3.0, 0.7)
    ct.apply(model, plan)


def test_uniform_rank_fraction_only_where_it_saves_storage_and_never_on_refused_layers():
    model = EveryKind()
    found = ct.discover(model)
    plan = CompressionPlan.uniform(model, rank_fraction=0.25)
    for name, lp in plan.layers.items():
        info = found.layers[name]
        if lp.rank is None:
            assert "lowrank" in info.refused or round(0.25 * info.max_rank) * (info.rows + info.cols) >= info.numel
        else:
            assert lp.rank * (info.rows + info.cols) < info.numel and lp.rank <= info.max_rank
    assert plan.layers["dw"].rank is None  # depthwise: refused
    assert plan.layers["enc.linear1"].rank == 8  # 64 x 32 matrix, full rank 32
    with pytest.raises(PlanError, match="rank_fraction"):
        CompressionPlan.uniform(model, rank_fraction=0.0)
    with pytest.raises(PlanError, match="rank_fraction"):
        CompressionPlan.uniform(model, rank_fraction=1.5)


def test_uniform_structured_falls_back_to_unstructured_where_refused():
    model = SmallCNN()
    plan = CompressionPlan.uniform(model, sparsity=0.5, structured=True)
    assert [(lp.structured, lp.sparsity) for lp in plan.layers.values()] == [(0.5, 0.0)] * 3 + [(0.0, 0.5)]  # fc2: output
    ct.apply(model, plan)
    both = CompressionPlan.uniform(model, sparsity=0.3, structured=0.5)  # schema 2: channels, then weights
    assert [(lp.structured, lp.sparsity) for lp in both.layers.values()] == [(0.5, 0.3)] * 3 + [(0.0, 0.3)]
    ct.apply(model, both)


def test_uniform_ranks_fit_the_shapes_left_by_structured_pruning():
    model = SmallCNN()
    plan = CompressionPlan.uniform(model, sparsity=0.7, structured=True, rank_fraction=0.5)
    found = ct.discover(model)
    shapes = effective_shapes(found, dict(plan.layers))
    for name, lp in plan.layers.items():
        if lp.rank is not None:
            assert lp.rank <= min(shapes[name])
    ct.apply(model, plan)  # must not be refused


def test_uniform_layers_subset_and_unknown_names():
    model = TiedLM()
    plan = CompressionPlan.uniform(model, bits=8, layers=["mid"])
    assert list(plan.layers) == ["mid"]
    assert CompressionPlan.uniform(model, bits=4, layers=["out", "emb"]).layers == {"emb": LayerPlan(bits=4)}
    with pytest.raises(PlanError, match="'mdi'.*Did you mean 'mid'"):
        CompressionPlan.uniform(model, bits=8, layers=["mdi"])


def test_allowed_bits_are_exactly_two_to_eight_and_float():
    assert ALLOWED_BITS == (2, 3, 4, 5, 6, 7, 8, 16, 32)
