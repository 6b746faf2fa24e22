"""Layer discovery: kinds, shapes, tied aliases, skipped modules, refusals, structured-pruning analysis."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import compresstune as ct
from compresstune.errors import PlanError
from tests.conftest import (
    Concat,
    ConvIntoLinearWithoutFlatten,
    EveryKind,
    IntoAttention,
    Residual,
    SharedConsumer,
    SmallCNN,
    TiedLM,
    Untraceable,
)


def test_every_kind_is_found_in_model_order_with_shapes():
    found = ct.discover(EveryKind())
    got = {name: (info.kind, info.shape) for name, info in found.layers.items()}
    assert got == {
        "emb": ("embedding", (50, 16)),
        "c1": ("conv1d", (32, 16, 3)),
        "dw": ("conv1d", (32, 1, 3)),
        "c2": ("conv2d", (8, 1, 3, 3)),
        "c3": ("conv2d", (8, 8, 3, 3)),
        "gc": ("conv2d", (8, 4, 3, 3)),
        "enc.self_attn.in_proj": ("attention", (96, 32)),
        "enc.self_attn.out_proj": ("attention", (32, 32)),
        "enc.linear1": ("linear", (64, 32)),
        "enc.linear2": ("linear", (32, 64)),
        "xattn.q_proj": ("attention", (32, 32)),
        "xattn.k_proj": ("attention", (32, 16)),
        "xattn.v_proj": ("attention", (32, 16)),
        "xattn.out_proj": ("attention", (32, 32)),
        "fc1": ("linear", (24, 32)),
        "fc2": ("linear", (10, 152)),
        "to_vocab": ("linear", (16, 32)),
    }
    assert list(found.layers)[:3] == ["emb", "c1", "dw"]
    info = found.layers["c3"]
    assert (info.rows, info.cols, info.numel, info.max_rank) == (8, 72, 576, 8)
    assert found.layers["enc.self_attn.in_proj"].param_name == "in_proj_weight"
    assert found.layers["xattn.k_proj"].param_name == "k_proj_weight"
    assert found.layers["gc"].groups == 2 and found.layers["dw"].groups == 32


def test_tied_weights_have_one_entry_and_aliases():
    found = ct.discover(TiedLM())
    assert list(found.layers) == ["emb", "mid"]
    assert found.layers["emb"].aliases == ("out",)
    assert found.alias_of == {"out": "emb"}
    assert found.canonical("out") == "emb" and found.canonical("mid") == "mid"
    assert "tied" in found.layers["emb"].refused["structured"]
    found.check_names(["out", "emb"])  # aliases are valid names


def test_a_module_used_twice_is_one_layer():
    lin = nn.Linear(8, 8)
    found = ct.discover(nn.Sequential(lin, nn.ReLU(), lin))
    assert list(found.layers) == ["0"] and found.alias_of == {"2": "0"}


class Odd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.bil = nn.Bilinear(4, 4, 4)
        self.norm = nn.LayerNorm(4)
        self.prelu = nn.PReLU(4)
        self.lazy = nn.LazyLinear(3)
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x):
        h = self.fc(x) * self.scale
        return self.lazy(self.prelu(self.norm(self.bil(h, h))))


def test_unhandled_layers_are_listed_with_the_reason():
    found = ct.discover(Odd())
    assert list(found.layers) == ["fc"]
    assert "Bilinear is not a supported layer kind" in found.skipped["bil"]
    assert "(weight, bias)" in found.skipped["bil"]
    assert found.skipped["norm"] == "normalisation layer: kept in float32"
    assert "PReLU has only a 1-D weight" in found.skipped["prelu"]
    assert "lazy" in found.skipped["lazy"]
    assert "Odd is not a supported layer kind" in found.skipped[""] and "scale" in found.skipped[""]


def test_static_refusals_name_the_reason():
    found = ct.discover(EveryKind())
    assert "grouped convolution (groups=32)" in found.layers["dw"].refused["lowrank"]
    assert "groups=2" in found.layers["gc"].refused["lowrank"]
    assert "tied to 'head'" in found.layers["emb"].refused["structured"]
    assert "tokens" in ct.discover(nn.Sequential(nn.Embedding(5, 3))).layers["0"].refused["structured"]
    assert "attention" in found.layers["enc.self_attn.in_proj"].refused["structured"]
    for name in ("emb", "c1", "c3", "enc.linear1", "enc.self_attn.in_proj", "xattn.v_proj", "fc2"):
        assert "lowrank" not in found.layers[name].refused
        assert "prune" not in found.layers[name].refused and "quantize" not in found.layers[name].refused
    sparse = ct.discover(nn.Sequential(nn.Embedding(10, 4, sparse=True)))
    assert "sparse" in sparse.layers["0"].refused["lowrank"]


def test_check_names_lists_close_matches_and_the_known_layers():
    found = ct.discover(SmallCNN())
    with pytest.raises(PlanError) as info:
        found.check_names(["conv_1"])
    message = str(info.value)
    assert "'conv_1'" in message and "Did you mean" in message and "'conv1'" in message
    assert "Compressible layers: conv1, conv2, fc1, fc2" in message
    with pytest.raises(PlanError, match="not compressed: normalisation"):
        found.check_names(["bn1"])
    with pytest.raises(ValueError, match="torch.nn.Module"):
        ct.discover("not a model")


# -- structured-pruning analysis -----------------------------------------------------------------

def shrinks(found, layer):
    """(member, role) pairs the channel group of ``layer`` shrinks."""
    return [(m.name, m.role) for m in found.group_of(layer).members]


def test_structured_groups_through_bn_pool_and_view_flatten():
    found = ct.discover(SmallCNN())
    assert shrinks(found, "conv1") == [("conv1", "layer"), ("bn1", "norm"), ("conv2", "reader")]
    assert shrinks(found, "conv2") == [("conv2", "layer"), ("fc1", "reader")]  # through pool + x.view(x.size(0), -1)
    assert shrinks(found, "fc1") == [("fc1", "layer"), ("fc2", "reader")]
    assert "model output" in found.layers["fc2"].refused["structured"]


@pytest.mark.parametrize(
    "model, layer, reason",
    [
        (Residual(), "a", "residual sum (add) with a tensor whose channels cannot be pruned"),
        (Residual(), "b", "model output"),
        (Concat(), "c", "model output"),
        (IntoAttention(), "proj", "'attn' (MultiheadAttention)"),
        (Untraceable(), "a", "torch.fx could not trace"),
        (EveryKind(), "enc.linear1", "inside TransformerEncoderLayer 'enc', which torch.fx traces as one opaque call"),
        (ConvIntoLinearWithoutFlatten(), "conv", "acts on the last dim"),
        (SharedConsumer(), "a", "called more than once"),
        (nn.Sequential(nn.Linear(4, 4), nn.MaxPool1d(2), nn.Linear(2, 2)), "0", "MaxPool1d"),
    ],
    ids=["residual-with-input", "residual-output", "concat-output", "attention", "untraceable", "opaque", "conv-linear-dim",
         "shared-consumer", "pool-over-linear-channels"],
)
def test_structured_pruning_is_refused_with_the_reason(model, layer, reason):
    found = ct.discover(model)
    assert reason in found.layers[layer].refused["structured"]


def test_trace_false_refuses_structured_everywhere():
    found = ct.discover(SmallCNN(), trace=False)
    assert all("trace=False" in info.refused["structured"] for info in found.layers.values())


def test_discover_on_transformer_encoder():
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2, enable_nested_tensor=False)
    found = ct.discover(enc)
    assert [n for n in found.layers if n.startswith("layers.1.")] == [
        "layers.1.self_attn.in_proj", "layers.1.self_attn.out_proj", "layers.1.linear1", "layers.1.linear2"]
    assert found.layers["layers.1.self_attn.out_proj"].kind == "attention"
    assert set(found.skipped) == {f"layers.{i}.norm{j}" for i in (0, 1) for j in (1, 2)}


def test_discovery_prints_as_a_table_with_refusals_and_skipped_modules():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, groups=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 6 * 6, 10))
    text = repr(ct.discover(model))
    lines = text.splitlines()
    assert lines[0] == "Discovery of 2 layers"
    assert lines[1].split() == ["layer", "kind", "shape", "operators", "group", "refused"]
    assert lines[2].split()[:3] == ["0", "conv2d", "8x3x3x3"] and lines[2].split()[-2:] == ["0", "-"]
    assert lines[3].startswith("4 ") and "structured: its channels are the model output" in lines[3]
    assert lines[3].split()[3:6] == ["prune", "quantize", "lowrank"]  # no structured: it is refused
    assert "skipped:" in lines and any(line.strip().startswith("1: normalisation layer") for line in lines)
