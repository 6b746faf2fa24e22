"""The layer kinds beyond Linear/Conv2d: LSTM, GRU, transposed and 3-D convolutions,
each through the whole core round trip, plus the properties specific to each kind."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import compresstune as ct
from compresstune.errors import PlanError
from compresstune.factored import FactoredConv
from compresstune.ops import fake_quantize
from compresstune.ops.layout import from_rows, to_rows
from compresstune.plan import CompressionPlan, LayerPlan
from tests._roundtrip import check_round_trip, mixed_plan, outputs


class LSTMLanguageModel(nn.Module):
    def __init__(self, vocab: int = 300, hidden: int = 32, layers: int = 2) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, hidden)
        self.rnn = nn.LSTM(hidden, hidden, layers, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, tokens):
        return self.out(self.rnn(self.emb(tokens))[0])


class GRUClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(12, 24, 2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(48, 5)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


class Autoencoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
                                    nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
        self.decode = nn.Sequential(nn.ConvTranspose2d(32, 16, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
                                    nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1, groups=2),
                                    nn.ReLU(), nn.ConvTranspose1d(8, 3, 1))

    def forward(self, x):
        h = self.decode[:4](self.encode(x))
        n, c, hh, ww = h.shape
        return self.decode[4](h.flatten(2)).reshape(n, 3, hh, ww)


class VideoNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv3d(3, 16, 3, padding=1), nn.BatchNorm3d(16), nn.ReLU(),
                                      nn.Conv3d(16, 16, 3, padding=1, groups=4), nn.ReLU(),
                                      nn.Conv3d(16, 24, (1, 3, 3)), nn.ReLU(), nn.AdaptiveAvgPool3d(1))
        self.head = nn.Linear(24, 4)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


torch.manual_seed(0)
TOKENS = torch.randint(0, 300, (2, 9))
SEQ = torch.randn(3, 6, 12)
IMG = torch.randn(2, 3, 16, 16)
CLIP = torch.randn(2, 3, 4, 8, 8)
MODELS = {
    "lstm_lm": (LSTMLanguageModel, TOKENS),
    "gru_classifier": (GRUClassifier, SEQ),
    "autoencoder": (Autoencoder, IMG),
    "video": (VideoNet, CLIP),
}


@pytest.mark.parametrize("plan_kind", ["uniform", "mixed"])
@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip(name, plan_kind, tmp_path):
    factory, x = MODELS[name]
    torch.manual_seed(1)
    model = factory()
    plan = (CompressionPlan.uniform(model, sparsity=0.5, bits=4) if plan_kind == "uniform" else mixed_plan(model))
    ratio = check_round_trip(model, plan, lambda m: m(x), tmp_path / "m.ctz", export_args=(x,))
    assert ratio > (4 if plan_kind == "uniform" else 2)


def test_every_weight_is_discovered_with_its_kind():
    kinds = {name: info.kind for name, info in ct.discover(Autoencoder()).layers.items()}
    assert kinds == {"encode.0": "conv2d", "encode.2": "conv2d", "decode.0": "conv_transpose2d",
                     "decode.2": "conv_transpose2d", "decode.4": "conv_transpose1d"}
    video = ct.discover(VideoNet())
    assert [i.kind for i in video.layers.values()] == ["conv3d", "conv3d", "conv3d", "linear"]
    assert "groups=4" in video.layers["features.3"].refused["lowrank"]
    gru = ct.discover(GRUClassifier()).layers["rnn"]
    assert gru.kind == "gru" and gru.param_names == ("weight_ih_l0", "weight_hh_l0", "weight_ih_l0_reverse",
                                                     "weight_hh_l0_reverse", "weight_ih_l1", "weight_hh_l1",
                                                     "weight_ih_l1_reverse", "weight_hh_l1_reverse")
    assert gru.numel == sum(getattr(GRUClassifier().rnn, n).numel() for n in gru.param_names)
    assert "gates" in gru.refused["structured"] and gru.max_rank == 12


def test_lstm_language_model_compresses_7x_at_4_bits():
    torch.manual_seed(0)
    model = LSTMLanguageModel(vocab=8000, hidden=256, layers=2)
    small = ct.apply(model, CompressionPlan.uniform(model, bits=4))
    ratio = ct.reference_size(model) / ct.packed_size(small)
    assert ratio >= 7.0, ratio


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_recurrent_forward_uses_the_compressed_weights(cls):
    torch.manual_seed(0)
    rnn = cls(6, 5, 2, bidirectional=True)
    small = ct.apply(rnn, CompressionPlan({"": LayerPlan(sparsity=0.5, bits=3)}))
    small.flatten_parameters()  # a no-op on CPU; it must not bring the float weights back
    manual = cls(6, 5, 2, bidirectional=True)
    with torch.no_grad():
        for name in rnn._flat_weights_names:
            getattr(manual, name).copy_(getattr(small, name))  # the compressed weights, computed by hand
    x = torch.randn(4, 3, 6)
    assert torch.equal(outputs(small, lambda m: m(x)[0]), outputs(manual, lambda m: m(x)[0]))
    assert not torch.allclose(outputs(small, lambda m: m(x)[0]), outputs(rnn, lambda m: m(x)[0]), atol=1e-3)
    for name in rnn._flat_weights_names:
        par = small.parametrizations[name][0] if name.startswith("weight") else None
        if par is not None:  # every matrix: 3-bit codes per output row, half of it zero
            weight = getattr(small, name)
            assert par.bits == 3 and int((weight == 0).sum()) >= weight.numel() // 2
        else:
            assert not ct.compress.parametrize.is_parametrized(small, name)  # biases stay float
    plain = ct.squash(small)
    assert type(plain) is cls and isinstance(plain.weight_ih_l0, nn.Parameter)
    assert torch.equal(outputs(plain, lambda m: m(x)[0]), outputs(small, lambda m: m(x)[0]))


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_recurrent_model_squashes_and_copies_after_a_training_step(cls):
    torch.manual_seed(0)
    rnn = cls(6, 5, 2)
    small = ct.apply(rnn, CompressionPlan({"": LayerPlan(sparsity=0.5, bits=4)}))
    x = torch.randn(4, 3, 6)
    small(x)[0].sum().backward()  # the cached flat weights are now non-leaf tensors
    plain = ct.squash(small)
    again = ct.apply(small, CompressionPlan({}))
    assert torch.equal(outputs(plain, lambda m: m(x)[0]), outputs(small, lambda m: m(x)[0]))
    assert torch.equal(outputs(again, lambda m: m(x)[0]), outputs(small, lambda m: m(x)[0]))
    small.zero_grad()
    small(x)[0].sum().backward()  # the original still trains through its parametrizations
    assert small.parametrizations["weight_hh_l1"].original.grad.abs().sum() > 0


def test_recurrent_rank_is_checked_against_the_smallest_matrix():
    with pytest.raises(PlanError, match=r"`rank` of layer 'rnn' must be at most 12 .*weight_ih_l0 72 x 12"):
        ct.apply(GRUClassifier(), CompressionPlan({"rnn": LayerPlan(rank=13)}))
    small = ct.apply(GRUClassifier(), CompressionPlan({"rnn": LayerPlan(rank=12)}))
    ranks = {n: small.rnn.parametrizations[n][0].rank for n in ("weight_ih_l0", "weight_hh_l0", "weight_ih_l1")}
    assert ranks == {"weight_ih_l0": None, "weight_hh_l0": 12, "weight_ih_l1": 12}  # 72x12 at rank 12 saves nothing


def test_transposed_conv_quantizes_per_output_channel():
    torch.manual_seed(0)
    tconv = nn.ConvTranspose2d(4, 6, 3, groups=2)
    with torch.no_grad():
        tconv.weight[:, 1] *= 100  # output channels 1 and 4 (column 1 of each group) are large
    small = ct.apply(tconv, CompressionPlan({"": LayerPlan(bits=4)}))
    rows = to_rows(tconv.weight.detach(), out_axis=1, groups=2)
    assert rows.shape == (6, 2, 3, 3)
    expected = from_rows(fake_quantize(rows, 4), out_axis=1, groups=2)
    assert torch.equal(small.weight, expected)
    # the small output channels keep their own scale: not rounded to zero by the large ones
    small_rows = to_rows(small.weight.detach(), out_axis=1, groups=2)
    assert (small_rows[[0, 2, 3, 5]] != 0).float().mean() > 0.8


def test_squash_keeps_transposed_conv_weight_and_output_size():
    torch.manual_seed(0)
    tconv = nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1)
    small = ct.apply(tconv, CompressionPlan({"": LayerPlan(rank=3, bits=8)}))
    plain = ct.squash(small)
    assert isinstance(plain, FactoredConv) and plain.weight.shape == (8, 6, 3, 3)
    assert torch.allclose(plain.weight, small.weight, atol=1e-6)
    x = torch.randn(1, 8, 5, 5)
    assert plain(x, output_size=[10, 10]).shape == (1, 6, 10, 10)
    assert torch.allclose(outputs(plain, lambda m: m(x, [10, 10])), outputs(small, lambda m: m(x, [10, 10])),
                          atol=1e-5)


def test_conv3d_structured_pruning_shrinks_batchnorm_and_the_next_conv():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(3, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU(), nn.Conv3d(8, 4, 1))
    small = ct.apply(model, CompressionPlan({"0": LayerPlan(sparsity=0.5, structured=True)}))
    assert small[0].out_channels == small[1].num_features == small[3].in_channels == 4
    assert outputs(small, lambda m: m(CLIP)).shape == (2, 4, 4, 8, 8)


def test_study_types_select_the_new_kinds():
    from compresstune.spaces import Space

    space = Space.from_config({"types": ["lstm", "embedding"]}, LSTMLanguageModel())
    assert space.layers == ["emb", "rnn"]
    assert Space.from_config({"types": ["conv_transpose2d"]}, Autoencoder()).layers == ["decode.0", "decode.2"]
    with pytest.raises(ValueError, match="conv_transpose3d"):
        Space.from_config({"types": ["conv_transpose3d"]}, Autoencoder())
