"""apply / squash: operators as parametrizations, structured pruning, tied weights, validation."""

from __future__ import annotations

import copy
import pickle
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import compresstune as ct
from compresstune.compress import TiedTo, compressed_slots
from compresstune.errors import PlanError
from compresstune.factored import FactoredConv, FactoredEmbedding, FactoredLinear
from compresstune.ops import CompressedWeight, fake_quantize
from compresstune.plan import CompressionPlan, LayerPlan
from tests.conftest import (
    Concat,
    EveryKind,
    IntoAttention,
    Residual,
    SmallCNN,
    TiedLM,
    Untraceable,
    has_parametrizations,
    mlp,
    run,
)

MIXED = {
    "emb": LayerPlan(sparsity=0.5, bits=4, rank=8),
    "c1": LayerPlan(sparsity=0.3, bits=3, rank=4),
    "dw": LayerPlan(sparsity=0.2, bits=8),
    "c2": LayerPlan(sparsity=0.5, structured=True, bits=6),
    "c3": LayerPlan(sparsity=0.5, bits=2, rank=3),
    "gc": LayerPlan(sparsity=0.4, bits=5),
    "enc.self_attn.in_proj": LayerPlan(sparsity=0.5, bits=4, rank=8),
    "enc.self_attn.out_proj": LayerPlan(bits=16, rank=6),
    "enc.linear1": LayerPlan(sparsity=0.9, bits=5, rank=7),
    "enc.linear2": LayerPlan(sparsity=0.2),
    "xattn.q_proj": LayerPlan(bits=7, rank=5),
    "xattn.k_proj": LayerPlan(sparsity=0.6, bits=4),
    "xattn.out_proj": LayerPlan(bits=3),
    "fc1": LayerPlan(sparsity=0.7, bits=32, rank=5),
    "fc2": LayerPlan(sparsity=0.5, bits=7),
}


def mixed_plan() -> CompressionPlan:
    return CompressionPlan(MIXED, temperature=3.0, alpha=0.25)


def masks_of(model):
    return {f"{n}.{p}": [m.clone() for m in par.masks()] for n, _, p, par in compressed_slots(model)
            if isinstance(par, CompressedWeight)}


def test_apply_returns_a_new_model_and_leaves_the_input_alone():
    model = EveryKind()
    before = copy.deepcopy(model.state_dict())
    small = ct.apply(model, mixed_plan())
    assert small is not model and not has_parametrizations(model)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert ct.plan_of(small) == mixed_plan() and ct.plan_of(model) == CompressionPlan({})


def test_apply_inplace():
    model = mlp()
    out = ct.apply(model, CompressionPlan({"0": LayerPlan(bits=8)}), inplace=True)
    assert out is model and has_parametrizations(model)


def test_operators_are_parametrizations_in_the_order_lowrank_prune_quantize():
    model = mlp()
    w = model[0].weight.detach().clone()
    small = ct.apply(model, CompressionPlan({"0": LayerPlan(sparsity=0.5, bits=4, rank=6)}))
    layer = small[0]
    assert parametrize.is_parametrized(layer, "weight")
    plist = layer.parametrizations.weight
    par = plist[0]
    assert isinstance(par, CompressedWeight) and len(plist) == 1
    a, b = plist.original0, plist.original1
    assert a.shape == (32, 6) and b.shape == (6, 16)
    ma, mb = par.masks()
    assert int((ma == 0).sum()) == 96 and int((mb == 0).sum()) == 48
    expected = fake_quantize(a * ma, 4) @ fake_quantize(b * mb, 4)
    assert torch.equal(layer.weight, expected)
    # the factors start from the truncated SVD of the original weight
    u, s, vh = torch.linalg.svd(w)
    assert torch.allclose(a.detach() @ b.detach(), (u[:, :6] * s[:6]) @ vh[:6], atol=1e-5)


def test_identity_plan_changes_nothing():
    model = EveryKind()
    identity = CompressionPlan({name: LayerPlan() for name in ct.discover(model).layers})
    small = ct.apply(model, identity)
    assert not has_parametrizations(small)
    x = EveryKind.inputs()
    assert torch.equal(run(small, *x), run(model, *x))
    assert ct.plan_of(small).layers == {}


def test_conv2d_is_factored_as_out_by_in_k_k():
    model = nn.Sequential(nn.Conv2d(6, 10, 3, padding=1), nn.ReLU(), nn.Conv1d(10, 4, 5))
    small = ct.apply(model, CompressionPlan({"0": LayerPlan(rank=4, sparsity=0.25, bits=8), "2": LayerPlan(rank=3)}))
    conv = small[0].parametrizations.weight
    assert conv.original0.shape == (10, 4) and conv.original1.shape == (4, 6 * 3 * 3)
    assert small[0].weight.shape == (10, 6, 3, 3)
    assert small[2].parametrizations.weight.original1.shape == (3, 10 * 5)


def test_low_rank_inside_multihead_attention():
    model = EveryKind()
    plan = CompressionPlan({"enc.self_attn.in_proj": LayerPlan(rank=8), "xattn.v_proj": LayerPlan(rank=4),
                            "xattn.out_proj": LayerPlan(rank=4)})
    small = ct.apply(model, plan)
    mha = small.enc.self_attn
    assert mha.parametrizations.in_proj_weight.original0.shape == (96, 8)
    assert mha.parametrizations.in_proj_weight.original1.shape == (8, 32)
    assert small.xattn.parametrizations.v_proj_weight.original1.shape == (4, 16)
    assert torch.linalg.matrix_rank(mha.in_proj_weight.detach()) == 8
    x = EveryKind.inputs()
    small.train()
    small(*x).sum().backward()
    assert mha.parametrizations.in_proj_weight.original0.grad is not None
    run(small, *x)  # eval: the Transformer fast path reads the parametrized weights


def test_fine_tuning_changes_outputs_but_not_masks_or_size():
    small = ct.apply(EveryKind(), mixed_plan())
    x = EveryKind.inputs(seed=1)
    masks = masks_of(small)
    size = ct.packed_size(small)
    y0 = run(small, *x).clone()
    opt = torch.optim.Adam([p for p in small.parameters() if p.requires_grad], lr=1e-2)
    small.train()
    for _ in range(3):
        opt.zero_grad()
        small(*x).pow(2).mean().backward()
        opt.step()
    assert not torch.allclose(run(small, *x), y0)
    after = masks_of(small)
    assert after.keys() == masks.keys()
    assert all(torch.equal(a, b) for k in masks for a, b in zip(masks[k], after[k]))
    assert ct.packed_size(small) == size
    for _, module, pname, par in compressed_slots(small):  # pruned weights stay exactly zero
        if isinstance(par, CompressedWeight) and not par.factored and par.masks()[0].numel():
            assert (getattr(module, pname)[par.masks()[0] == 0] == 0).all()


# -- structured pruning ---------------------------------------------------------------------------


def _channels_removed(before: nn.Module, after: nn.Module, name: str) -> list[int]:
    """Output channels of ``name`` that structured pruning removed (matched by their bias)."""
    old, new = before.get_submodule(name).bias.tolist(), after.get_submodule(name).bias.tolist()
    return [c for c, value in enumerate(old) if value not in new]


def test_structured_pruning_shrinks_the_layer_and_its_consumers():
    model = SmallCNN().eval()
    model.bn1.running_mean.uniform_(-1, 1)
    model.bn1.running_var.uniform_(0.5, 2)
    plan = CompressionPlan({"conv1": LayerPlan(sparsity=0.5, structured=True),
                            "conv2": LayerPlan(sparsity=0.34, structured=True, bits=8),
                            "fc1": LayerPlan(sparsity=0.25, structured=True)})
    small = ct.apply(model, plan).eval()
    assert (small.conv1.out_channels, small.bn1.num_features, small.conv2.in_channels) == (4, 4, 4)
    assert small.bn1.running_mean.shape == (4,) and small.conv1.bias.shape == (4,)
    assert small.conv2.out_channels == 4 and small.fc1.in_features == 4 * 2 * 2
    assert small.fc1.out_features == 9 and small.fc2.in_features == 9
    assert small.conv2.parametrizations.weight.original.shape == (4, 4, 3, 3)
    # Same function as the original with the removed channels' contributions cut at their consumers.
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for c in _channels_removed(model, small, "conv1"):
            ref.conv2.weight[:, c] = 0
        for c in _channels_removed(model, small, "conv2"):
            ref.fc1.weight[:, c * 4:(c + 1) * 4] = 0
        for c in _channels_removed(model, small, "fc1"):
            ref.fc2.weight[:, c] = 0
        ref.conv2.weight.copy_(fake_quantize(ref.conv2.weight, 8))
    x = SmallCNN.inputs()
    assert torch.allclose(run(small, *x), run(ref, *x), atol=1e-5)


class LinearFlatten(nn.Module):
    """A Linear on (N, T, C) then flatten: its channels are interleaved (t * C + c) in the consumer."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(3 * 6, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)).flatten(1))


def test_structured_pruning_of_a_linear_through_flatten_keeps_the_right_columns():
    model = LinearFlatten()
    small = ct.apply(model, CompressionPlan({"a": LayerPlan(sparsity=0.5, structured=True)}))
    assert small.b.in_features == 9
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for c in _channels_removed(model, small, "a"):
            ref.b.weight[:, c::6] = 0
    x = torch.randn(5, 3, 4)
    assert torch.allclose(run(small, x), run(ref, x), atol=1e-6)


def test_structured_rank_is_checked_against_the_shrunken_shape():
    model = SmallCNN()
    with pytest.raises(PlanError, match=r"`rank` of layer 'conv1' must be at most 2 .*after structured pruning.*got 3"):
        ct.apply(model, CompressionPlan({"conv1": LayerPlan(sparsity=0.75, structured=True, rank=3)}))
    with pytest.raises(PlanError, match=r"`rank` of layer 'conv2' must be at most 6 .*6 x 18.*got 7"):
        ct.apply(model, CompressionPlan({"conv1": LayerPlan(sparsity=0.75, structured=True),
                                         "conv2": LayerPlan(rank=7)}))
    ct.apply(model, CompressionPlan({"conv1": LayerPlan(sparsity=0.75, structured=True), "conv2": LayerPlan(rank=6)}))


@pytest.mark.parametrize(
    "model, layer, reason, x",
    [
        (Residual(), "a", "residual sum", (torch.randn(2, 4, 5, 5),)),
        (Residual(), "b", "model output", (torch.randn(2, 4, 5, 5),)),
        (Concat(), "a", "concat", (torch.randn(2, 4),)),
        (IntoAttention(), "proj", "MultiheadAttention", (torch.randn(2, 3, 8),)),
        (Untraceable(), "a", "torch.fx could not trace", (torch.randn(2, 4),)),
    ],
    ids=["residual", "output", "concat", "attention", "untraceable"],
)
def test_structured_refused_with_reason_but_unstructured_works(model, layer, reason, x):
    with pytest.raises(PlanError, match=f"layer '{layer}'.*cannot take structured: .*{reason}"):
        ct.apply(model, CompressionPlan({layer: LayerPlan(sparsity=0.5, structured=True)}))
    small = ct.apply(model, CompressionPlan({layer: LayerPlan(sparsity=0.5, bits=4)}))
    weight = small.get_submodule(layer).weight
    assert int((weight == 0).sum()) == round(0.5 * weight.numel())
    assert run(small, *x).shape == run(model, *x).shape


@pytest.mark.parametrize(
    "name, lp, message",
    [
        ("dw", LayerPlan(rank=2), "layer 'dw' (conv1d) cannot take lowrank: grouped convolution (groups=32)"),
        ("gc", LayerPlan(sparsity=0.5, structured=True), "layer 'gc' (conv2d) cannot take structured: grouped"),
        ("to_vocab", LayerPlan(sparsity=0.5, structured=True), "cannot take structured: its channels feed 'head', whose weight is tied"),
        ("xattn.k_proj", LayerPlan(sparsity=0.5, structured=True), "cannot take structured: the channels feed an attention block"),
    ],
)
def test_unsupported_operator_layer_pairs_are_refused(name, lp, message):
    with pytest.raises(PlanError) as info:
        ct.apply(EveryKind(), CompressionPlan({name: lp}))
    assert message in str(info.value)


# -- validation before compute -----------------------------------------------------------------------


def test_bad_plans_fail_before_any_compute(monkeypatch):
    calls = []
    import compresstune.ops.parametrization as p
    monkeypatch.setattr(p, "svd_factors", lambda *a: calls.append(a))
    monkeypatch.setattr(copy, "deepcopy", lambda *a, **k: calls.append(a))
    model = EveryKind()
    plans = {
        "unknown": (CompressionPlan({"fc1": LayerPlan(rank=2), "fc_1": LayerPlan(bits=4)}), ["'fc_1'", "Did you mean", "'fc1'"]),
        "rank": (CompressionPlan({"fc1": LayerPlan(rank=2), "fc2": LayerPlan(rank=11)}),
                 ["`rank` of layer 'fc2'", "at most 10", "10 x 152", "got 11"]),
        "other model": (CompressionPlan.uniform(SmallCNN(), bits=4), ["'conv1'", "not a compressible layer"]),
        "tied conflict": (CompressionPlan({"emb": LayerPlan(bits=4), "head": LayerPlan(bits=8)}), ["'emb'", "'head'", "tied"]),
        "operator": (CompressionPlan({"c1": LayerPlan(rank=2), "dw": LayerPlan(rank=2)}), ["'dw'", "lowrank"]),
    }
    for name, (plan, parts) in plans.items():
        with pytest.raises(PlanError) as info:
            ct.apply(model, plan)
        assert all(part in str(info.value) for part in parts), (name, str(info.value))
    with pytest.raises(PlanError, match="`plan` must be a CompressionPlan; got dict"):
        ct.apply(model, {"fc1": LayerPlan()})
    assert calls == []


# -- tied weights ---------------------------------------------------------------------------------


def test_tied_weight_is_compressed_once_and_stays_tied_through_fine_tuning():
    model = TiedLM()
    small = ct.apply(model, CompressionPlan({"out": LayerPlan(sparsity=0.5, bits=4, rank=6)}))
    assert ct.plan_of(small).layers == {"emb": LayerPlan(sparsity=0.5, bits=4, rank=6)}
    slots = {(n, p): par for n, _, p, par in compressed_slots(small)}
    assert isinstance(slots[("emb", "weight")], CompressedWeight) and isinstance(slots[("out", "weight")], TiedTo)
    assert sum(isinstance(par, CompressedWeight) for par in slots.values()) == 1
    assert torch.equal(small.out.weight, small.emb.weight)
    assert not any(p.numel() == 40 * 12 for p in small.parameters())  # no second full copy of the weight
    x = TiedLM.inputs()
    y0 = run(small, *x).clone()
    opt = torch.optim.SGD(small.parameters(), lr=0.5)
    small.train()
    for _ in range(2):
        opt.zero_grad()
        small(*x).logsumexp(-1).mean().backward()
        opt.step()
    assert not torch.allclose(run(small, *x), y0)
    assert torch.equal(small.out.weight, small.emb.weight)


def test_same_settings_for_both_tied_names_are_accepted():
    small = ct.apply(TiedLM(), CompressionPlan({"emb": LayerPlan(bits=4), "out": LayerPlan(bits=4)}))
    assert torch.equal(small.out.weight, small.emb.weight)


def test_a_module_used_twice_is_compressed_once():
    lin = nn.Linear(8, 8)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    small = ct.apply(model, CompressionPlan({"2": LayerPlan(sparsity=0.5, bits=4, rank=3)}))
    assert small[0] is small[2] and int((small[0].parametrizations.weight[0].mask0 == 0).sum()) == 12
    x = torch.randn(3, 8)
    assert torch.allclose(run(small, x), run(ct.squash(small), x), atol=1e-6)
    plain = ct.squash(small)
    assert plain[0] is plain[2] and isinstance(plain[0], FactoredLinear)


# -- squash ------------------------------------------------------------------------------------


def _no_compresstune_inside(model: nn.Module) -> None:
    """Nothing of compresstune is left but the torch-only classes of compresstune.factored."""
    assert not has_parametrizations(model)
    for module in model.modules():
        assert type(module).__module__ in ("compresstune.factored",) or not type(module).__module__.startswith(
            "compresstune"), type(module)
        assert not type(module).__name__.startswith("Parametrized")
        for value in vars(module).values():
            assert not type(value).__module__.startswith("compresstune"), (type(module), type(value))
    names = set(re.findall(rb"compresstune[\w.]*", pickle.dumps(model)))
    assert names <= {b"compresstune.factored"}, names


def test_squash_splits_low_rank_layers_into_two():
    model = nn.Sequential(nn.Embedding(30, 12), nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 6))
    convs = nn.Sequential(nn.Conv2d(4, 12, 3, stride=2, padding=1, dilation=1), nn.ReLU(), nn.Conv1d(12, 5, 3))
    small = ct.apply(model, CompressionPlan({"0": LayerPlan(rank=4, bits=8), "1": LayerPlan(rank=5, sparsity=0.3),
                                             "3": LayerPlan(rank=2, bits=4)}))
    plain = ct.squash(small)
    assert isinstance(plain[0], FactoredEmbedding) and plain[0].first.weight.shape == (30, 4)
    assert isinstance(plain[1], FactoredLinear)
    assert (plain[1].first.in_features, plain[1].first.out_features, plain[1].second.out_features) == (12, 5, 20)
    assert plain[1].first.bias is None and plain[1].bias is plain[1].second.bias is not None
    # .weight is the product, in the layer's own layout, cached and not in the state dict
    assert plain[1].weight.shape == (20, 12) and plain[0].weight.shape == (30, 12)
    assert torch.allclose(plain[1].weight, small[1].weight, atol=1e-6)
    assert torch.allclose(plain[0].weight, small[0].weight, atol=1e-6)
    assert plain[1].weight is plain[1].weight and "weight" not in "".join(plain[1].state_dict()).replace(".weight", "")
    tok = torch.randint(0, 30, (3, 5))
    assert torch.allclose(run(plain, tok), run(small, tok), atol=1e-5)
    with torch.no_grad():
        plain[1].first.weight.mul_(2)  # a factor changes: the cached product follows
    assert torch.allclose(plain[1].weight, 2 * small[1].weight, atol=1e-5)

    small_c = ct.apply(convs, CompressionPlan({"0": LayerPlan(rank=3, bits=6)}))
    plain_c = ct.squash(small_c)
    first, second = plain_c[0].first, plain_c[0].second
    assert plain_c[0].weight.shape == small_c[0].weight.shape == (12, 4, 3, 3)
    assert torch.allclose(plain_c[0].weight, small_c[0].weight, atol=1e-6)
    assert (first.in_channels, first.out_channels, first.kernel_size, first.stride) == (4, 3, (3, 3), (2, 2))
    assert (second.in_channels, second.out_channels, second.kernel_size) == (3, 12, (1, 1))
    img = torch.randn(2, 4, 9, 9)
    flat = lambda m: nn.Sequential(m[0], m[1], nn.Flatten(2), m[2])  # noqa: E731 - conv2d -> conv1d
    assert torch.allclose(run(flat(plain_c), img), run(flat(small_c), img), atol=1e-5)


def test_squash_every_kind_is_plain_equal_and_exportable():
    small = ct.apply(EveryKind(), mixed_plan())
    x = EveryKind.inputs()
    y = run(small, *x)
    plain = ct.squash(small).eval()
    _no_compresstune_inside(plain)
    assert torch.allclose(run(plain, *x), y, atol=1e-5)
    assert plain.head.weight is plain.emb.weight  # still tied
    assert isinstance(plain.enc.linear1, nn.Linear)  # Transformer layers read .weight: one matrix
    assert isinstance(plain.fc1, FactoredLinear) and isinstance(plain.c3, FactoredConv)
    assert all(isinstance(p, nn.Parameter) for p in (plain.enc.linear1.weight, plain.enc.self_attn.in_proj_weight))
    assert torch.allclose(run(small, *x), y)  # squash leaves the compressed model working
    exported = torch.export.export(plain, x)
    assert torch.allclose(exported.module()(*x), y, atol=1e-5)


def test_squash_inside_transformer_layers_in_eval_fast_path():
    model = nn.Sequential(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0))
    plan = CompressionPlan({"0.linear1": LayerPlan(rank=4), "0.linear2": LayerPlan(rank=4, bits=8),
                            "0.self_attn.out_proj": LayerPlan(rank=4)})
    small = ct.apply(model, plan).eval()
    x = torch.randn(2, 5, 32)
    plain = ct.squash(small).eval()
    with torch.no_grad():
        assert torch.allclose(plain(x), small(x), atol=1e-5)


def test_squash_of_a_single_factored_layer():
    small = ct.apply(nn.Linear(16, 8), CompressionPlan({"": LayerPlan(rank=2, bits=8)}))
    plain = ct.squash(small)
    assert isinstance(plain, FactoredLinear) and plain.weight.shape == (8, 16)
    x = torch.randn(3, 16)
    assert torch.allclose(run(plain, x), run(small, x), atol=1e-6)


def test_squash_of_a_plain_model_is_a_copy():
    model = mlp()
    plain = ct.squash(model)
    assert plain is not model and torch.equal(plain[0].weight, model[0].weight)


SQUASH_MODEL = '''
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.conv = nn.Conv1d(8, 12, 3, padding=1)
        self.fc = nn.Linear(12, 20, bias=False)

    def forward(self, tok):
        h = self.emb(tok)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        h = torch.relu(self.conv(h.transpose(1, 2))).transpose(1, 2)
        return self.fc(h)
'''


def test_squashed_model_loads_without_compresstune(tmp_path, monkeypatch):
    """Without factored layers the pickled squashed model needs no compresstune at all; with
    them, its torch.export program does not either."""
    (tmp_path / "ct_squash_model.py").write_text(SQUASH_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    import ct_squash_model

    try:
        model = ct_squash_model.Net()
        tok = torch.randint(0, 20, (2, 6))
        unfactored = CompressionPlan({"emb": LayerPlan(bits=4), "attn.in_proj": LayerPlan(sparsity=0.5, bits=8, rank=4),
                                      "conv": LayerPlan(sparsity=0.5), "fc": LayerPlan(bits=2)})
        plain = ct.squash(ct.apply(model, unfactored)).eval()
        torch.save({"model": plain, "tok": tok, "y": run(plain, tok)}, tmp_path / "plain.pt")
        factored = CompressionPlan({"emb": LayerPlan(rank=3, bits=4), "attn.in_proj": LayerPlan(sparsity=0.5, bits=8, rank=4),
                                    "conv": LayerPlan(rank=4, sparsity=0.5), "fc": LayerPlan(bits=2)})
        plain_f = ct.squash(ct.apply(model, factored)).eval()
        assert isinstance(plain_f.emb, FactoredEmbedding) and isinstance(plain_f.conv, FactoredConv)
        torch.export.save(torch.export.export(plain_f, (tok,)), tmp_path / "factored.pt2")
        y_f = run(plain_f, tok)
        torch.save({"tok": tok, "y": y_f}, tmp_path / "factored_io.pt")
    finally:
        sys.modules.pop("ct_squash_model", None)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["compresstune"] = None  # importing compresstune now fails
        sys.path.insert(0, {str(tmp_path)!r})
        import torch
        saved = torch.load({str(tmp_path / 'plain.pt')!r}, weights_only=False)
        model = saved["model"].eval()
        with torch.no_grad():
            y = model(saved["tok"])
        assert torch.allclose(y, saved["y"], atol=1e-6)
        program = torch.export.load({str(tmp_path / 'factored.pt2')!r})
        io = torch.load({str(tmp_path / 'factored_io.pt')!r})
        assert torch.allclose(program.module()(io["tok"]), io["y"], atol=1e-5)
        assert not [m for m, v in sys.modules.items() if m.startswith("compresstune") and v is not None]
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
