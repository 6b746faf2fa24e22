"""ONNX export (compresstune.export_onnx): every supported layer kind at 2, 4, 8 and 16 bits, factored
and pruned, stored at its codes and checked in ONNX Runtime; the graph carries a DequantizeLinear for
every quantized weight; bad input fails before compute."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import onnx  # noqa: E402

import compresstune as ct  # noqa: E402
from compresstune.errors import ExportError  # noqa: E402
from compresstune.onnx_export import check_outputs, stored_weights  # noqa: E402


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(4, 8, 3)
        self.c2 = nn.Conv2d(8, 12, 3, padding=1)
        self.head = nn.Linear(12, 5)

    def forward(self, x):  # x: (n, 4, 10)
        h = torch.relu(self.c1(x))                      # (n, 8, 8)
        h = torch.relu(self.c2(h.unsqueeze(-1).expand(-1, -1, -1, 8)))
        return self.head(h.mean((2, 3)))


class Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(6, 8, 3, stride=2, padding=1, output_padding=1)
        self.grouped = nn.ConvTranspose2d(8, 4, 3, padding=1, groups=2)

    def forward(self, x):
        return self.grouped(torch.relu(self.up(x)))


class Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.out = nn.Linear(16, 7)

    def forward(self, tokens):
        return self.out(self.emb(tokens).mean(1))


class Recurrent(nn.Module):
    def __init__(self, cell) -> None:
        super().__init__()
        self.rnn = cell(6, 12, batch_first=True)
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True, dropout=0.0)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.block(x).mean(1))


class Volume(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 4, 3)
        self.up = nn.ConvTranspose3d(4, 3, 2, stride=2)

    def forward(self, x):
        return self.up(torch.relu(self.conv(x)))


def _mlp():
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


def _conv1d_transformers():
    Conv1D = pytest.importorskip("transformers.pytorch_utils").Conv1D
    return nn.Sequential(Conv1D(24, 10), nn.ReLU(), Conv1D(3, 24))


MODELS = {
    "linear": (_mlp, lambda n: torch.randn(n, 20)),
    "conv": (ConvNet, lambda n: torch.randn(n, 4, 10)),
    "conv_transpose": (Decoder, lambda n: torch.randn(n, 6, 5, 5)),
    "embedding": (Tokens, lambda n: torch.randint(0, 50, (n, 6))),
    "transposed_linear": (_conv1d_transformers, lambda n: torch.randn(n, 10)),
    "lstm": (lambda: Recurrent(nn.LSTM), lambda n: torch.randn(n, 5, 6)),
    "gru": (lambda: Recurrent(nn.GRU), lambda n: torch.randn(n, 5, 6)),
    "attention": (Attention, lambda n: torch.randn(n, 5, 16)),
    "conv3d": (Volume, lambda n: torch.randn(n, 2, 5, 5, 5)),
}


def _export(model, make, tmp_path, **kwargs):
    path = tmp_path / "m.onnx"
    result = ct.export_onnx(model, make(3), path, check_batches=[make(3), make(5)], **kwargs)
    return path, result


def _ops_of(path):
    graph = onnx.load(str(path)).graph
    produced = {out: node.op_type for node in graph.node for out in node.output}
    return graph, produced


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
@pytest.mark.parametrize("kind", list(MODELS))
def test_every_kind_and_width_is_stored_at_its_codes_and_runs_in_onnx_runtime(kind, bits, tmp_path):
    torch.manual_seed(bits)
    build, make = MODELS[kind]
    model = build().eval()
    small = ct.apply(model, ct.CompressionPlan.uniform(model, bits=bits, sparsity=0.4))
    path, result = _export(small, make, tmp_path)
    assert result.max_abs_diff <= 1e-4 * result.output_scale
    graph, produced = _ops_of(path)
    inits = {i.name: i for i in graph.initializer}
    want = {2: "int4", 4: "int4", 8: "int8", 16: "float16"}[bits]
    for w in result.weights:
        if w.dtype == "float32":  # a fallback, and it says so
            assert any(w.name.split(".")[0] in note for note in result.notes)
            continue
        assert w.dtype == want
        assert w.name not in inits
        assert produced[w.name] == ("Cast" if bits == 16 else "DequantizeLinear")
        if bits < 16:
            codes = inits[f"{w.name}.codes"]
            assert codes.data_type == (onnx.TensorProto.INT4 if bits <= 4 else onnx.TensorProto.INT8)
            assert inits[f"{w.name}.zero_point"].data_type == codes.data_type
    assert any(w.dtype == want for w in result.weights)


@pytest.mark.parametrize("kind", ["linear", "conv", "conv_transpose", "embedding", "transposed_linear", "conv3d"])
def test_factored_layers_are_two_products_each_quantized(kind, tmp_path):
    torch.manual_seed(1)
    build, make = MODELS[kind]
    model = build().eval()
    small = ct.apply(model, ct.CompressionPlan.uniform(model, bits=4, sparsity=0.2, rank_fraction=0.4))
    factored = [n for n, lp in ct.plan_of(small).layers.items() if lp.rank]
    assert factored
    _, result = _export(small, make, tmp_path)
    names = {w.name for w in result.weights if w.dtype == "int4"}
    for layer in factored:
        if any(layer in note for note in result.notes):
            continue
        assert {f"{layer}.first.weight", f"{layer}.second.weight"} <= names


def test_a_factored_recurrent_weight_is_float32_and_says_so(tmp_path):
    model = Recurrent(nn.LSTM).eval()
    plan = ct.CompressionPlan.uniform(model, bits=4, rank_fraction=0.25, layers=["rnn"])
    small = ct.apply(model, plan)
    _, result = _export(small, MODELS["lstm"][1], tmp_path)
    assert {w.dtype for w in result.weights} == {"float32"}
    assert any("factored weight stored as one float32 matrix" in n for n in result.notes)


def test_a_grouped_transposed_conv_falls_back_to_float32_and_says_so(tmp_path):
    model = Decoder().eval()
    small = ct.apply(model, ct.CompressionPlan.uniform(model, bits=8))
    _, result = _export(small, MODELS["conv_transpose"][1], tmp_path)
    stored = {w.name: w.dtype for w in result.weights}
    assert stored == {"up.weight": "int8", "grouped.weight": "float32"}
    assert any("grouped transposed convolution (groups=2)" in n for n in result.notes)


def test_structured_pruning_exports_physically_smaller_layers(tmp_path):
    model = _mlp().eval()
    plan = ct.CompressionPlan.uniform(model, bits=8, sparsity=0.5, structured=True)
    small = ct.apply(model, plan)
    path, _ = _export(small, MODELS["linear"][1], tmp_path)
    graph, _ = _ops_of(path)
    codes = {i.name: tuple(i.dims) for i in graph.initializer if i.name.endswith(".codes")}
    assert codes["0.weight.codes"][0] == 16 and codes["2.weight.codes"] == (16, 16)


def test_int8_weights_for_every_width_and_the_file_is_smaller(tmp_path):
    model = _mlp().eval()
    make = MODELS["linear"][1]
    plain_path = tmp_path / "float.onnx"
    ct.export_onnx(model, make(2), plain_path)
    small = ct.apply(model, ct.CompressionPlan.uniform(model, bits=4))
    _, as_int4 = _export(small, make, tmp_path)
    size4 = as_int4.size_bytes
    _, as_int8 = _export(small, make, tmp_path, weight_dtype="int8")
    assert {w.dtype for w in as_int8.weights} == {"int8"}
    assert size4 < as_int8.size_bytes < plain_path.stat().st_size


def test_the_codes_reproduce_the_squashed_weights_exactly():
    model = _mlp().eval()
    small = ct.apply(model, ct.CompressionPlan.uniform(model, bits=3, sparsity=0.5, rank_fraction=0.5))
    plain = ct.squash(small)
    weights, _ = stored_weights(small, plain)
    params = dict(plain.named_parameters())
    for w in weights:
        assert w.codes.abs().max() <= 3
        shape = [1] * w.codes.dim()
        shape[w.axis] = -1
        assert torch.equal(w.codes.float() * w.scales.reshape(shape), params[w.name].detach())


def test_an_opset_below_21_with_int4_is_refused_naming_the_opset(tmp_path):
    model = _mlp().eval()
    small = ct.apply(model, ct.CompressionPlan.uniform(model, bits=4))
    with pytest.raises(ExportError, match=r"`opset` must be at least 21 to store int4 weights .* got 17"):
        ct.export_onnx(small, torch.randn(2, 20), tmp_path / "m.onnx", opset=17)
    with pytest.raises(ExportError, match="`weight_dtype` must be one of auto, int8; got 'int2'"):
        ct.export_onnx(small, torch.randn(2, 20), tmp_path / "m.onnx", weight_dtype="int2")
    assert not (tmp_path / "m.onnx").exists()


def test_a_file_that_does_not_match_the_model_is_an_error(tmp_path):
    model = _mlp().eval()
    small = ct.apply(model, ct.CompressionPlan.uniform(model, bits=8))
    path, _ = _export(small, MODELS["linear"][1], tmp_path)
    other = ct.apply(_mlp().eval(), ct.CompressionPlan.uniform(model, bits=8))
    with pytest.raises(ExportError, match="does not reproduce the compressed model"):
        check_outputs(other, path, [torch.randn(4, 20)])


def test_a_missing_extra_is_one_line_with_the_pip_command(monkeypatch):
    import builtins

    from compresstune import onnx_export

    real = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    with pytest.raises(ImportError, match=r"^ONNX export needs onnxruntime: pip install 'compresstune\[onnx\]'$"):
        onnx_export.require_onnx()


def test_batch_norms_fold_into_the_scales_and_the_codes_stay(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, bias=False),
                          nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    for bn in (model[1], model[4]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 2)
    model.eval()
    small = ct.apply(model, ct.CompressionPlan.uniform(model, bits=8))
    make = lambda n: torch.randn(n, 3, 8, 8)  # noqa: E731
    path, result = _export(small, make, tmp_path)
    graph, _ = _ops_of(path)
    assert "BatchNormalization" not in {n.op_type for n in graph.node}
    assert any("2 BatchNormalization node(s) folded" in n for n in result.notes)
    codes = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer if i.name.endswith(".codes")}
    for w in result.weights:
        assert (codes[f"{w.name}.codes"] == w.codes.numpy()).all()
    _, kept = _export(small, make, tmp_path, fold_batch_norm=False)
    assert "BatchNormalization" in {n.op_type for n in onnx.load(kept.path).graph.node}


def test_importing_compresstune_loads_no_onnx_package():
    import subprocess
    import sys

    code = ("import sys, compresstune, compresstune.onnx_export, compresstune.objectives; "
            "print([m for m in ('onnx', 'onnxruntime', 'onnxscript') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_same_model_exports_to_the_same_bytes_whatever_was_traced_before(tmp_path):
    """The file holds no ``torch.export`` records: their symbol names depend on the process's history,
    and made one plan's ``onnx_size`` differ between a Ray worker and the driver."""
    model, make = ConvNet().eval(), MODELS["conv"][1]
    small = ct.apply(model, ct.CompressionPlan.uniform(model, bits=4))
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first, _ = _export(small, make, tmp_path / "a")
    torch.export.export(_mlp(), (torch.randn(4, 20),), dynamic_shapes=({0: torch.export.Dim("n")},))
    second, _ = _export(small, make, tmp_path / "b")
    assert first.read_bytes() == second.read_bytes()
    proto = onnx.load(str(first))
    assert not proto.metadata_props and not proto.graph.metadata_props
    assert not [v for v in (*proto.graph.input, *proto.graph.output) if v.metadata_props]
