"""Structured pruning on the CNN families of issue 15: residual sums (1x1 downsample and option-A
pad shortcuts), inverted residuals with depthwise convs and BN-with-activation subclasses,
DenseNet concats and ConvNeXt layer scales.

Each model: the expected groups and refusals; pruning every group shrinks the shapes; zeroing
exactly the channels the pruning removes (in every member) leaves the original model's output
unchanged, which proves the same positions went out everywhere; squash gives a plain module with
the same outputs that torch.export takes; one fine-tuning step runs.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import compresstune as ct
from compresstune.errors import PlanError
from compresstune.plan import CompressionPlan, LayerPlan

import torch.nn.functional as F


# -- the models, written the way their reference code writes them ------------------------------------------

class BasicBlock(nn.Module):
    """torchvision's ResNet basic block: a 1x1 conv + BN shortcut when the shape changes."""

    def __init__(self, inp: int, out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inp, out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out)
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or inp != out:
            self.downsample = nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return F.relu(out)


class TinyResNet(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = BasicBlock(8, 8)
        self.layer2 = BasicBlock(8, 16, stride=2)
        self.layer3 = BasicBlock(16, 16)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class LambdaLayer(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class OptionABlock(nn.Module):
    """The CIFAR ResNet block of He et al. (option A): the shortcut subsamples and zero-pads channels."""

    def __init__(self, inp: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inp, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or inp != planes:
            pad = planes // 4
            self.shortcut = LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad), "constant", 0))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class OptionAResNet(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(OptionABlock(8, 8), OptionABlock(8, 8))
        self.layer2 = nn.Sequential(OptionABlock(8, 16, 2), OptionABlock(16, 16))
        self.linear = nn.Linear(16, classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer2(self.layer1(out))
        out = F.avg_pool2d(out, out.size()[3])
        return self.linear(out.view(out.size(0), -1))


class BNAct(nn.BatchNorm2d):
    """BatchNorm with its activation, as MobileNet/EfficientNet code bases write it."""

    def forward(self, x):
        return F.relu6(super().forward(x))


class InvertedResidual(nn.Module):
    """MobileNetV2: 1x1 expand -> BN+act -> 3x3 depthwise -> BN+act -> 1x1 project -> BN (+ input)."""

    def __init__(self, inp: int, out: int, expand: int = 4, stride: int = 1) -> None:
        super().__init__()
        hidden = inp * expand
        self.use_res = stride == 1 and inp == out
        self.expand = nn.Conv2d(inp, hidden, 1, bias=False)
        self.bn1 = BNAct(hidden)
        self.dw = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.bn2 = BNAct(hidden)
        self.project = nn.Conv2d(hidden, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)

    def forward(self, x):
        out = self.bn3(self.project(self.bn2(self.dw(self.bn1(self.expand(x))))))
        return x + out if self.use_res else out


class TinyMobileNet(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), BNAct(8))
        self.blocks = nn.Sequential(InvertedResidual(8, 8), InvertedResidual(8, 12, stride=2), InvertedResidual(12, 12))
        self.head = nn.Conv2d(12, 32, 1)
        self.classifier = nn.Linear(32, classes)

    def forward(self, x):
        x = F.relu(self.head(self.blocks(self.stem(x))))
        return self.classifier(x.mean([2, 3]))


class DenseLayer(nn.Module):
    def __init__(self, inp: int, growth: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(inp)
        self.conv = nn.Conv2d(inp, growth, 3, 1, 1, bias=False)

    def forward(self, x):
        return torch.cat([x, self.conv(F.relu(self.norm(x)))], 1)


class TinyDenseNet(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.block = nn.Sequential(DenseLayer(8, 6), DenseLayer(14, 6), DenseLayer(20, 6))
        self.norm = nn.BatchNorm2d(26)
        self.transition = nn.Conv2d(26, 12, 1, bias=False)
        self.fc = nn.Linear(12, classes)

    def forward(self, x):
        x = self.transition(F.relu(self.norm(self.block(self.stem(x)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ConvNeXtBlock(nn.Module):
    """ConvNeXt: 7x7 depthwise -> channels last -> LayerNorm -> MLP -> layer scale -> back -> + input."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, x):
        h = self.dwconv(x).permute(0, 2, 3, 1)
        h = self.pwconv2(self.act(self.pwconv1(self.norm(h))))
        h = self.gamma * h
        return x + h.permute(0, 3, 1, 2)


class TinyConvNeXt(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 2, 2)
        self.blocks = nn.Sequential(ConvNeXtBlock(16), ConvNeXtBlock(16))
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(self.norm(x.mean([-2, -1])))


# -- helpers ---------------------------------------------------------------------------------------------

def warmed(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so a wrong kept index would show; eval mode."""
    torch.manual_seed(0)
    with torch.no_grad():
        model.train()
        model(torch.randn(16, 3, 16, 16))
    return model.eval()


def roles(found, layer: str) -> set[tuple[str, str]]:
    return {(m.name, m.role) for m in found.group_of(layer).members}


def zero_removed(model: nn.Module, found, fraction: float, groups) -> None:
    """Zero, in place, every channel pruning ``groups`` by ``fraction`` removes: the producing rows
    (and biases) and their norm / scale entries, so the channels carry exact zeros."""
    modules = dict(model.named_modules())
    for name in groups:
        group = found.channel_groups[name]
        drop = []
        for (start, length), kept in zip(group.regions(), group.kept_per_region(fraction)):
            drop += list(range(start, start + length - kept))  # the first ones of each region
        drop = set(drop)
        keep = torch.tensor([p for p in range(group.size) if p not in drop])
        with torch.no_grad():
            for member in group.members:
                gone = group.removed(member, keep)
                if member.role in ("layer", "depthwise"):
                    modules[member.name].weight[gone] = 0
                    if modules[member.name].bias is not None:
                        modules[member.name].bias[gone] = 0
                elif member.role == "norm":
                    modules[member.name].weight[gone] = 0
                    modules[member.name].bias[gone] = 0
                elif member.role == "param":
                    owner, _, attr = member.name.rpartition(".")
                    getattr(model.get_submodule(owner), attr).index_fill_(member.dim, torch.tensor(gone), 0.0)


def check_prunes_squashes_exports_and_trains(model: nn.Module, groups, fraction: float = 0.5):
    model = warmed(model)
    found = ct.discover(model)
    zero_removed(model, found, fraction, groups)
    plan = CompressionPlan({g: LayerPlan(structured=fraction) for g in groups})
    small = ct.apply(model, plan).eval()
    x = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        reference = model(x)
        torch.testing.assert_close(small(x), reference, rtol=1e-4, atol=1e-5)  # only zero channels went
    before = {n: p.shape for n, p in model.named_parameters()}
    plain = ct.squash(small).eval()
    after = {n: p.shape for n, p in plain.named_parameters()}
    assert sum(p.numel() for p in plain.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(plain(x), small(x))
    exported = torch.export.export(plain, (x,))
    torch.testing.assert_close(exported.module()(x), plain(x))
    small.train()
    opt = torch.optim.SGD(small.parameters(), lr=0.01)
    loss = nn.functional.cross_entropy(small(x), torch.tensor([0, 1, 2, 3, 4, 0]))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and all(p.grad is not None for p in small.parameters() if p.requires_grad)
    return found, before, after


def test_resnet_downsample_shortcut_couples_the_block_outputs():
    found = ct.discover(TinyResNet())
    stream = found.group_of("layer2.conv2")
    assert stream.layers == ("layer2.conv2", "layer2.downsample.0", "layer3.conv2")  # the stage-2 sums, model order
    assert found.group_of("conv1").layers == ("conv1", "layer1.conv2")  # stem + identity shortcut
    assert {("layer2.downsample.1", "norm"), ("layer2.bn2", "norm"), ("layer3.bn2", "norm"), ("fc", "reader"),
            ("layer3.conv1", "reader")} <= roles(found, "layer3.conv2")
    assert "model output" in found.layers["fc"].refused["structured"]
    _, before, after = check_prunes_squashes_exports_and_trains(TinyResNet(), list(found.channel_groups))
    assert before["layer2.conv2.weight"] == (16, 16, 3, 3) and after["layer2.conv2.weight"] == (8, 8, 3, 3)
    assert after["fc.weight"] == (5, 8) and after["layer2.downsample.1.weight"] == (8,)


def test_option_a_pad_maps_the_shortcut_channels_with_an_offset():
    found = ct.discover(OptionAResNet())
    stream = found.group_of("conv1")
    assert stream.layers == ("conv1", "layer1.0.conv2", "layer1.1.conv2", "layer2.0.conv2", "layer2.1.conv2")
    assert stream.size == 16 and stream.regions() == [(0, 4), (4, 8), (12, 4)]  # stage 1 sits at offset 4
    assert len(stream.pads) == 1
    found, _, after = check_prunes_squashes_exports_and_trains(OptionAResNet(), list(found.channel_groups))
    assert after["conv1.weight"][0] == 4 and after["layer2.0.conv2.weight"][0] == 8  # 2 + 4 + 2 kept
    small = ct.apply(warmed(OptionAResNet()), CompressionPlan({"conv1": LayerPlan(structured=0.5)}))
    pad = next(n for n in small.graph.nodes if n.name == stream.pads[0].node)
    assert pad.args[1] == (0, 0, 0, 0, 2, 2)  # the pad widths follow the kept zero channels


def test_inverted_residual_depthwise_follows_its_input():
    found = ct.discover(TinyMobileNet())
    assert found.group_of("blocks.0.expand").layers == ("blocks.0.expand", "blocks.0.dw")
    assert {("blocks.0.bn1", "norm"), ("blocks.0.dw", "depthwise"), ("blocks.0.bn2", "norm"),
            ("blocks.0.project", "reader")} == roles(found, "blocks.0.dw") - {("blocks.0.expand", "layer")}
    assert found.group_of("stem.0").layers == ("stem.0", "blocks.0.project")  # the residual sum of block 0
    assert "model output" in found.layers["classifier"].refused["structured"]
    _, _, after = check_prunes_squashes_exports_and_trains(TinyMobileNet(), list(found.channel_groups))
    assert after["blocks.0.dw.weight"] == (16, 1, 3, 3) and after["blocks.0.bn1.weight"] == (16,)


def test_densenet_concat_maps_channel_ranges():
    found = ct.discover(TinyDenseNet())
    assert [g for g in found.channel_groups] == ["stem", "block.0.conv", "block.1.conv", "block.2.conv", "transition"]
    norm = next(m for m in found.group_of("block.1.conv").members if m.name == "norm")
    assert [(s.position, s.length) for s in norm.segments] == [(14, 6)]  # the last BN sees it at channels 14-19
    _, _, after = check_prunes_squashes_exports_and_trains(TinyDenseNet(), list(found.channel_groups))
    assert after["transition.weight"] == (6, 13, 1, 1) and after["norm.weight"] == (13,)  # 4 + 3 + 3 + 3


def test_convnext_layer_scale_and_channels_last_norm_shrink():
    found = ct.discover(TinyConvNeXt())
    stream = found.group_of("stem")
    assert set(stream.layers) == {"stem", "blocks.0.dwconv", "blocks.0.pwconv2", "blocks.1.dwconv", "blocks.1.pwconv2"}
    assert {("blocks.0.gamma", "param"), ("blocks.0.norm", "norm"), ("norm", "norm"), ("head", "reader")} \
        <= roles(found, "stem")
    # LayerNorm statistics change when channels go, so the zero-channel check prunes the MLP groups only.
    check_prunes_squashes_exports_and_trains(TinyConvNeXt(), ["blocks.0.pwconv1", "blocks.1.pwconv1"])
    small = ct.squash(ct.apply(warmed(TinyConvNeXt()), CompressionPlan({"stem": LayerPlan(structured=0.25)})))
    assert small.blocks[0].gamma.shape == (12,) and small.blocks[0].norm.normalized_shape == (12,)
    assert small.head.weight.shape == (5, 12)
    torch.export.export(small.eval(), (torch.randn(2, 3, 16, 16),))


def test_members_of_one_group_asking_different_fractions_is_an_error_naming_both():
    model = TinyResNet()
    plan = CompressionPlan({"layer2.conv2": LayerPlan(structured=0.5), "layer3.conv2": LayerPlan(structured=0.25)})
    with pytest.raises(PlanError, match=r"'layer2.conv2' \(structured=0.5\) and 'layer3.conv2' \(structured=0.25\)"):
        ct.apply(model, plan)
    same = CompressionPlan({"layer2.conv2": LayerPlan(structured=0.5), "layer3.conv2": LayerPlan(structured=0.5)})
    assert ct.squash(ct.apply(model, same)).layer2.downsample[0].weight.shape[0] == 8  # one request shrinks all


def test_structured_and_unstructured_combine_and_schema_1_reads():
    model = warmed(TinyResNet())
    plan = CompressionPlan({"layer1.conv1": LayerPlan(structured=0.5, sparsity=0.5, bits=8)})
    plain = ct.squash(ct.apply(model, plan))
    w = plain.layer1.conv1.weight
    assert w.shape[0] == 4 and (w == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
    old = {"schema_version": 1, "layers": {"layer1.conv1": {"sparsity": 0.5, "bits": 32, "rank": None,
                                                            "structured": True}}}
    assert CompressionPlan.from_dict(old).layers["layer1.conv1"] == LayerPlan(structured=0.5)
    assert CompressionPlan.from_dict(plan.to_dict()) == plan and plan.to_dict()["schema_version"] == 2


@pytest.mark.parametrize(
    "forward, reason",
    [
        (lambda self, x: self.b(self.a(x).reshape(x.size(0), 4, -1, 1)), "its channels feed the tensor method 'reshape'"),
        (lambda self, x: self.b(self.a(x)[:, :2]), "indexing of the channel dim"),
        (lambda self, x: self.b(self.a(x).mean(1, keepdim=True).expand(-1, 4, -1, -1)), "reduction over the channel dim"),
        (lambda self, x: self.b(torch.nn.functional.pad(self.a(x), (0, 0, 0, 0, 1, 1), "reflect")), "'reflect' pad"),
    ],
    ids=["view-mixing-channels", "channel-slice", "channel-mean", "reflect-pad"],
)
def test_ops_that_mix_or_cut_channels_refuse_the_group(forward, reason):
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

    Net.forward = forward
    assert reason in ct.discover(Net()).layers["a"].refused["structured"]


def test_resnet_group_importance_is_one_set_of_indices():
    model = warmed(TinyResNet())
    found = ct.discover(model)
    group = found.group_of("layer2.conv2")
    modules = dict(model.named_modules())
    weights = {m.name: modules[m.name].weight for m in group.members if m.role == "layer"}
    keep = group.keep(0.5, group.importance(weights))
    plain = ct.squash(ct.apply(model, CompressionPlan({"layer2.conv2": LayerPlan(structured=0.5)})))
    for name in ("layer2.conv2", "layer3.conv2", "layer2.downsample.0"):  # same rows kept in every member
        torch.testing.assert_close(plain.get_submodule(name).weight, modules[name].weight[keep])
    torch.testing.assert_close(plain.layer3.conv1.weight, modules["layer3.conv1"].weight[:, keep])  # and read


@pytest.mark.parametrize("cls", [OptionAResNet, TinyConvNeXt, TinyDenseNet], ids=lambda c: c.__name__)
def test_saved_artifact_loads_back_into_a_fresh_model(tmp_path, cls):
    model = warmed(cls())
    found = ct.discover(model)
    small = ct.apply(model, CompressionPlan({g: LayerPlan(structured=0.5, bits=4) for g in found.channel_groups}))
    path = tmp_path / "small.ctz"
    assert ct.save(small, path) == path.stat().st_size
    back = ct.load(path, into=cls()).eval()  # fresh weights: the shapes follow from the plan alone
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(back(x), small.eval()(x))


def test_option_a_pruned_model_exports_to_onnx(tmp_path):
    pytest.importorskip("onnxruntime")
    model = warmed(OptionAResNet())
    small = ct.apply(model, CompressionPlan.uniform(model, structured=0.5, bits=8))
    result = ct.export_onnx(small, torch.randn(2, 3, 16, 16), tmp_path / "small.onnx")  # checks it in ONNX Runtime
    assert (tmp_path / "small.onnx").stat().st_size > 0 and result is not None


def test_space_gives_each_channel_group_one_structured_knob():
    import optuna

    from compresstune.spaces import Space

    model = TinyResNet()
    space = Space.from_config({"sparsity": {"low": 0.0, "high": 0.6}, "bits": [8, 32], "rank_fraction": None,
                               "structured": [False, True]}, model)
    knobs = [n.split(":")[0] for n in space.param_names if n.endswith(":structured")]
    assert knobs == ["conv1", "layer1.conv1", "layer2.conv1", "layer2.conv2", "layer3.conv1"]  # leaders only
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_structured = False
    for _ in range(12):
        trial = study.ask()
        plan = space.suggest(trial)
        stream = [plan.layers[n].structured for n in ("layer2.downsample.0", "layer2.conv2", "layer3.conv2")]
        assert len(set(stream)) == 1  # one fraction for the whole residual stream of stage 2
        if trial.params["layer2.conv2:structured"]:
            seen_structured = True
            assert stream[0] == pytest.approx(trial.params["layer2.conv2:sparsity"])
        ct.apply(model, plan)  # never a conflict
        study.tell(trial, 0.0)
    assert seen_structured


def test_refusals_name_what_blocks_the_group():
    class SharedBN(nn.Module):  # one BatchNorm used on two tensors
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.bn, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.c(self.bn(self.a(x)) + self.bn(self.b(x)))

    class DepthwiseOverConcat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
            self.dw, self.c = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.c(self.dw(torch.cat([self.a(x), self.b(x)], 1)))

    shared = ct.discover(SharedBN())
    assert "its channels feed 'bn', which is called more than once" in shared.layers["a"].refused["structured"]
    assert "tied (by a residual sum or concat)" in shared.layers["b"].refused["structured"] or \
        "called more than once" in shared.layers["b"].refused["structured"]
    split = ct.discover(DepthwiseOverConcat())
    assert "depthwise convolution 'dw'" in split.layers["a"].refused["structured"]
    assert "structured" in split.layers["dw"].refused
    assert split.layers["c"].refused["structured"] == "its channels are the model output"
