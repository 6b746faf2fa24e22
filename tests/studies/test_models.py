"""Reference architectures: shapes, parameter counts, names, fx tracing, input handling."""

from __future__ import annotations

import pytest
import torch
import torch.fx
from torch import nn

from studies.models import DigitsCNN, LeNet5, LeNet300, TextTransformer


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _uint8(*shape: int) -> torch.Tensor:
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


IMAGE_MODELS = [
    (DigitsCNN, lambda: torch.rand(3, 1, 8, 8)),
    (LeNet300, lambda: _uint8(3, 1, 28, 28)),
    (LeNet5, lambda: _uint8(3, 1, 28, 28)),
]


@pytest.mark.parametrize("cls, make_input", IMAGE_MODELS, ids=lambda v: getattr(v, "__name__", ""))
def test_image_models_output_and_fx_trace(cls, make_input):
    torch.manual_seed(0)
    model = cls().eval()
    x = make_input()
    out = model(x)
    assert out.shape == (3, 10) and out.dtype == torch.float32 and torch.isfinite(out).all()
    traced = torch.fx.symbolic_trace(model)
    assert torch.allclose(traced(x), out, atol=1e-6)


@pytest.mark.parametrize("cls, expected", [(LeNet300, 266_610), (LeNet5, 431_080), (DigitsCNN, 38_282)])
def test_parameter_counts(cls, expected):
    assert _n_params(cls()) == expected


def test_lenet_names():
    assert [n for n, m in LeNet300().named_modules() if isinstance(m, nn.Linear)] == ["fc1", "fc2", "fc3"]
    layers = [n for n, m in LeNet5().named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert layers == ["conv1", "conv2", "fc1", "fc2"]


def test_normalisation_constants_are_not_in_the_state_dict():
    for model in (LeNet300(), LeNet5()):
        assert all(k.endswith(("weight", "bias", "running_mean", "running_var", "num_batches_tracked"))
                   for k in model.state_dict())


def test_uint8_input_is_scaled_like_the_float_equivalent():
    # The model normalises uint8 in-forward: feeding 255 must differ from feeding 1.
    model = LeNet300().eval()
    ones = torch.ones(1, 1, 28, 28, dtype=torch.uint8)
    assert not torch.allclose(model(ones), model(ones * 255))
    first = model.fc1(((ones.float() / 255 - 0.1307) / 0.3081).flatten(1))
    assert torch.allclose(model.fc3(model.fc2(first.relu()).relu()), model(ones), atol=1e-6)


def test_text_transformer_shapes_and_padding_invariance():
    torch.manual_seed(0)
    model = TextTransformer(50, d_model=32, nhead=4, num_layers=2, dim_feedforward=64, max_len=12).eval()
    x = torch.randint(2, 50, (4, 12))
    x[0, 5:] = 0
    out = model(x)
    assert out.shape == (4, 2)
    # trailing padding does not change a sentence's output
    assert torch.allclose(model(x[:1, :5]), out[:1], atol=1e-5)
    assert torch.allclose(model(x[:1, :8]), out[:1], atol=1e-5)


def test_text_transformer_all_padding_row_is_finite():
    model = TextTransformer(20, d_model=16, nhead=2, max_len=8).eval()
    x = torch.zeros(2, 8, dtype=torch.long)
    x[1, :3] = torch.tensor([4, 5, 6])
    assert torch.isfinite(model(x)).all()
    model.train()
    out = model(x)
    out.sum().backward()
    assert torch.isfinite(model.embedding.weight.grad).all()


def test_text_transformer_structure_and_arguments():
    model = TextTransformer(100, d_model=32, nhead=2, num_layers=3, dim_feedforward=48, max_len=10, num_classes=5)
    assert len(model.encoder.layers) == 3
    assert model.embedding.num_embeddings == 100 and model.embedding.padding_idx == 0
    assert model.pos_embedding.shape == (1, 10, 32) and model.head.out_features == 5
    assert model.encoder.layers[0].self_attn.batch_first
    with pytest.raises(ValueError, match="exceeds `max_len`=10"):
        model(torch.ones(1, 11, dtype=torch.long))
    with pytest.raises(ValueError, match="vocab_size"):
        TextTransformer(0)
