"""Property-based tests: random small models (stacks of Linear / Conv1d / Conv2d incl. grouped /
Embedding / MultiheadAttention of random sizes) under random valid plans."""

from __future__ import annotations

import os

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import compresstune as ct
from compresstune.artifact import to_bytes
from compresstune.compress import compressed_slots, effective_shapes
from compresstune.ops import CompressedWeight, dequantize, quantize_codes
from compresstune.plan import ALLOWED_BITS, CompressionPlan, LayerPlan
from tests.conftest import has_parametrizations, run

# CT_PROPERTY_EXAMPLES raises the example count for a longer local hunt.
EXAMPLES = int(os.environ.get("CT_PROPERTY_EXAMPLES", "20"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class RandomNet(nn.Module):
    """A sequence branch (Embedding or float input, then Linear / Conv1d / MHA blocks) and an
    image branch (Conv2d blocks), concatenated into a Linear head."""

    def __init__(self, spec: dict) -> None:
        super().__init__()
        self.spec = spec
        d = spec["d0"]
        self.emb = nn.Embedding(spec["vocab"], d) if spec["use_emb"] else None
        self.seq = nn.ModuleList()
        for kind, *args in spec["seq"]:
            if kind == "linear":
                self.seq.append(nn.Linear(d, args[0]))
                d = args[0]
            elif kind == "conv1d":
                out, k, groups = args
                self.seq.append(nn.Conv1d(d, out, k, padding=k // 2, groups=groups))
                d = out
            else:
                self.seq.append(nn.MultiheadAttention(d, args[0], batch_first=True))
        c = spec["img_c"]
        self.img = nn.ModuleList()
        for out, k, groups in spec["img"]:
            self.img.append(nn.Conv2d(c, out, k, padding=k // 2, groups=groups))
            c = out
        self.head = nn.Linear(d + c * spec["hw"] ** 2, spec["n_out"])

    def forward(self, tok, seq, img):
        h = self.emb(tok) if self.emb is not None else seq
        for (kind, *_), layer in zip(self.spec["seq"], self.seq):
            if kind == "linear":
                h = torch.relu(layer(h))
            elif kind == "conv1d":
                h = torch.relu(layer(h.transpose(1, 2))).transpose(1, 2)
            else:
                h = h + layer(h, h, h, need_weights=False)[0]
        g = img
        for layer in self.img:
            g = torch.relu(layer(g))
        return self.head(torch.cat([h.mean(1), g.flatten(1)], 1))

    def inputs(self, seed: int = 0, n: int = 3):
        gen = torch.Generator().manual_seed(seed)
        s = self.spec
        return (torch.randint(0, s["vocab"], (n, s["seq_len"]), generator=gen),
                torch.randn(n, s["seq_len"], s["d0"], generator=gen),
                torch.randn(n, s["img_c"], s["hw"], s["hw"], generator=gen))


def _divisors(n: int) -> list[int]:
    return [g for g in range(1, n + 1) if n % g == 0]


@st.composite
def specs(draw) -> dict:
    dims = st.integers(2, 12)
    d = d0 = draw(dims)
    seq = []
    for kind in draw(st.lists(st.sampled_from(["linear", "conv1d", "mha"]), max_size=3)):
        if kind == "linear":
            d = draw(dims)
            seq.append(("linear", d))
        elif kind == "conv1d":
            groups = draw(st.sampled_from([1, 1, 2, d]))
            groups = groups if d % groups == 0 else 1
            out = groups * draw(st.integers(1, max(1, 12 // groups)))
            seq.append(("conv1d", out, draw(st.sampled_from([1, 3])), groups))
            d = out
        else:
            seq.append(("mha", draw(st.sampled_from(_divisors(d)))))
    c = img_c = draw(st.integers(1, 4))
    img = []
    for _ in range(draw(st.integers(0, 3))):
        groups = draw(st.sampled_from([1, 1, 2, c]))
        groups = groups if c % groups == 0 else 1
        out = groups * draw(st.integers(1, max(1, 8 // groups)))
        img.append((out, draw(st.sampled_from([1, 3])), groups))
        c = out
    return {"vocab": draw(st.integers(2, 20)), "d0": d0, "use_emb": draw(st.booleans()), "seq": seq,
            "img_c": img_c, "img": img, "hw": draw(st.integers(1, 4)), "seq_len": draw(st.integers(1, 5)),
            "n_out": draw(st.integers(1, 5))}


@st.composite
def model_and_plan(draw):
    spec = draw(specs())
    torch.manual_seed(draw(st.integers(0, 2**16)))
    model = RandomNet(spec)
    found = ct.discover(model)
    base = {}
    for name, info in found.layers.items():
        if not draw(st.booleans()):
            continue  # leave some layers out of the plan
        sparsity = draw(st.one_of(st.just(0.0), st.floats(0.0, 0.95, exclude_max=True)))
        structured = sparsity > 0 and info.structured_ok is None and draw(st.booleans())
        base[name] = LayerPlan(sparsity=sparsity, bits=draw(st.sampled_from(ALLOWED_BITS)), structured=structured)
    shapes = effective_shapes(found, base)
    layers = {}
    for name, lp in base.items():
        rank = None
        if "lowrank" not in found.layers[name].refused and draw(st.booleans()):
            rank = draw(st.integers(1, min(shapes[name])))
        layers[name] = LayerPlan(sparsity=lp.sparsity, bits=lp.bits, rank=rank, structured=lp.structured)
    temperature = draw(st.floats(0.1, 10))
    alpha = draw(st.floats(0, 1))
    return spec, model, CompressionPlan(layers, temperature=temperature, alpha=alpha)


@SETTINGS
@given(model_and_plan())
def test_random_plans_round_trip_and_keep_their_promises(tmp_path_factory, case):
    spec, model, plan = case
    small = ct.apply(model, plan)
    x = model.inputs(seed=1)
    y = run(small, *x)

    # apply -> save -> load: same outputs; packed_size is the file size
    path = tmp_path_factory.mktemp("prop") / "m.ctz"
    ct.save(small, path)
    assert os.path.getsize(path) == ct.packed_size(small)
    again = ct.load(path, into=RandomNet(spec))
    assert (run(again, *x) - y).abs().max() <= 1e-5
    assert ct.plan_of(again) == ct.plan_of(small)

    # masks fixed with the exact count; at most 2**bits - 1 distinct codes per part
    for _, _, _, par in compressed_slots(small):
        if not isinstance(par, CompressedWeight):
            continue
        plist_parts = _parts(small, par)
        for i, (part, mask) in enumerate(zip(plist_parts, par.masks())):
            if par.sparsity > 0:
                assert mask.shape == part.shape
                assert int((mask == 0).sum()) == round(par.sparsity * part.numel())
            else:
                assert mask.numel() == 0
            stored = par.stored_part(part, i).detach()
            if par.bits <= 8:
                codes, scales = quantize_codes(stored, par.bits)
                assert len(codes.unique()) <= 2**par.bits - 1
                assert torch.allclose(dequantize(codes, scales), stored, rtol=0, atol=1e-6)

    # squash computes what the compressed model computes, with plain modules only
    plain = ct.squash(small)
    assert not has_parametrizations(plain)
    assert all(type(m).__module__ == "compresstune.factored" for m in plain.modules()
               if type(m).__module__.startswith("compresstune"))
    assert (run(plain, *x) - y).abs().max() <= 1e-5


def _parts(model, par):
    for _, module, pname, p in compressed_slots(model):
        if p is par:
            plist = module.parametrizations[pname]
            return [plist.original0, plist.original1] if par.factored else [plist.original]
    raise LookupError


@SETTINGS
@given(specs(), st.integers(0, 2**16), st.data())
def test_sparsity_zero_32_bits_no_rank_is_the_identity(spec, seed, data):
    torch.manual_seed(seed)
    model = RandomNet(spec)
    names = list(ct.discover(model).layers)
    chosen = data.draw(st.lists(st.sampled_from(names), unique=True) if names else st.just([]))
    plan = CompressionPlan({name: LayerPlan(structured=data.draw(st.booleans())) for name in chosen})
    small = ct.apply(model, plan)
    x = model.inputs()
    assert torch.equal(run(small, *x), run(model, *x))
    assert not has_parametrizations(small)
    assert to_bytes(small) == to_bytes(model)
    assert ct.packed_size(small) == ct.packed_size(model)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(
    st.text(min_size=0, max_size=8),
    st.builds(LayerPlan, sparsity=st.floats(0, 0.99), bits=st.sampled_from(ALLOWED_BITS),
              rank=st.none() | st.integers(1, 64), structured=st.booleans()),
    max_size=5,
), st.floats(1e-3, 100), st.floats(0, 1))
def test_plan_json_round_trip(layers, temperature, alpha):
    plan = CompressionPlan(layers, temperature=temperature, alpha=alpha)
    assert CompressionPlan.from_json(plan.to_json()) == plan
    assert CompressionPlan.from_dict(plan.to_dict()) == plan
