"""ONNX export of a compressed model with its weights stored at their searched codes.

:func:`export_onnx` squashes the compressed model (:func:`compresstune.squash`),
exports it with ``torch.onnx.export`` (the dynamo exporter, ``optimize=False`` so
every weight keeps its parameter name), then rewrites the graph with the ``onnx``
package's helpers: each quantized weight's float initializer is replaced by its
integer codes (int8 for 5-8 bits, int4 for 2-4 bits; int8 for every width with
``weight_dtype="int8"``), a per-output-channel float32 scale and an explicit zero
point, feeding a ``DequantizeLinear`` whose output keeps the weight's name, so the
original consumer (Gemm, Conv, Gather, an LSTM's MatMul ...) is untouched. A
float16 weight is stored as float16 with a ``Cast``. Factored layers are already
two products after squash, and each factor is quantized on its own. Everything
else stays float32.

Fallbacks (each one is reported in :attr:`OnnxExport.notes`):

- a grouped transposed convolution (``groups > 1``): its per-output-channel
  scales do not lie along one axis of the stored weight, which per-axis
  ``DequantizeLinear`` needs, so its weight is stored as float32;
- a factored weight that squash materialises as one matrix (tied, recurrent,
  inside attention): the product of two quantized factors has no integer codes,
  so it is stored as float32.

``onnx``, ``onnxruntime`` and ``onnxscript`` are imported only here, inside the
functions (the ``onnx`` extra: ``pip install 'compresstune[onnx]'``).
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from compresstune.compress import TiedTo, compressed_slots, squash
from compresstune.errors import ExportError
from compresstune.factored import FactoredConv, FactoredEmbedding, FactoredLinear
from compresstune.ops.layout import from_rows
from compresstune.ops.quantize import quantize_codes

__all__ = ["OnnxExport", "OrtModel", "StoredWeight", "check_outputs", "export_onnx", "latency_ms", "model_inputs",
           "quantize_activations", "require_onnx", "session", "stored_weights"]

INT4_OPSET = 21
WEIGHT_DTYPES = ("auto", "int8")
PIP = "pip install 'compresstune[onnx]'"


def require_onnx() -> None:
    """Raise a one-line ImportError naming the pip command when the ``onnx`` extra is missing."""
    missing = []
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"ONNX export needs {', '.join(missing)}: {PIP}")


@dataclass
class StoredWeight:
    """How one weight of the squashed model is stored in the ONNX file.

    Attributes:
        name: the parameter's name in the squashed model (= the ONNX initializer's name).
        bits: the plan's bit-width for it.
        codes: integer codes in the parameter's own layout (None for float16 / float32).
        scales: one float32 scale per index of ``axis``.
        axis: the dim of the output channels in the parameter's layout.
        dtype: "int8", "int4", "float16" or "float32" (the fallback).
    """

    name: str
    bits: int
    codes: torch.Tensor | None = None
    scales: torch.Tensor | None = None
    axis: int = 0
    dtype: str = "float32"


@dataclass
class OnnxExport:
    """What :func:`export_onnx` wrote and checked.

    Attributes:
        path: the file written (self-contained, no external data).
        size_bytes: its size on disk.
        weights: every compressed weight and how it is stored.
        notes: the fallbacks taken, one line each.
        max_abs_diff / output_scale: ONNX Runtime against the compressed PyTorch
            model on the check batches (None when not checked).
    """

    path: str
    size_bytes: int
    weights: list[StoredWeight]
    notes: list[str] = field(default_factory=list)
    max_abs_diff: float | None = None
    output_scale: float | None = None

    def stored(self) -> str:
        """How the compressed weights are stored, e.g. ``"3 int4, 1 int8"``."""
        counts: dict[str, int] = {}
        for w in self.weights:
            counts[w.dtype] = counts.get(w.dtype, 0) + 1
        return ", ".join(f"{n} {d}" for d, n in sorted(counts.items())) or "no compressed weights"

    def summary(self) -> str:
        lines = [f"onnx: {self.path} ({self.size_bytes:,} bytes; weights stored as {self.stored()})"]
        if self.max_abs_diff is not None:
            lines.append(f"checked in ONNX Runtime (CPU): max abs difference {self.max_abs_diff:.3g} "
                         f"(output scale {self.output_scale:.3g})")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# -- which weights, stored how --------------------------------------------------------------

def _masked_parts(module: nn.Module, param_name: str, par) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each stored part (rows first) with its pruning mask applied: what the model quantizes."""
    plist = module.parametrizations[param_name]
    originals = [plist.original0, plist.original1] if par.factored else [plist.original]
    out = []
    for i, part in enumerate(originals):
        mask = getattr(par, f"mask{i}")
        part = part.detach()
        if mask.numel():
            part = part * mask
        out.append(part)
    return out


def _quantized(part: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    codes, scales = quantize_codes(part, bits)
    return codes, scales.reshape(-1)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _split_targets(split: nn.Module, prefix: str, a: torch.Tensor, b: torch.Tensor):
    """(param name, rows-first part, layout of the part -> parameter, axis) for a squashed factored layer."""
    first, second = _join(prefix, "first.weight"), _join(prefix, "second.weight")
    if isinstance(split, FactoredLinear):
        return [(first, b, lambda t: t, 0), (second, a, lambda t: t, 0)]
    if isinstance(split, FactoredConv):
        shape_second = tuple(split.second.weight.shape)
        if split.transposed:
            rank_first = (split.rank, split.in_channels, *split.kernel_size)
            return [(first, b, lambda t: t.reshape(rank_first).transpose(0, 1), 1),
                    (second, a, lambda t: t.reshape(shape_second), 0)]
        shape_first = tuple(split.first.weight.shape)
        return [(first, b, lambda t: t.reshape(shape_first), 0), (second, a, lambda t: t.reshape(shape_second), 0)]
    if isinstance(split, FactoredEmbedding):
        return [(first, a, lambda t: t, 0), (second, b, lambda t: t.t(), 1)]
    raise ExportError(f"unexpected squashed factored module {type(split).__name__} at {prefix!r}")


def _int_dtype(bits: int, weight_dtype: str) -> str:
    return "int4" if bits <= 4 and weight_dtype == "auto" else "int8"


def _stored(name: str, bits: int, part: torch.Tensor, to_param, axis: int, weight_dtype: str) -> StoredWeight:
    if bits >= 32:
        return StoredWeight(name, bits)
    if bits == 16:
        return StoredWeight(name, bits, dtype="float16")
    codes, scales = _quantized(part, bits)
    return StoredWeight(name, bits, to_param(codes).contiguous(), scales, axis, _int_dtype(bits, weight_dtype))


def stored_weights(model: nn.Module, plain: nn.Module, *, weight_dtype: str = "auto"
                   ) -> tuple[list[StoredWeight], list[str]]:
    """How each compressed weight of ``model`` is stored, named as in ``plain = squash(model)``; and the
    fallbacks taken, one note each."""
    weights, notes = [], []
    plain_modules = dict(plain.named_modules())
    for mod_name, module, param_name, par in compressed_slots(model):
        if isinstance(par, TiedTo) or par.bits >= 32:
            continue
        parts = _masked_parts(module, param_name, par)
        target = plain_modules.get(mod_name)
        where = mod_name or "(the model)"
        if par.factored and isinstance(target, (FactoredLinear, FactoredConv, FactoredEmbedding)):
            for name, part, to_param, axis in _split_targets(target, mod_name, parts[0], parts[1]):
                weights.append(_stored(name, par.bits, part, to_param, axis, weight_dtype))
            continue
        name = _join(mod_name, param_name)
        if par.factored:
            weights.append(StoredWeight(name, par.bits))
            notes.append(f"{where}.{param_name}: {par.bits}-bit factored weight stored as one float32 matrix "
                         "(squash materialises it: tied, recurrent or read by its parent module)")
            continue
        if par.out_axis and par.groups > 1 and par.bits < 16:
            weights.append(StoredWeight(name, par.bits))
            notes.append(f"{where}: {par.bits}-bit weight of a grouped transposed convolution (groups={par.groups}) "
                         "stored as float32: its per-channel scales do not lie along one axis of the weight")
            continue
        to_param = lambda t, p=par: from_rows(t, out_axis=p.out_axis, groups=p.groups)  # noqa: E731
        weights.append(_stored(name, par.bits, parts[0], to_param, par.out_axis, weight_dtype))
    return weights, notes


def _check_codes(weights: list[StoredWeight], plain: nn.Module) -> None:
    """codes x scale (or the float16 value) must give the squashed weight bit for bit."""
    params = dict(plain.named_parameters(remove_duplicate=False))
    for w in weights:
        if w.name not in params:
            raise ExportError(f"compressed weight {w.name!r} is not a parameter of the squashed model")
        value = params[w.name].detach().float()
        if w.dtype == "float16":
            again = value.half().float()
        elif w.codes is not None:
            shape = [1] * value.dim()
            shape[w.axis] = -1
            again = w.codes.float() * w.scales.reshape(shape)
        else:
            continue
        if not torch.equal(again, value):
            worst = (again - value).abs().max().item()
            raise ExportError(f"the stored codes of {w.name!r} do not reproduce the squashed weight "
                              f"(max difference {worst:.3g}); nothing was written")


# -- the graph edit -------------------------------------------------------------------------

def _replace_initializers(proto, weights: list[StoredWeight]) -> None:
    """Replace each stored weight's float initializer by codes + scale + zero point -> DequantizeLinear
    (or float16 -> Cast), keeping the output's name so every consumer reads it as before."""
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    inits = {init.name: init for init in graph.initializer}
    consumed = {name for node in graph.node for name in node.input}
    missing = [w.name for w in weights if w.dtype != "float32" and w.name not in inits]
    if missing:
        raise ExportError(f"compressed weight(s) {', '.join(map(repr, missing))} reached the ONNX graph without "
                          "their own initializer (renamed or folded by the exporter), so they cannot get a "
                          "DequantizeLinear; nothing was written")
    new_nodes = []
    for w in weights:
        if w.dtype == "float32":
            continue
        if w.name not in consumed:
            raise ExportError(f"compressed weight {w.name!r} is an initializer no node reads")
        graph.initializer.remove(inits[w.name])
        if w.dtype == "float16":
            half = numpy_helper.to_array(inits[w.name]).astype(np.float16)
            graph.initializer.append(numpy_helper.from_array(half, f"{w.name}.float16"))
            new_nodes.append(helper.make_node("Cast", [f"{w.name}.float16"], [w.name], to=TensorProto.FLOAT,
                                              name=f"{w.name}.cast"))
            continue
        codes = w.codes.to(torch.int8).numpy()
        n = codes.shape[w.axis]
        graph.initializer.append(_int_tensor(f"{w.name}.codes", codes, w.dtype))
        graph.initializer.append(numpy_helper.from_array(w.scales.float().numpy(), f"{w.name}.scale"))
        graph.initializer.append(_int_tensor(f"{w.name}.zero_point", np.zeros(n, np.int8), w.dtype))
        new_nodes.append(helper.make_node("DequantizeLinear", [f"{w.name}.codes", f"{w.name}.scale",
                                                               f"{w.name}.zero_point"], [w.name],
                                          axis=w.axis, name=f"{w.name}.dequantize"))
    # New nodes first: their inputs are initializers, so the graph stays topologically sorted.
    for node in reversed(new_nodes):
        graph.node.insert(0, node)


def _strip_trace_info(proto) -> None:
    """Drop the exporter's debug records: per node (stack traces with local paths, FX node text; most
    of a small model's file), and the graph's and its inputs' and outputs' ``torch.export`` records,
    whose symbol names (``s77``) depend on what the process traced before, so the same plan's file
    had a different size in a Ray worker than in the driver. Nothing a runtime reads."""
    for node in proto.graph.node:
        del node.metadata_props[:]
    del proto.graph.value_info[:]  # intermediate shapes: ONNX Runtime infers them again
    for value in (*proto.graph.input, *proto.graph.output):
        del value.metadata_props[:]
    del proto.graph.metadata_props[:]
    del proto.metadata_props[:]


def _zero_conv_biases(plain: nn.Module) -> None:
    """Give every convolution without a bias a zero bias (out_channels float32 zeros): the exporter
    otherwise builds that zero in the graph, a BatchNorm after it could not be folded, and for a 3-D
    convolution ONNX Runtime rejected the built bias's shape."""
    for module in plain.modules():
        if isinstance(module, nn.modules.conv._ConvNd) and module.bias is None:
            out = module.out_channels
            module.bias = nn.Parameter(torch.zeros(out, dtype=module.weight.dtype, device=module.weight.device))


def _fold_batch_norms(proto) -> int:
    """Fold each inference ``BatchNormalization`` that alone reads a ``Conv`` into that convolution:
    ``BN(conv(x, W, b)) = conv(x, W * f, (b - mean) * f + beta)`` with ``f = gamma / sqrt(var + eps)``
    per output channel. A weight at its codes keeps them: ``f`` goes into its per-channel scale (the
    quantization is per output channel too), so the file stays at the searched codes and ONNX Runtime
    can run ``QLinearConv`` with int8 activations (a BN between a Conv and its QuantizeLinear blocks
    that). Returns how many were folded.
    """
    from onnx import numpy_helper

    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    outputs = {o.name for o in graph.output}

    def array(name):
        return numpy_helper.to_array(inits[name]).astype(np.float64)

    def put(name, value):
        graph.initializer.remove(inits[name])
        inits[name] = numpy_helper.from_array(value.astype(np.float32), name)
        graph.initializer.append(inits[name])

    folded = []
    for bn in list(graph.node):
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1 or not all(n in inits for n in bn.input[1:5]):
            continue
        if any(a.name == "training_mode" and a.i for a in bn.attribute):
            continue
        conv = producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or readers.get(bn.input[0]) != 1 or bn.input[0] in outputs:
            continue
        weight = conv.input[1]
        dq = producer.get(weight)
        if readers.get(weight) != 1:
            continue
        if dq is not None and dq.op_type == "DequantizeLinear":
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            target, per_axis = dq.input[1], axis == 0
            if not per_axis or readers.get(target) != 1 or target not in inits:
                continue
        elif weight in inits:
            target, per_axis = weight, True
        else:
            continue  # e.g. a float16 weight behind a Cast: left as it is
        has_bias = len(conv.input) > 2 and bool(conv.input[2])
        if has_bias and (readers.get(conv.input[2]) != 1 or conv.input[2] not in inits):
            continue  # a bias computed in the graph: left as it is
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (array(n) for n in bn.input[1:5])
        f = gamma / np.sqrt(var + eps)
        scale = array(target)
        put(target, scale * f.reshape((-1,) + (1,) * (scale.ndim - 1)))
        if has_bias:
            bias_name = conv.input[2]
            put(bias_name, (array(bias_name) - mean) * f + beta)
        else:
            bias_name = f"{bn.output[0]}.folded_bias"
            inits[bias_name] = numpy_helper.from_array(((-mean) * f + beta).astype(np.float32), bias_name)
            graph.initializer.append(inits[bias_name])
            del conv.input[2:]
            conv.input.append(bias_name)
        conv.output[0] = bn.output[0]
        graph.node.remove(bn)
        folded.append(bn)
    used = {name for node in graph.node for name in node.input}
    for init in list(graph.initializer):
        if init.name not in used:
            graph.initializer.remove(init)
    return len(folded)


def _int_tensor(name: str, values: np.ndarray, dtype: str):
    """An int8 or int4 initializer holding ``values`` as raw bytes (int4: two per byte, low nibble first,
    as the ONNX spec packs them)."""
    from onnx import TensorProto, helper, numpy_helper

    if dtype == "int8":
        return numpy_helper.from_array(values.astype(np.int8), name)
    flat = values.astype(np.int8).reshape(-1)
    if flat.size % 2:
        flat = np.append(flat, np.int8(0))
    nibbles = (flat & 0x0F).astype(np.uint8)
    packed = (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)
    return helper.make_tensor(name, TensorProto.INT4, values.shape, packed.tobytes(), raw=True)


def _check_graph(proto, weights: list[StoredWeight]) -> None:
    """Every int-stored weight is the output of a DequantizeLinear and no float initializer of that name is left."""
    produced = {out: node.op_type for node in proto.graph.node for out in node.output}
    inits = {init.name for init in proto.graph.initializer}
    for w in weights:
        want = {"int8": "DequantizeLinear", "int4": "DequantizeLinear", "float16": "Cast"}.get(w.dtype)
        if want and (produced.get(w.name) != want or w.name in inits):
            raise ExportError(f"compressed weight {w.name!r} reaches the graph without its {want}")


# -- inputs, the exporter and ONNX Runtime --------------------------------------------------

def model_inputs(batch: Any) -> tuple[tuple, dict]:
    """``(args, kwargs)`` the model is called with for ``batch``, as :meth:`Task.outputs` does by default:
    a mapping -> keyword arguments (``labels`` dropped), a tuple/list -> its first item, else the batch.

    Example:
        >>> import torch
        >>> args, kwargs = model_inputs((torch.zeros(2, 3), torch.zeros(2)))
        >>> args[0].shape, kwargs
        (torch.Size([2, 3]), {})
    """
    if isinstance(batch, Mapping):
        return (), {k: v for k, v in batch.items() if k != "labels"}
    if isinstance(batch, (tuple, list)):
        return (batch[0],), {}
    return (batch,), {}


def _dynamic_shapes(args: tuple, kwargs: dict):
    """The batch dimension (dim 0 of every tensor input) as dynamic; None (static) for mixed args."""
    batch = torch.export.Dim("batch")

    def spec(t):
        return {0: batch} if isinstance(t, torch.Tensor) and t.dim() else None

    if kwargs and args:
        return None
    if kwargs:
        return {k: spec(v) for k, v in kwargs.items()}
    return tuple(spec(a) for a in args)


def _export_float(plain: nn.Module, args: tuple, kwargs: dict, opset: int, dynamic_batch: bool):
    import logging

    for name in ("torch.onnx", "torch.onnx._internal.exporter._registration"):
        logging.getLogger(name).setLevel(logging.ERROR)
    shapes = _dynamic_shapes(args, kwargs) if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(plain, args, kwargs=kwargs or None, dynamo=True, opset_version=opset,
                                    optimize=False, external_data=False, dynamic_shapes=shapes, verbose=False)
    return program.model_proto


def session(path: str | os.PathLike, *, threads: int = 1, disable_quant_qdq: bool = False, exact: bool = False):
    """An ONNX Runtime CPU session with the options the docs name (intra-op threads, sequential,
    all graph optimisations).

    ``exact=True`` sets ``session.qdq_matmulnbits_accuracy_level`` to 0: by default ONNX Runtime fuses an
    int4 ``DequantizeLinear`` feeding a ``MatMul`` into ``MatMulNBits`` at accuracy level 4, which
    quantizes that product's activations to int8 on the fly (faster, but not the exported model's
    float arithmetic); level 0 computes it in float32, which is what the export check compares.

    Example:
        >>> # sess = session("model.onnx", threads=2); sess.run(None, {"input": x})
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if disable_quant_qdq:
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    if exact:
        opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class OrtModel(nn.Module):
    """An ONNX Runtime session called like the model it was exported from (positional args in the
    graph's input order, or keyword arguments by name); returns the first output as a tensor, so a
    :class:`~compresstune.Task` can score it.

    Example:
        >>> # ort_model = OrtModel(session("model.onnx")); task.evaluate(ort_model, "test")
    """

    def __init__(self, sess) -> None:
        super().__init__()
        self.sess = sess
        self.names = [i.name for i in sess.get_inputs()]

    def feeds(self, args: tuple, kwargs: dict) -> dict:
        feeds = {name: a for name, a in zip(self.names, args)}
        feeds.update({k: v for k, v in kwargs.items() if k in self.names})
        return {k: v.detach().cpu().numpy() for k, v in feeds.items()}

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return torch.from_numpy(self.sess.run(None, self.feeds(args, kwargs))[0])


def _flat_output(out: Any) -> torch.Tensor:
    from compresstune.task import logits_of

    out = logits_of(out)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.detach().float().cpu()


def check_outputs(model: nn.Module, path: str | os.PathLike, batches: Iterable[Any], *, tolerance: float = 1e-4
                  ) -> tuple[float, float]:
    """Run ``path`` in ONNX Runtime's CPU provider on ``batches`` and compare with ``model``.

    Returns:
        ``(max abs difference, output scale)`` (the scale is the largest output magnitude).

    Raises:
        ExportError: the difference is above ``tolerance`` x the output scale.
    """
    runner = OrtModel(session(path, exact=True))
    worst, scale = 0.0, 0.0
    model.eval()
    with torch.no_grad():
        for batch in batches:
            args, kwargs = model_inputs(batch)
            want = _flat_output(model(*args, **kwargs))
            got = runner(*args, **kwargs)
            if got.shape != want.shape:
                raise ExportError(f"ONNX Runtime gave outputs of shape {tuple(got.shape)}, the model "
                                  f"{tuple(want.shape)}")
            worst = max(worst, (got - want).abs().max().item())
            scale = max(scale, want.abs().max().item())
    if worst > tolerance * max(scale, 1e-12):
        raise ExportError(f"the ONNX file does not reproduce the compressed model: max abs difference {worst:.3g} "
                          f"is above {tolerance:g} x the output scale {scale:.3g}")
    return worst, scale


def _check_opset(opset: int, weights: list[StoredWeight]) -> None:
    if not isinstance(opset, int) or isinstance(opset, bool):
        raise ExportError(f"`opset` must be an integer; got {opset!r}.")
    int4 = [w.name for w in weights if w.dtype == "int4"]
    if int4 and opset < INT4_OPSET:
        raise ExportError(f"`opset` must be at least {INT4_OPSET} to store int4 weights ({len(int4)} of them, e.g. "
                          f"{int4[0]!r}); got {opset}. Use opset {INT4_OPSET}, or weight_dtype='int8'.")
    if opset < 13:
        raise ExportError(f"`opset` must be at least 13 (per-channel DequantizeLinear); got {opset}.")


def export_onnx(model: nn.Module, example_batch: Any, path: str | os.PathLike, *, opset: int = INT4_OPSET,
                weight_dtype: str = "auto", check_batches: Iterable[Any] | None = None, check: bool = True,
                dynamic_batch: bool = True, tolerance: float = 1e-4, fold_batch_norm: bool = True) -> OnnxExport:
    """Export a compressed model (from :func:`compresstune.apply` or :func:`compresstune.load`) to one
    self-contained ONNX file with its weights stored at their codes, and check it in ONNX Runtime.

    Args:
        model: the compressed model (an uncompressed model exports as plain float32).
        example_batch: a batch as the task yields it (a tensor, ``(inputs, targets)`` or a mapping of
            keyword inputs), used to trace the model.
        path: the ``.onnx`` file to write.
        opset: ONNX opset; int4 weights need 21.
        weight_dtype: ``"auto"`` (int4 for 2-4 bits, int8 for 5-8) or ``"int8"`` (every width as int8:
            what static int8 activations need).
        check_batches: batches to compare ONNX Runtime with ``model`` on (default: ``example_batch``).
        check: run the comparison (max abs difference at most ``tolerance`` x the output scale).
        dynamic_batch: export the batch dimension as dynamic.
        fold_batch_norm: fold inference BatchNorms into the convolution before them (into the scales
            of a weight at its codes; the codes are unchanged).

    Returns:
        An :class:`OnnxExport`; nothing is left at ``path`` when a check fails.

    Example:
        >>> import torch, torch.nn as nn, compresstune as ct
        >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        >>> small = ct.apply(model, ct.CompressionPlan.uniform(model, bits=4))
        >>> out = ct.export_onnx(small, torch.randn(2, 8), "/tmp/doc_small.onnx")  # doctest: +SKIP
        >>> sorted({w.dtype for w in out.weights})  # doctest: +SKIP
        ['int4']
    """
    if weight_dtype not in WEIGHT_DTYPES:
        raise ExportError(f"`weight_dtype` must be one of {', '.join(WEIGHT_DTYPES)}; got {weight_dtype!r}.")
    require_onnx()
    was_training = model.training
    model.eval()
    try:
        return _export_checked(model, example_batch, Path(path), opset=opset, weight_dtype=weight_dtype,
                               check_batches=check_batches, check=check, dynamic_batch=dynamic_batch,
                               tolerance=tolerance, fold_batch_norm=fold_batch_norm)
    finally:
        model.train(was_training)


def _export_checked(model: nn.Module, example_batch: Any, path: Path, *, opset: int, weight_dtype: str,
                    check_batches, check: bool, dynamic_batch: bool, tolerance: float,
                    fold_batch_norm: bool) -> OnnxExport:
    import onnx

    plain = squash(model).eval()
    weights, notes = stored_weights(model, plain, weight_dtype=weight_dtype)
    _check_opset(opset, weights)
    _check_codes(weights, plain)
    _zero_conv_biases(plain)
    args, kwargs = model_inputs(example_batch)
    proto = _export_float(plain, args, kwargs, opset, dynamic_batch)
    _replace_initializers(proto, weights)
    _check_graph(proto, weights)
    if fold_batch_norm:
        folded = _fold_batch_norms(proto)
        if folded:
            notes.append(f"{folded} BatchNormalization node(s) folded into their convolutions "
                         "(into the per-channel scales of weights stored at their codes)")
    _strip_trace_info(proto)
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    result = OnnxExport(str(path), path.stat().st_size, weights, notes)
    if check:
        try:
            result.max_abs_diff, result.output_scale = check_outputs(
                model, path, list(check_batches) if check_batches is not None else [example_batch],
                tolerance=tolerance)
        except Exception:
            path.unlink(missing_ok=True)
            raise
    return result


def latency_ms(path: str | os.PathLike, example_batch: Any, *, threads: int = 1, repeats: int = 30,
               warmup: int = 5) -> float:
    """Median ONNX Runtime CPU time of one call on ``example_batch``, in milliseconds.

    Example:
        >>> # latency_ms("model.onnx", torch.randn(32, 3, 32, 32), threads=2)
    """
    runner = OrtModel(session(path, threads=threads))
    feeds = runner.feeds(*model_inputs(example_batch))
    for _ in range(warmup):
        runner.sess.run(None, feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner.sess.run(None, feeds)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


class _Calibration:
    """ONNX Runtime's CalibrationDataReader protocol over batches (``get_next`` -> feeds or None)."""

    def __init__(self, input_names: list[str], batches: Iterable[Any]) -> None:
        self.names = input_names
        self.batches = iter(batches)

    def get_next(self):
        batch = next(self.batches, None)
        if batch is None:
            return None
        args, kwargs = model_inputs(batch)
        feeds = {name: a for name, a in zip(self.names, args)}
        feeds.update({k: v for k, v in kwargs.items() if k in self.names})
        return {k: v.detach().cpu().numpy() for k, v in feeds.items()}


QUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def quantize_activations(weight_only: str | os.PathLike, path: str | os.PathLike, batches: Iterable[Any], *,
                         op_types: Iterable[str] = QUANTIZED_OPS) -> int:
    """Static int8 activations (QDQ) on a weight-only export, calibrated on ``batches``.

    ``weight_only`` must store every weight as int8 (``export_onnx(..., weight_dtype="int8")``):
    ONNX Runtime's ``quantize_static`` keeps a weight whose ``DequantizeLinear`` has an explicit int8
    zero point, so the searched codes are what runs; int4 weights have no integer kernel with int8
    activations. Activations are uint8, per-tensor, min-max calibrated (ONNX Runtime's defaults
    for x86-64: U8S8). Only the inputs of ``op_types`` (the weighted products) are quantized:
    quantizing everything (ONNX Runtime's default) also puts softmax, layer norm and residual sums
    through int8, which took a small SST-2 transformer from 0.79 to 0.57 test accuracy.

    Returns:
        The size in bytes of the file written at ``path``.

    Example:
        >>> # ct.export_onnx(small, x, "w.onnx", weight_dtype="int8")
        >>> # quantize_activations("w.onnx", "a8.onnx", task.batches("val"))
    """
    require_onnx()
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    proto = onnx.load(str(weight_only))
    int4 = [i.name for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT4]
    if int4:
        raise ExportError(f"int8 activations need int8 weights; {weight_only} stores {len(int4)} as int4 "
                          f"(e.g. {int4[0]!r}): export it with weight_dtype='int8'")
    names = [i.name for i in proto.graph.input]
    import logging

    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # its pre-processing advice
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(str(weight_only), str(path), _Calibration(names, batches), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        op_types_to_quantize=list(op_types))
    return Path(path).stat().st_size
