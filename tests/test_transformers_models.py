"""transformers models built from tiny configs (nothing is downloaded): every weight
is discovered, plans round-trip, and squash keeps the ``.weight`` they read."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

transformers = pytest.importorskip("transformers")

import compresstune as ct  # noqa: E402
from compresstune.factored import FactoredConv, FactoredEmbedding, FactoredLinear  # noqa: E402
from compresstune.plan import CompressionPlan  # noqa: E402
from tests._roundtrip import check_round_trip, mixed_plan, outputs  # noqa: E402

transformers.logging.set_verbosity_error()

TOKENS = torch.randint(0, 99, (2, 8), generator=torch.Generator().manual_seed(0))
PIXELS = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def gpt2(**kw):
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=99, n_positions=16, **kw)
    return transformers.GPT2LMHeadModel(config).eval()


def bert():
    config = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=16, num_labels=3)
    return transformers.BertForSequenceClassification(config).eval()


def vit():
    config = transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, num_labels=3)
    return transformers.ViTForImageClassification(config).eval()


def t5():
    config = transformers.T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                                   num_heads=2, decoder_start_token_id=0, use_cache=False)
    return transformers.T5ForConditionalGeneration(config).eval()


def llama():
    config = transformers.LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16,
                                      use_cache=False)
    return transformers.LlamaForCausalLM(config).eval()


# name -> (factory, call, export args, export kwargs)
MODELS = {
    "gpt2": (gpt2, lambda m: m(TOKENS, use_cache=False).logits, (TOKENS,), {"use_cache": False}),
    "bert": (bert, lambda m: m(TOKENS).logits, (TOKENS,), {}),
    "vit": (vit, lambda m: m(PIXELS).logits, (PIXELS,), {}),
    "t5": (t5, lambda m: m(input_ids=TOKENS, decoder_input_ids=TOKENS, use_cache=False).logits, (),
           {"input_ids": TOKENS, "decoder_input_ids": TOKENS, "use_cache": False}),
}


@pytest.mark.parametrize("plan_kind", ["uniform", "mixed"])
@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip(name, plan_kind, tmp_path):
    factory, call, args, kwargs = MODELS[name]
    torch.manual_seed(0)
    model = factory()
    found = ct.discover(model)
    weighted = {n for n, m in model.named_modules()
                if type(m).__name__ in ("Linear", "Conv1D", "Conv2d", "Embedding")}
    assert weighted <= set(found.layers) | set(found.alias_of), weighted - set(found.layers)
    norms = {n for n, m in model.named_modules() if "norm" in type(m).__name__.lower() and m.weight is not None}
    assert all(found.skipped[n] == "normalisation layer: kept in float32" for n in norms)
    plan = CompressionPlan.uniform(model, sparsity=0.5, bits=4) if plan_kind == "uniform" else mixed_plan(model)
    ratio = check_round_trip(model, plan, call, tmp_path / "m.ctz", export_args=args, export_kwargs=kwargs)
    assert ratio > (4 if plan_kind == "uniform" else 2)


def test_gpt2_every_conv1d_is_discovered_and_4_bits_compress_7_5x():
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=128, n_head=4)).eval()
    conv1d = {n for n, m in model.named_modules() if type(m).__name__ == "Conv1D"}
    found = ct.discover(model)
    assert len(conv1d) == 8 and conv1d <= set(found.layers)
    assert {found.layers[n].kind for n in conv1d} == {"transposed_linear"}
    assert found.layers["transformer.h.0.mlp.c_fc"].shape == (512, 128)  # output channels first
    assert found.layers["transformer.h.0.mlp.c_fc"].weight_shape == (128, 512)
    small = ct.apply(model, CompressionPlan.uniform(model, bits=4))
    assert ct.reference_size(model) / ct.packed_size(small) >= 7.5
    plain = ct.squash(small)
    x = torch.randint(0, 50257, (1, 6))
    call = lambda m: m(x, use_cache=False).logits  # noqa: E731
    assert torch.allclose(outputs(plain, call), outputs(small, call), rtol=0, atol=1e-5)


def test_gpt2_factored_conv1d_keeps_its_layout():
    model = gpt2()
    small = ct.apply(model, CompressionPlan.uniform(model, bits=8, rank_fraction=0.25))
    plain = ct.squash(small)
    c_fc = plain.transformer.h[0].mlp.c_fc
    assert isinstance(c_fc, FactoredLinear) and c_fc.nf == 128 and c_fc.weight.shape == (32, 128)
    assert torch.allclose(c_fc.weight, small.transformer.h[0].mlp.c_fc.weight, atol=1e-6)


def test_vit_t5_and_llama_squash_with_a_factored_plan_and_keep_weight():
    """ViT reads patch_embeddings.projection.weight.dtype, T5 checks isinstance(wo.weight, Tensor),
    and get_input_embeddings().weight must stay there."""
    torch.manual_seed(0)
    model = vit()
    small = ct.apply(model, CompressionPlan.uniform(model, rank_fraction=0.25, bits=8))
    plain = ct.squash(small).eval()
    projection = plain.vit.embeddings.patch_embeddings.projection
    assert isinstance(projection, FactoredConv) and projection.weight.dtype == torch.float32
    call = MODELS["vit"][1]
    assert torch.allclose(outputs(plain, call), outputs(small, call), atol=1e-5)

    model = t5()
    small = ct.apply(model, CompressionPlan.uniform(model, rank_fraction=0.25, bits=8))
    plain = ct.squash(small).eval()
    wo = plain.encoder.block[0].layer[1].DenseReluDense.wo
    assert isinstance(wo, FactoredLinear) and isinstance(wo.weight, torch.Tensor)
    call = MODELS["t5"][1]
    assert torch.allclose(outputs(plain, call), outputs(small, call), atol=1e-5)
    assert "normalisation" in ct.discover(model).skipped["encoder.final_layer_norm"]

    model = llama()
    found = ct.discover(model)
    assert found.skipped["model.norm"] == "normalisation layer: kept in float32"  # LlamaRMSNorm
    small = ct.apply(model, CompressionPlan.uniform(model, rank_fraction=0.25, bits=8))
    plain = ct.squash(small).eval()
    embeddings = plain.get_input_embeddings()
    assert isinstance(embeddings, FactoredEmbedding) and embeddings.weight.shape == (99, 32)
    call = lambda m: m(TOKENS).logits  # noqa: E731
    assert torch.allclose(outputs(plain, call), outputs(small, call), atol=1e-5)
    exported = torch.export.export(plain, (TOKENS,), strict=False)
    assert torch.allclose(exported.module()(TOKENS).logits, outputs(small, call), atol=1e-5)


def test_hf_resnet_is_analysed_around_what_fx_cannot_trace():
    """HF ResNet checks its input's channel count in the embedder and branches on `return_dict`:
    the walk takes forward's defaults, keeps the embedder opaque, and still prunes the stages."""
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    model = ResNetForImageClassification(ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
                                                      layer_type="basic", num_labels=5)).eval()
    found = ct.discover(model)
    assert "inside ResNetEmbeddings 'resnet.embedder'" in found.layers["resnet.embedder.embedder.convolution"].refused["structured"]
    prunable = [n for n, info in found.layers.items() if info.channel_group is not None]
    assert len(prunable) >= 3 and len(found.channel_groups) >= 2
    plan = CompressionPlan({g: ct.LayerPlan(structured=0.5) for g in found.channel_groups})
    small = ct.apply(model, plan).eval()
    x = torch.randn(2, 3, 32, 32)
    plain = ct.squash(small).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(x).logits, small(x).logits)
    assert sum(p.numel() for p in plain.parameters()) < sum(p.numel() for p in model.parameters())
