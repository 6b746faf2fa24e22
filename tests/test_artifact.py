"""The packed artifact: exact size, round trip, tied weights stored once, corrupt files refused."""

from __future__ import annotations

import json
import os
import struct
import zlib

import pytest
import torch
import zstandard
from torch import nn

import compresstune as ct
from compresstune.artifact import FORMAT_VERSION, MAGIC, to_bytes
from compresstune.errors import ArtifactError
from compresstune.plan import CompressionPlan, LayerPlan
from tests.conftest import EveryKind, SmallCNN, TiedLM, mlp, run
from tests.test_compress import mixed_plan


def _header(data: bytes) -> dict:
    _, _, length = struct.unpack_from("<4sHI", data)
    return json.loads(zstandard.ZstdDecompressor().decompress(data[10:10 + length]))


def test_every_layer_kind_apply_save_load_squash(tmp_path):
    model = EveryKind()
    small = ct.apply(model, mixed_plan())
    x = EveryKind.inputs(n=4, seed=3)
    y = run(small, *x)
    path = tmp_path / "every.ctz"
    written = ct.save(small, path)
    assert written == os.path.getsize(path) == ct.packed_size(small)
    assert ct.packed_size(small) < ct.reference_size(model) / 3
    again = ct.load(path, into=EveryKind())
    assert (run(again, *x) - y).abs().max() <= 1e-5
    assert ct.plan_of(again) == mixed_plan()
    assert torch.equal(again.head.weight, again.emb.weight)
    assert ct.packed_size(again) == ct.packed_size(small)
    plain = ct.squash(again)
    assert (run(plain, *x) - y).abs().max() <= 1e-5
    assert plain.head.weight is plain.emb.weight


def test_packed_size_is_the_file_size_for_plain_and_compressed_models(tmp_path):
    cases = [mlp(), ct.apply(mlp(), CompressionPlan({"0": LayerPlan(sparsity=0.9, bits=2)})),
             ct.apply(SmallCNN(), CompressionPlan.uniform(SmallCNN(), sparsity=0.5, bits=8, structured=True)),
             ct.apply(TiedLM(), CompressionPlan({"emb": LayerPlan(bits=16, sparsity=0.1)}))]
    for i, model in enumerate(cases):
        path = tmp_path / f"m{i}.ctz"
        ct.save(model, path)
        assert os.path.getsize(path) == ct.packed_size(model) == len(to_bytes(model))
        assert path.read_bytes() == to_bytes(model)  # deterministic
    assert not list(tmp_path.glob("*.tmp"))


def test_packed_size_does_not_change_during_fine_tuning():
    small = ct.apply(SmallCNN(), CompressionPlan({"conv1": LayerPlan(sparsity=0.5, bits=3, rank=2),
                                                  "conv2": LayerPlan(sparsity=0.5, structured=True, bits=16),
                                                  "fc1": LayerPlan(sparsity=0.8, bits=32), "fc2": LayerPlan(bits=5)}))
    sizes = [ct.packed_size(small)]
    (x,) = SmallCNN.inputs(n=8)
    opt = torch.optim.SGD(small.parameters(), lr=0.5, momentum=0.9)
    small.train()
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(small(x), torch.arange(8) % 5).backward()
        opt.step()
        sizes.append(ct.packed_size(small))
    assert len(set(sizes)) == 1


def test_load_into_a_fresh_model_reproduces_outputs(tmp_path):
    model = SmallCNN()
    small = ct.apply(model, CompressionPlan({"conv1": LayerPlan(sparsity=0.5, structured=True, bits=4),
                                             "conv2": LayerPlan(rank=3, bits=6), "fc1": LayerPlan(sparsity=0.6, bits=2)}))
    with torch.no_grad():  # state that is not a compressed weight must round-trip too
        small.bn1.running_mean.uniform_(-1, 1)
        small.bn1.running_var.uniform_(0.5, 2)
    small.bn1.num_batches_tracked += 7
    ct.save(small, tmp_path / "m.ctz")
    torch.manual_seed(123)
    again = ct.load(tmp_path / "m.ctz", into=SmallCNN())
    for seed in range(3):
        x = SmallCNN.inputs(n=6, seed=seed)
        assert (run(again, *x) - run(small, *x)).abs().max() <= 1e-5
    assert int(again.bn1.num_batches_tracked) == 7
    assert again.conv1.out_channels == 4


def test_reference_size_counts_unique_params_and_buffers_at_four_bytes():
    model = SmallCNN()
    expected = 4 * (sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers()))
    assert ct.reference_size(model) == expected
    tied = TiedLM()
    unique = {id(t): t for t in list(tied.parameters()) + list(tied.buffers())}
    assert ct.reference_size(tied) == 4 * sum(t.numel() for t in unique.values())
    assert ct.reference_size(tied) == 4 * (40 * 12 + 12 * 12 + 12)  # the tied weight once


def test_tied_weight_is_stored_once(tmp_path):
    plan = {"emb": LayerPlan(sparsity=0.5, bits=4), "mid": LayerPlan(bits=8)}
    tied = ct.apply(TiedLM(), CompressionPlan(plan))
    untied_model = TiedLM()
    untied_model.out.weight = nn.Parameter(untied_model.emb.weight.detach().clone())
    untied = ct.apply(untied_model, CompressionPlan({**plan, "out": LayerPlan(sparsity=0.5, bits=4)}))
    records = _header(to_bytes(tied))["records"]
    assert sum(r["t"] == "coded" for r in records) == 2  # emb and mid; out reads emb's
    one_weight = ct.packed_size(untied) - ct.packed_size(tied)
    assert one_weight >= 40 * 12 * 4 / 8 / 2  # a whole second copy of the 4-bit codes is missing
    path = tmp_path / "tied.ctz"
    ct.save(tied, path)
    again = ct.load(path, into=TiedLM())
    assert torch.equal(again.out.weight, again.emb.weight)
    x = TiedLM.inputs()
    assert (run(again, *x) - run(tied, *x)).abs().max() <= 1e-5
    # uncompressed tied weights are stored once too
    plain = TiedLM()
    assert [r["t"] for r in _header(to_bytes(plain))["records"]].count("same") == 1
    ct.save(plain, path)
    again = ct.load(path, into=TiedLM())
    assert again.out.weight is again.emb.weight


def test_module_used_twice_is_stored_once():
    lin = nn.Linear(8, 8)
    plan = CompressionPlan({"0": LayerPlan(sparsity=0.5, bits=4)})
    shared = ct.apply(nn.Sequential(lin, nn.ReLU(), lin), plan)
    single = ct.apply(nn.Sequential(nn.Linear(8, 8)), plan)
    assert sum(r["t"] == "raw" and r["lens"][0] > 0 for r in _header(to_bytes(shared))["records"]) == 1  # one bias
    assert ct.packed_size(shared) < ct.packed_size(single) + 64


def test_identity_plan_packs_exactly_like_the_plain_model():
    model = EveryKind()
    identity = ct.apply(model, CompressionPlan({name: LayerPlan() for name in ct.discover(model).layers}))
    assert to_bytes(identity) == to_bytes(model)


# -- hostile files ----------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "m.ctz"
    ct.save(ct.apply(mlp(), CompressionPlan({"0": LayerPlan(sparsity=0.5, bits=4, rank=4)})), path)
    return path


def _expect_artifact_error(path, *parts, into=None):
    with pytest.raises(ArtifactError) as info:
        ct.load(path, into=into if into is not None else mlp())
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert all(part in message for part in parts), message
    return message


def test_flipped_bytes_anywhere_are_refused(saved):
    data = saved.read_bytes()
    for pos in sorted({0, 3, 4, 6, 10, 11, len(data) // 3, len(data) // 2, len(data) - 5, len(data) - 1}):
        bad = bytearray(data)
        bad[pos] ^= 0x40
        saved.write_bytes(bytes(bad))
        message = _expect_artifact_error(saved, str(saved))
        assert any(word in message for word in ("corrupt", "magic", "version")), message


def test_truncated_files_are_refused(saved):
    data = saved.read_bytes()
    for length in (0, 3, 9, 13, 40, len(data) // 2, len(data) - 1):
        saved.write_bytes(data[:length])
        _expect_artifact_error(saved, "truncated")


def test_wrong_magic_and_other_version_are_refused(saved):
    data = saved.read_bytes()
    saved.write_bytes(b"PK\x03\x04" + data[4:])
    _expect_artifact_error(saved, "not a compresstune artifact", repr(MAGIC))
    saved.write_bytes(data[:4] + struct.pack("<H", FORMAT_VERSION + 1) + data[6:])
    _expect_artifact_error(saved, f"version must be {FORMAT_VERSION}", f"has {FORMAT_VERSION + 1}")


def _reseal(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def test_well_sealed_but_malformed_contents_are_refused(saved):
    data = saved.read_bytes()
    _, _, length = struct.unpack_from("<4sHI", data)
    header = _header(data)
    payload = data[10 + length:-4]

    def write(h, p=payload, raw_header=None):
        hb = raw_header if raw_header is not None else zstandard.ZstdCompressor().compress(json.dumps(h).encode())
        saved.write_bytes(_reseal(struct.pack("<4sHI", MAGIC, FORMAT_VERSION, len(hb)) + hb + p))

    write(None, raw_header=b"not zstd at all")
    _expect_artifact_error(saved, "unreadable header")
    write({k: v for k, v in header.items() if k != "records"})
    _expect_artifact_error(saved, "malformed header")
    write(header, payload + b"\0")
    _expect_artifact_error(saved, "payload")
    bad = json.loads(json.dumps(header))
    bad["plan"]["layers"]["0"]["bits"] = 9
    write(bad)
    _expect_artifact_error(saved, "`bits`")
    bad = json.loads(json.dumps(header))
    bad["records"][0]["t"] = "mystery"
    write(bad)
    _expect_artifact_error(saved, "unknown record type 'mystery'")


def test_artifact_for_another_model_is_refused(saved, tmp_path):
    _expect_artifact_error(saved, "does not fit `into`", "'0'", into=SmallCNN())
    wider = nn.Sequential(nn.Linear(16, 48), nn.ReLU(), nn.Linear(48, 8))
    _expect_artifact_error(saved, "different model", "(32, 4) in the file", "(48, 4) in `into`", into=wider)
    plain = tmp_path / "plain.ctz"
    ct.save(mlp(), plain)
    _expect_artifact_error(plain, "different model", into=nn.Sequential(nn.Linear(16, 32)))


def test_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ct.load(tmp_path / "nope.ctz", into=mlp())
