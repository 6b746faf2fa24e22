"""The packed on-disk format (``.ctz``): save, load and the exact packed size.

Layout (format version 1)::

    b"CTZ\\0" | u16 version | u32 header length | header | payload | u32 CRC-32

The header is zstd-compressed JSON holding the plan and one record per
state-dict entry. A compressed weight part (a weight, or one low-rank factor)
is stored as:

- an index stream for its nonzero positions, per part the smaller of a bitmap
  or LEB128-coded gaps, each entropy-coded (zstd or lzma) when that is smaller;
- its nonzero values: bit-packed integer codes (2..8 bits, symmetric per output
  channel) plus one float32 scale per row, or float16 / float32 values.

Everything else (biases, norms, buffers) is stored raw in its own dtype.

Codes are bit-packed, not entropy-coded, on purpose: then the size of a
compressed model depends only on its plan and masks, both fixed at apply time,
so :func:`packed_size` is known before fine-tuning and never changes during it.
"""

from __future__ import annotations

import json
import lzma
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
import zstandard
from torch import nn

from compresstune.compress import apply, compressed_slots, plan_of
from compresstune.errors import ArtifactError, CompressTuneError
from compresstune.ops import CompressedWeight, quantize_codes
from compresstune.ops.quantize import qmax
from compresstune.plan import CompressionPlan

__all__ = ["FORMAT_VERSION", "load", "packed_size", "reference_size", "save", "to_bytes"]

MAGIC = b"CTZ\0"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<4sHI")
_CRC = struct.Struct("<I")


# -- byte-level codecs --------------------------------------------------------------

def _compress(data: bytes, codec: str) -> bytes:
    if codec == "zstd":
        return zstandard.ZstdCompressor(level=19).compress(data)
    if codec == "lzma":
        # A dictionary no larger than the data: preset 9's 64 MiB one costs ~60 ms to set up per call.
        # The decoder's preset-9 dictionary is at least as large, so it reads these streams.
        dict_size = min(max(4096, len(data)), 1 << 26)
        filters = [{"id": lzma.FILTER_LZMA2, "preset": 9, "dict_size": dict_size}]
        return lzma.compress(data, format=lzma.FORMAT_RAW, filters=filters)
    return data


def _decompress(data: bytes, codec: str) -> bytes:
    if codec == "zstd":
        return zstandard.ZstdDecompressor().decompress(data)
    if codec == "lzma":
        return lzma.decompress(data, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "preset": 9}])
    if codec == "raw":
        return data
    raise ArtifactError(f"unknown codec {codec!r} in artifact header; allowed: raw, zstd, lzma.")


def _smallest(data: bytes) -> tuple[str, bytes]:
    options = [("raw", data)] + [(c, _compress(data, c)) for c in ("zstd", "lzma")]
    return min(options, key=lambda item: len(item[1]))


def _varint_encode(values: np.ndarray) -> bytes:
    values = values.astype(np.uint64)
    nbytes = np.ones(len(values), dtype=np.int64)
    for j in range(1, 10):
        nbytes += values >= (np.uint64(1) << np.uint64(7 * j))
    starts = np.concatenate([[0], np.cumsum(nbytes)[:-1]])
    out = np.zeros(int(nbytes.sum()), dtype=np.uint8)
    for j in range(int(nbytes.max(initial=0))):
        sel = nbytes > j
        chunk = (values[sel] >> np.uint64(7 * j)) & np.uint64(0x7F)
        more = (nbytes[sel] > j + 1).astype(np.uint64) << np.uint64(7)
        out[starts[sel] + j] = (chunk | more).astype(np.uint8)
    return out.tobytes()


def _varint_decode(data: bytes, count: int) -> np.ndarray:
    raw = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(raw < 0x80)
    if len(ends) != count:
        raise ArtifactError(f"index stream holds {len(ends)} gaps; the header says {count}.")
    starts = np.concatenate([[0], ends[:-1] + 1])
    out = np.zeros(count, dtype=np.uint64)
    for j in range(int((ends - starts).max(initial=-1)) + 1):
        sel = starts + j <= ends
        out[sel] |= (raw[starts[sel] + j].astype(np.uint64) & np.uint64(0x7F)) << np.uint64(7 * j)
    return out.astype(np.int64)


def _pack_bits(values: np.ndarray, bits: int) -> bytes:
    expanded = (values[:, None].astype(np.uint32) >> np.arange(bits, dtype=np.uint32)) & 1
    return np.packbits(expanded.astype(np.uint8).ravel(), bitorder="little").tobytes()


def _unpack_bits(data: bytes, bits: int, count: int) -> np.ndarray:
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count * bits, bitorder="little")
    return (flat.reshape(count, bits).astype(np.int64) << np.arange(bits)).sum(axis=1)


# -- index streams ---------------------------------------------------------------------

def _encode_index(mask: np.ndarray) -> tuple[dict, bytes]:
    if mask.size == 0 or mask.all():
        return {"enc": "dense", "codec": "raw"}, b""
    positions = np.flatnonzero(mask)
    gaps = np.diff(np.concatenate([[-1], positions])) - 1
    candidates = [("bitmap", np.packbits(mask.astype(np.uint8)).tobytes()), ("gaps", _varint_encode(gaps))]
    best = None
    for enc, data in candidates:
        codec, packed = _smallest(data)
        if best is None or len(packed) < len(best[2]):
            best = (enc, codec, packed)
    enc, codec, packed = best
    return {"enc": enc, "codec": codec}, packed


def _decode_index(rec: dict, data: bytes, numel: int) -> np.ndarray:
    if rec["enc"] == "dense":
        return np.ones(numel, dtype=bool)
    raw = _decompress(data, rec["codec"])
    if rec["enc"] == "bitmap":
        return np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=numel).astype(bool)
    if rec["enc"] == "gaps":
        positions = np.cumsum(_varint_decode(raw, rec["nnz"]) + 1) - 1
        if len(positions) and positions[-1] >= numel:
            raise ArtifactError(f"index stream of {rec['k']!r} points past the tensor's {numel} elements.")
        mask = np.zeros(numel, dtype=bool)
        mask[positions] = True
        return mask
    raise ArtifactError(f"unknown index encoding {rec['enc']!r}; allowed: dense, bitmap, gaps.")


# -- tensor records ---------------------------------------------------------------------------

def _raw_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def _encode_part(key: str, mask_key: str, part: torch.Tensor, par: CompressedWeight, index: int):
    stored = par.stored_part(part, index).detach().cpu().float()
    mask_t = par.masks()[index]
    mask = mask_t.detach().cpu().numpy().astype(bool).ravel() if mask_t.numel() else np.ones(stored.numel(), bool)
    rec, index_bytes = _encode_index(mask)
    rec.update({"k": key, "t": "coded", "mask": mask_key, "masked": bool(mask_t.numel()),
                "shape": list(stored.shape), "bits": par.bits, "nnz": int(mask.sum())})
    if par.bits <= 8:
        codes, scales = quantize_codes(stored, par.bits)
        selected = codes.numpy().ravel()[mask] + qmax(par.bits)
        blobs = [index_bytes, _pack_bits(selected, par.bits), _raw_bytes(scales.float())]
    else:
        dtype = torch.float16 if par.bits == 16 else torch.float32
        blobs = [index_bytes, _raw_bytes(stored.reshape(-1)[torch.from_numpy(mask)].to(dtype))]
    rec["lens"] = [len(b) for b in blobs]
    return rec, blobs


def _records(model: nn.Module):
    """Yield (record, blobs) for every state-dict entry, compressed parts first handled as coded."""
    state = model.state_dict(keep_vars=True)
    covered: set[str] = set()
    seen: dict[int, str] = {}  # tensor id -> first key: a module used twice is stored once
    for mod_name, module, param_name, par in compressed_slots(model):
        if not isinstance(par, CompressedWeight):
            continue
        prefix = f"{mod_name}.parametrizations.{param_name}." if mod_name else f"parametrizations.{param_name}."
        plist = module.parametrizations[param_name]
        names = ["original0", "original1"] if par.factored else ["original"]
        for i, name in enumerate(names):
            key, mask_key = prefix + name, f"{prefix}0.mask{i}"
            covered.update({key, mask_key})
            seen.update({id(getattr(plist, name)): key, id(par.masks()[i]): mask_key})
            yield _encode_part(key, mask_key, getattr(plist, name), par, i)
    for key, tensor in state.items():
        if key in covered:
            continue
        ident = id(tensor)
        if ident in seen:
            yield {"k": key, "t": "same", "as": seen[ident]}, []
            continue
        seen[ident] = key
        dtype = str(tensor.dtype).removeprefix("torch.")
        data = _raw_bytes(tensor)
        yield {"k": key, "t": "raw", "dtype": dtype, "shape": list(tensor.shape), "lens": [len(data)]}, [data]


def to_bytes(model: nn.Module) -> bytes:
    """The artifact's bytes, exactly as :func:`save` writes them."""
    records, payload = [], []
    for rec, blobs in _records(model):
        records.append(rec)
        payload.extend(blobs)
    header = {"format_version": FORMAT_VERSION, "plan": plan_of(model).to_dict(),
              "model": f"{type(model).__module__}.{type(model).__qualname__}", "records": records}
    header_bytes = zstandard.ZstdCompressor(level=19).compress(json.dumps(header, separators=(",", ":")).encode())
    body = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header_bytes)) + header_bytes + b"".join(payload)
    return body + _CRC.pack(zlib.crc32(body))


def packed_size(model: nn.Module) -> int:
    """Exact size in bytes of the artifact :func:`save` would write, without touching disk.

    It depends only on the plan and the masks fixed at apply time, so it does
    not change while the model is fine-tuned.

    Example:
        >>> import torch.nn as nn
        >>> packed_size(nn.Linear(4, 2)) > 40
        True
    """
    return len(to_bytes(model))


def save(model: nn.Module, path: str | os.PathLike) -> int:
    """Write the compressed (or plain) ``model`` to ``path``; returns the byte count.

    ``os.path.getsize(path) == packed_size(model)`` always holds.
    """
    data = to_bytes(model)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # never leave a half-written artifact under the final name
    return len(data)


def reference_size(model: nn.Module) -> int:
    """fp32 reference size of an uncompressed model: 4 bytes per element of its unique
    parameters and buffers."""
    seen, total = set(), 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel() * 4
    return total


# -- load ---------------------------------------------------------------------------------------

def _read(path) -> tuple[dict, memoryview]:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"artifact {str(path)!r} does not exist.") from None
    if len(data) < _PREFIX.size + _CRC.size:
        raise ArtifactError(f"artifact {str(path)!r} is truncated: {len(data)} bytes.")
    magic, version, header_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise ArtifactError(f"{str(path)!r} is not a compresstune artifact (magic {magic!r}, expected {MAGIC!r}).")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"artifact format version must be {FORMAT_VERSION}; {str(path)!r} has {version}.")
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(data[: -_CRC.size]) != crc:
        raise ArtifactError(f"artifact {str(path)!r} is corrupt or truncated (checksum mismatch).")
    start = _PREFIX.size
    try:
        header = json.loads(zstandard.ZstdDecompressor().decompress(data[start:start + header_len]))
    except (zstandard.ZstdError, ValueError) as exc:
        raise ArtifactError(f"artifact {str(path)!r} has an unreadable header: {exc}") from None
    return header, memoryview(data)[start + header_len: len(data) - _CRC.size]


def _decode_raw(rec: dict, blob: bytes) -> torch.Tensor:
    dtype = getattr(torch, rec["dtype"], None)
    if not isinstance(dtype, torch.dtype):
        raise ArtifactError(f"record {rec['k']!r} has unknown dtype {rec['dtype']!r}.")
    if not blob:
        return torch.empty(rec["shape"], dtype=dtype)
    return torch.frombuffer(bytearray(blob), dtype=torch.uint8).view(dtype).reshape(rec["shape"]).clone()


def _decode_coded(rec: dict, blobs: list[bytes]) -> tuple[torch.Tensor, torch.Tensor]:
    shape = rec["shape"]
    numel = int(np.prod(shape))
    mask = _decode_index(rec, blobs[0], numel)
    values = np.zeros(numel, dtype=np.float32)
    if rec["bits"] <= 8:
        codes = np.zeros(numel, dtype=np.int64)
        codes[mask] = _unpack_bits(blobs[1], rec["bits"], rec["nnz"]) - qmax(rec["bits"])
        scales = np.frombuffer(blobs[2], dtype=np.float32).reshape(shape[0], 1)
        values = (torch.from_numpy(codes.reshape(shape[0], -1)).float() * torch.from_numpy(scales.copy())).numpy()
        values = values.ravel()
    else:
        dtype = np.float16 if rec["bits"] == 16 else np.float32
        values[mask] = np.frombuffer(blobs[1], dtype=dtype).astype(np.float32)
    return torch.from_numpy(values.reshape(shape).copy()), torch.from_numpy(mask.reshape(shape).astype(np.float32))


def _split_payload(records: list, payload: memoryview, path) -> list[list[bytes]]:
    out, offset = [], 0
    for rec in records:
        blobs = []
        for length in rec.get("lens", []):
            blobs.append(bytes(payload[offset:offset + length]))
            offset += length
        out.append(blobs)
    if offset != len(payload):
        raise ArtifactError(f"artifact {str(path)!r}: payload is {len(payload)} bytes; the header accounts for {offset}.")
    return out


def load(path: str | os.PathLike, *, into: nn.Module) -> nn.Module:
    """Rebuild the compressed model saved at ``path`` on top of a fresh, uncompressed ``into``.

    ``into`` is the same architecture as the model that was compressed (its
    weights do not matter and it is not modified). The result computes what
    the saved model computed.

    Raises:
        ArtifactError: the file is corrupt, truncated, of another version, or
            was saved from a model of another shape.
    """
    header, payload = _read(path)
    try:
        plan = CompressionPlan.from_dict(header["plan"])
        records = header["records"]
        model = apply(into, plan)
    except (KeyError, TypeError) as exc:
        raise ArtifactError(f"artifact {str(path)!r} has a malformed header ({exc}).") from None
    except CompressTuneError as exc:
        raise ArtifactError(f"artifact {str(path)!r} does not fit `into`: {exc}") from None
    state = _decode_state(records, _split_payload(records, payload, path), path)
    _check_fits(model, state, path)
    model.load_state_dict(state, strict=True)
    return model


def _decode_state(records: list, blobs: list, path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for rec, rec_blobs in zip(records, blobs):
        kind = rec.get("t")
        if kind == "raw":
            state[rec["k"]] = _decode_raw(rec, rec_blobs[0])
        elif kind == "coded":
            values, mask = _decode_coded(rec, rec_blobs)
            state[rec["k"]] = values
            state[rec["mask"]] = mask if rec["masked"] else torch.ones(0)
        elif kind == "same":
            state[rec["k"]] = state[rec["as"]]
        else:
            raise ArtifactError(f"artifact {str(path)!r}: unknown record type {kind!r}.")
    return state


def _check_fits(model: nn.Module, state: dict, path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ArtifactError(
            f"artifact {str(path)!r} was saved from a different model: missing {missing[:5]}, unexpected {extra[:5]}."
        )
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ArtifactError(
                f"artifact {str(path)!r} was saved from a different model: {key!r} has shape "
                f"{tuple(tensor.shape)} in the file and {tuple(expected[key].shape)} in `into`."
            )
