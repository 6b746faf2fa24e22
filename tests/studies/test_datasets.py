"""Loaders and containers of compresstune.data: real files where cheap, tiny
hand-written files for every format and every error path."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from compresstune.data import Split, Splits
from studies.datasets import load_cifar10, load_digits, load_mnist, load_tsv, tokenize

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
try:
    from PIL import Image as PIL
except ImportError:  # pragma: no cover - Pillow is a dev dependency
    PIL = None
needs_pil = pytest.mark.skipif(PIL is None, reason="Pillow is needed to write and decode the tiny JPEG fixtures")


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (see shared/data/README.md)")
    return path


# --------------------------------------------------------------------------- containers


def test_split_len_and_validation():
    s = Split(torch.zeros(5, 2), torch.arange(5))
    assert len(s) == 5
    with pytest.raises(ValueError, match="one row per label"):
        Split(torch.zeros(4, 2), torch.arange(5))
    with pytest.raises(ValueError, match="int64"):
        Split(torch.zeros(5, 2), torch.arange(5).int())
    with pytest.raises(ValueError, match="torch.Tensor"):
        Split(np.zeros((5, 2)), torch.arange(5))


def test_splits_pickle_round_trip():
    d = load_digits()
    again = pickle.loads(pickle.dumps(d))
    assert isinstance(again, Splits) and again.name == "digits"
    assert torch.equal(again.train.x, d.train.x) and again.classes == d.classes


# --------------------------------------------------------------------------- digits


def test_digits_shapes_and_range():
    d = load_digits()
    assert (d.name, d.num_classes) == ("digits", 10)
    assert len(d.train) + len(d.val) + len(d.test) == 1797
    assert abs(len(d.test) - 0.2 * 1797) <= 1 and abs(len(d.val) - 0.2 * 1797) <= 1
    for s in (d.train, d.val, d.test):
        assert s.x.dtype == torch.float32 and s.x.shape[1:] == (1, 8, 8)
        assert s.y.dtype == torch.int64 and set(s.y.tolist()) == set(range(10))
        assert float(s.x.min()) >= 0.0 and float(s.x.max()) <= 1.0
    assert float(d.train.x.max()) == 1.0


def test_digits_seed_moves_train_val_but_not_test():
    a, b, c = load_digits(seed=0), load_digits(seed=0), load_digits(seed=1)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.y, b.val.y)
    assert not torch.equal(a.val.x, c.val.x)
    assert torch.equal(a.test.x, c.test.x) and torch.equal(a.test.y, c.test.y)


@pytest.mark.parametrize("kwargs, name", [
    ({"val_fraction": 0.0}, "val_fraction"),
    ({"test_fraction": 1.5}, "test_fraction"),
    ({"val_fraction": 0.5, "test_fraction": 0.45}, "val_fraction"),
    ({"seed": -1}, "seed"),
    ({"seed": 1.5}, "seed"),
])
def test_digits_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        load_digits(**kwargs)


# --------------------------------------------------------------------------- MNIST


def _idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    head = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return head + arr.astype(np.uint8).tobytes()


def _write(path: Path, raw: bytes) -> Path:
    if path.suffix == ".gz":
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


def _tiny_mnist(folder: Path, *, gz: bool = True, n_train: int = 20, n_test: int = 6) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": (rng.integers(0, 256, (n_train, 28, 28)), 0x803),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10, 0x801),
        "t10k-images-idx3-ubyte": (rng.integers(0, 256, (n_test, 28, 28)), 0x803),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10, 0x801),
    }
    for stem, (arr, magic) in arrays.items():
        _write(folder / (stem + (".gz" if gz else "")), _idx_bytes(arr, magic))
    return {k: v[0] for k, v in arrays.items()}


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_tiny_round_trip(tmp_path, gz):
    arrays = _tiny_mnist(tmp_path, gz=gz)
    m = load_mnist(tmp_path, val_size=4, seed=3)
    assert (len(m.train), len(m.val), len(m.test)) == (16, 4, 6)
    assert m.train.x.dtype == torch.uint8 and m.train.x.shape[1:] == (1, 28, 28)
    assert torch.equal(m.test.x[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"].astype(np.uint8)))
    # train + val is exactly the training file, each row with its own label
    x = torch.cat([m.train.x, m.val.x])[:, 0].reshape(20, -1)
    y = torch.cat([m.train.y, m.val.y])
    src = torch.from_numpy(arrays["train-images-idx3-ubyte"].astype(np.uint8)).reshape(20, -1)
    for row, label in zip(x, y):
        hits = (src == row).all(dim=1).nonzero().flatten().tolist()
        assert hits and all(h % 10 == int(label) for h in hits)
    assert len({tuple(r.tolist()) for r in x}) == 20


def test_mnist_split_is_seeded(tmp_path):
    _tiny_mnist(tmp_path)
    a, b, c = (load_mnist(tmp_path, val_size=5, seed=s) for s in (1, 1, 2))
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.y, b.train.y)
    assert not torch.equal(a.val.x, c.val.x)


def test_mnist_relative_path_resolves_against_cwd(tmp_path, monkeypatch):
    _tiny_mnist(tmp_path / "sub")
    monkeypatch.chdir(tmp_path)
    assert len(load_mnist("sub", val_size=2).test) == 6


def test_mnist_missing_folder_and_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_mnist(tmp_path / "nowhere")
    _tiny_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_mnist(tmp_path)


def test_mnist_bad_magic(tmp_path):
    _tiny_mnist(tmp_path)
    labels = _idx_bytes(np.zeros(20), 0x801)
    _write(tmp_path / "train-images-idx3-ubyte.gz", labels)  # a labels file where images belong
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz: bad magic number 0x00000801.*0x00000803"):
        load_mnist(tmp_path)


def test_mnist_empty_file(tmp_path):
    _tiny_mnist(tmp_path)
    _write(tmp_path / "train-labels-idx1-ubyte.gz", b"")
    with pytest.raises(ValueError, match="bad magic number nothing"):
        load_mnist(tmp_path)


def test_mnist_not_gzip(tmp_path):
    _tiny_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"plain bytes, not gzip")
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz: cannot read"):
        load_mnist(tmp_path)


def test_mnist_count_mismatch(tmp_path):
    _tiny_mnist(tmp_path)
    _write(tmp_path / "train-labels-idx1-ubyte.gz", _idx_bytes(np.zeros(19), 0x801))
    with pytest.raises(ValueError, match="19 labels .* 20 images"):
        load_mnist(tmp_path)


def test_mnist_truncated_data(tmp_path):
    _tiny_mnist(tmp_path)
    raw = _idx_bytes(np.zeros((20, 28, 28)), 0x803)[:-5]
    _write(tmp_path / "train-images-idx3-ubyte.gz", raw)
    with pytest.raises(ValueError, match=r"shape \(20, 28, 28\).*holds"):
        load_mnist(tmp_path)


def test_mnist_bad_label(tmp_path):
    _tiny_mnist(tmp_path)
    _write(tmp_path / "t10k-labels-idx1-ubyte.gz", _idx_bytes(np.array([0, 1, 2, 3, 4, 12]), 0x801))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\); found 12"):
        load_mnist(tmp_path)


@pytest.mark.parametrize("val_size", [0, 20, 25, "5"])
def test_mnist_bad_val_size(tmp_path, val_size):
    _tiny_mnist(tmp_path)
    with pytest.raises(ValueError, match="val_size"):
        load_mnist(tmp_path, val_size=val_size)


def test_mnist_real_files():
    folder = _need(SHARED / "mnist")
    m = load_mnist(folder)
    assert (len(m.train), len(m.val), len(m.test)) == (55000, 5000, 10000)
    assert m.train.x.shape[1:] == (1, 28, 28) and m.train.x.dtype == torch.uint8
    assert m.test.y.bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # the parsed test set, written back as idx, is byte-identical to the official files
    images = _idx_bytes(m.test.x[:, 0].numpy(), 0x803)
    labels = _idx_bytes(m.test.y.numpy(), 0x801)
    assert hashlib.md5(images).hexdigest() == "2646ac647ad5339dbf082846283269ea"
    assert hashlib.md5(labels).hexdigest() == "27ae3e4e09519cfbb04c329615203637"


# --------------------------------------------------------------------------- CIFAR-10

COLORS = {"cat": (200, 30, 30), "dog": (30, 30, 200)}


def _jpeg(color, size=(32, 32), fmt="JPEG") -> bytes:
    buf = io.BytesIO()
    PIL.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def _tiny_tree(root: Path, n_train: int = 3, n_test: int = 2) -> Path:
    for split, n in (("train", n_train), ("test", n_test)):
        for cls, color in COLORS.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (root / split / cls / f"{i:04d}.jpg").write_bytes(_jpeg(color))
    return root


def _tar(tree: Path, archive: Path, prefix: str = "cifar") -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname=prefix)
        info = tarfile.TarInfo(f"{prefix}/README.md")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    return archive


def _check_tiny(c: Splits, n_train: int = 6, val: int = 2) -> None:
    assert c.name == "cifar10" and c.classes == ("cat", "dog") and c.num_classes == 2
    assert (len(c.train), len(c.val), len(c.test)) == (n_train - val, val, 4)
    assert c.train.x.dtype == torch.uint8 and c.train.x.shape[1:] == (3, 32, 32)
    assert c.test.y.tolist() == [0, 0, 1, 1]
    for split in (c.train, c.val, c.test):
        for x, y in zip(split.x, split.y):
            expected = torch.tensor(COLORS[c.classes[int(y)]], dtype=torch.float32).view(3, 1, 1)
            assert (x.float() - expected).abs().max() <= 8  # JPEG is lossy


@needs_pil
def test_cifar_folder_and_archive(tmp_path):
    tree = _tiny_tree(tmp_path / "tree")
    _check_tiny(load_cifar10(tree, val_size=2))
    _check_tiny(load_cifar10(_tar(tree, tmp_path / "c.tar.gz"), val_size=2))


@needs_pil
def test_cifar_archive_order_does_not_matter(tmp_path):
    tree = _tiny_tree(tmp_path / "tree")
    for i in range(3):  # make every image distinct so that order is visible
        (tree / "train" / "cat" / f"{i:04d}.jpg").write_bytes(_jpeg((200, 30 + 40 * i, 30)))
    archive = tmp_path / "reversed.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for f in sorted(tree.rglob("*.jpg"), reverse=True):
            tar.add(f, arcname=str(f.relative_to(tree)))
    a, b = load_cifar10(tree, val_size=1), load_cifar10(archive, val_size=1)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.train.y, b.train.y)
    assert torch.equal(a.test.x, b.test.x) and a.classes == b.classes


@needs_pil
def test_cifar_png_images_are_read(tmp_path):
    tree = _tiny_tree(tmp_path / "tree")
    (tree / "train" / "cat" / "extra.png").write_bytes(_jpeg(COLORS["cat"], fmt="PNG"))
    c = load_cifar10(tree, val_size=1)
    assert len(c.train) + len(c.val) == 7


@needs_pil
def test_cifar_cache_is_written_and_reused(tmp_path, monkeypatch):
    archive = _tar(_tiny_tree(tmp_path / "tree"), tmp_path / "c.tar.gz")
    first = load_cifar10(archive, cache_dir=tmp_path / "cache", val_size=2)
    cached = list((tmp_path / "cache").glob("cifar10-*.npz"))
    assert len(cached) == 1
    monkeypatch.setitem(sys.modules, "PIL", None)  # decoding would now fail: only the cache can serve
    again = load_cifar10(archive, cache_dir=tmp_path / "cache", val_size=2)
    assert torch.equal(first.train.x, again.train.x) and torch.equal(first.test.y, again.test.y)
    with pytest.raises(ImportError, match="Pillow"):
        load_cifar10(archive, val_size=2)  # no cache_dir: must decode


@needs_pil
def test_cifar_cache_follows_source_changes(tmp_path):
    tree = _tiny_tree(tmp_path / "tree")
    load_cifar10(tree, cache_dir=tmp_path / "cache", val_size=2)
    (tree / "train" / "dog" / "0009.jpg").write_bytes(_jpeg(COLORS["dog"]))
    c = load_cifar10(tree, cache_dir=tmp_path / "cache", val_size=2)
    assert len(c.train) + len(c.val) == 7
    assert len(list((tmp_path / "cache").glob("cifar10-*.npz"))) == 2


@needs_pil
def test_cifar_corrupt_cache_is_rebuilt(tmp_path):
    tree = _tiny_tree(tmp_path / "tree")
    load_cifar10(tree, cache_dir=tmp_path / "cache", val_size=2)
    (cache,) = (tmp_path / "cache").glob("cifar10-*.npz")
    cache.write_bytes(b"garbage")
    _check_tiny(load_cifar10(tree, cache_dir=tmp_path / "cache", val_size=2))
    with np.load(cache) as z:
        assert z["x_train"].shape == (6, 3, 32, 32)


def test_cifar_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.tar.gz"):
        load_cifar10(tmp_path / "nothing.tar.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        load_cifar10(tmp_path / "empty")


@needs_pil
def test_cifar_wrong_image_size(tmp_path):
    tree = _tiny_tree(tmp_path / "tree")
    (tree / "test" / "dog" / "0001.jpg").write_bytes(_jpeg(COLORS["dog"], size=(16, 16)))
    with pytest.raises(ValueError, match=r"0001.jpg: CIFAR-10 images are 32x32; got 16x16"):
        load_cifar10(tree)


@needs_pil
def test_cifar_undecodable_image(tmp_path):
    tree = _tiny_tree(tmp_path / "tree")
    (tree / "train" / "cat" / "0000.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="0000.jpg: cannot decode"):
        load_cifar10(tree)


@needs_pil
def test_cifar_test_class_without_training_images(tmp_path):
    tree = _tiny_tree(tmp_path / "tree")
    (tree / "test" / "frog").mkdir()
    (tree / "test" / "frog" / "0000.jpg").write_bytes(_jpeg((0, 200, 0)))
    with pytest.raises(ValueError, match=r"test classes \['frog'\]"):
        load_cifar10(tree)


@needs_pil
def test_cifar_archive_without_test_images(tmp_path):
    tree = _tiny_tree(tmp_path / "tree", n_test=0)
    with pytest.raises(ValueError, match="no test images found"):
        load_cifar10(_tar(tree, tmp_path / "c.tar.gz"))


@needs_pil
def test_cifar_truncated_archive(tmp_path):
    archive = _tar(_tiny_tree(tmp_path / "tree"), tmp_path / "c.tar.gz")
    archive.write_bytes(archive.read_bytes()[:300])
    with pytest.raises(ValueError, match="c.tar.gz: cannot read the archive"):
        load_cifar10(archive)


def _batches(folder: Path, *, protocol: int = 2, n: int = 2, bytes_keys: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    key = (lambda k: k.encode()) if bytes_keys else (lambda k: k)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {key("data"): rng.integers(0, 256, (n, 3072), dtype=np.uint8), key("labels"): [3, 7][:n]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    meta = {key("label_names"): [f"c{i}".encode() for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return folder


@pytest.mark.parametrize("protocol, bytes_keys", [(2, True), (pickle.DEFAULT_PROTOCOL, False)])
def test_cifar_python_batches(tmp_path, protocol, bytes_keys):
    folder = _batches(tmp_path / "cifar-10-batches-py", protocol=protocol, bytes_keys=bytes_keys)
    c = load_cifar10(folder, val_size=3)
    assert (len(c.train), len(c.val), len(c.test)) == (7, 3, 2)
    assert c.classes == tuple(f"c{i}" for i in range(10)) and c.num_classes == 10
    raw = pickle.loads((folder / "test_batch").read_bytes())
    data = raw[b"data" if bytes_keys else "data"]
    assert torch.equal(c.test.x, torch.from_numpy(data.reshape(2, 3, 32, 32)))
    assert c.test.y.tolist() == [3, 7]
    assert len(load_cifar10(tmp_path, val_size=3).test) == 2  # the parent folder works too


def test_cifar_batches_missing_one(tmp_path):
    folder = _batches(tmp_path / "b")
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_cifar10(folder)


def test_cifar_batches_count_mismatch_and_bad_label(tmp_path):
    folder = _batches(tmp_path / "b")
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}
    (folder / "data_batch_2").write_bytes(pickle.dumps(batch))
    with pytest.raises(ValueError, match="data_batch_2: holds 1 labels for 2 images"):
        load_cifar10(folder)
    batch[b"labels"] = [1, 10]
    (folder / "data_batch_2").write_bytes(pickle.dumps(batch))
    with pytest.raises(ValueError, match=r"data_batch_2: labels must lie in \[0, 10\); found 10"):
        load_cifar10(folder)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar_batches_refuse_arbitrary_code(tmp_path):
    folder = _batches(tmp_path / "b")
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    with pytest.raises(ValueError, match="test_batch: not a CIFAR-10 python batch.*refusing"):
        load_cifar10(folder)


@needs_pil
def test_cifar_real_archive_members_are_laid_out_as_expected():
    # Decoding all 60,000 images takes ~10 s, too slow here; check the layout the loader relies on.
    archive = _need(SHARED / "cifar10-jpg.tar.gz")
    with tarfile.open(archive, "r:gz") as tar:
        first = [m for _, m in zip(range(30), tar) if m.isfile() and m.name.endswith(".jpg")]
        data = tar.extractfile(first[0]).read()
    split, cls = Path(first[0].name).parts[-3:-1]
    assert split in ("train", "test") and cls in ("airplane", "automobile", "bird", "cat", "deer",
                                                   "dog", "frog", "horse", "ship", "truck")
    assert PIL.open(io.BytesIO(data)).size == (32, 32)


# --------------------------------------------------------------------------- TSV


def _tsv(path: Path, rows, header="sentence\tlabel") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def tiny_tsv(tmp_path):
    train = _tsv(tmp_path / "train.tsv", [
        "a good film .\t1", "a bad film .\t0", "good , good fun\t1",
        "bad acting and a dull plot\t0", "it 's good\t1",
    ])
    dev = _tsv(tmp_path / "dev.tsv", ["a superb film\t1", "bad\t0"])
    test = _tsv(tmp_path / "test.tsv", ["good film\t1", "dull dull dull\t0"])
    return train, dev, test


def test_tokenize():
    assert tokenize("It 's a Charming, well-made film!") == [
        "it", "'s", "a", "charming", ",", "well", "-", "made", "film", "!"]
    assert tokenize("does n't  work") == ["does", "n't", "work"]


def test_tsv_vocab_from_train_only(tiny_tsv):
    s = load_tsv(*tiny_tsv, max_len=6)
    assert s.vocab[:2] == ("<pad>", "<unk>")
    # frequency order, ties alphabetical; min_freq=2 keeps tokens seen twice in train
    assert s.vocab[2:] == ("good", "a", ".", "bad", "film")
    assert "superb" not in s.vocab and "dull" not in s.vocab  # dev/test words never enter
    ids = {t: i for i, t in enumerate(s.vocab)}
    assert s.val.x[0].tolist() == [ids["a"], 1, ids["film"], 0, 0, 0]
    assert s.test.x[1].tolist() == [1, 1, 1, 0, 0, 0]
    assert s.train.x.dtype == torch.int64 and s.train.x.shape == (5, 6)
    assert s.train.y.tolist() == [1, 0, 1, 0, 1] and s.num_classes == 2
    assert (len(s.val), len(s.test)) == (2, 2)


def test_tsv_max_len_vocab_size_min_freq(tiny_tsv):
    s = load_tsv(*tiny_tsv, max_len=2, vocab_size=4, min_freq=1)
    assert s.vocab == ("<pad>", "<unk>", "good", "a")
    assert s.train.x.shape == (5, 2)
    assert s.train.x[3].tolist() == [1, 1]  # "bad acting": both beyond the 4-word vocabulary


def test_tsv_carves_val_when_dev_is_none(tiny_tsv):
    train, _, test = tiny_tsv
    a = load_tsv(train, None, test, val_size=2, seed=0)
    b = load_tsv(train, None, test, val_size=2, seed=0)
    assert (len(a.train), len(a.val)) == (3, 2) and torch.equal(a.val.x, b.val.x)


def test_tsv_finds_columns_by_name(tmp_path, tiny_tsv):
    train, dev, _ = tiny_tsv
    test = _tsv(tmp_path / "idx.tsv", ["0\t1\tgood film", "1\t0\tbad"], header="index\tlabel\tsentence")
    s = load_tsv(train, dev, test)
    assert s.test.y.tolist() == [1, 0] and s.test.x[1, 0].item() == s.vocab.index("bad")


def test_tsv_errors(tmp_path, tiny_tsv):
    train, dev, test = tiny_tsv
    with pytest.raises(FileNotFoundError, match="missing.tsv"):
        load_tsv(train, tmp_path / "missing.tsv", test)
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(ValueError, match="empty.tsv: empty file"):
        load_tsv(tmp_path / "empty.tsv", dev, test)
    with pytest.raises(ValueError, match="header.tsv: no rows"):
        load_tsv(_tsv(tmp_path / "header.tsv", []), dev, test)
    with pytest.raises(ValueError, match="cols.tsv: the header must name"):
        load_tsv(_tsv(tmp_path / "cols.tsv", ["a\t1"], header="text\ttarget"), dev, test)
    with pytest.raises(ValueError, match=r"word.tsv:3: the label must be a non-negative integer; got 'pos'"):
        load_tsv(train, _tsv(tmp_path / "word.tsv", ["fine\t1", "nice\tpos"]), test)
    with pytest.raises(ValueError, match=r"neg.tsv:2: .* got '-1'"):
        load_tsv(train, dev, _tsv(tmp_path / "neg.tsv", ["fine\t-1"]))
    with pytest.raises(ValueError, match=r"fields.tsv:2: expected 2 tab-separated fields; got 3"):
        load_tsv(train, dev, _tsv(tmp_path / "fields.tsv", ["a\tb\t1"]))
    with pytest.raises(ValueError, match=r"big.tsv .*labels must lie in \[0, 2\); found 2"):
        load_tsv(train, dev, _tsv(tmp_path / "big.tsv", ["fine\t2"]))
    with pytest.raises(ValueError, match="at least 2 classes"):
        load_tsv(_tsv(tmp_path / "one.tsv", ["a\t0", "b\t0"]), dev, test)
    with pytest.raises(ValueError, match="max_len"):
        load_tsv(train, dev, test, max_len=0)


def test_tsv_real_sst2():
    folder = _need(SHARED / "sst2")
    s = load_tsv(folder / "train.tsv", folder / "dev.tsv", folder / "test.tsv", name="sst2")
    assert (len(s.train), len(s.val), len(s.test)) == (60614, 6735, 872)
    assert s.test.y.bincount().tolist() == [428, 444]
    assert s.name == "sst2" and s.num_classes == 2 and 2 < len(s.vocab) <= 20000
    assert int(s.train.x.max()) == len(s.vocab) - 1
