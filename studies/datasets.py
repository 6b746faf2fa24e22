"""Loaders of the example studies' datasets: digits, MNIST, CIFAR-10, SST-2 (TSV).

Every loader returns a :class:`compresstune.data.Splits`: three
:class:`~compresstune.data.Split` objects held as tensors plus the class count and a name.
The validation split is always carved from the training data with a fixed seed;
the test split is the official test set and is never used for selection.

Loaders read local files only and never download anything. A missing or
malformed file raises ``FileNotFoundError`` or ``ValueError`` naming the path and
what was expected.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import re
import tarfile
import tempfile
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

import numpy as np
import torch

from compresstune.data import Split, Splits

__all__ = [
    "CIFAR10_CLASSES",
    "load_cifar10",
    "load_digits",
    "load_mnist",
    "load_tsv",
    "tokenize",
]

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
PAD_ID = 0
UNK_ID = 1
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_CIFAR_CACHE_VERSION = 1


# --------------------------------------------------------------------------- helpers


def _check_int(name: str, value, low: int, high: int | None = None) -> None:
    bad = isinstance(value, bool) or not isinstance(value, int)
    if bad or value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"`{name}` must be an integer {allowed}; got {value!r}.")


def _as_path(path, what: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"`path` must be a str or os.PathLike pointing to {what}; got {path!r}.")
    return Path(path).expanduser().absolute()


def _carve(x: torch.Tensor, y: torch.Tensor, val_size: int, seed: int) -> tuple[Split, Split]:
    """Split off ``val_size`` random rows as validation; both parts keep file order."""
    n = len(y)
    if val_size >= n:
        raise ValueError(
            f"`val_size` must be smaller than the {n} training examples; got {val_size}."
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx = perm[:val_size].sort().values
    train_idx = perm[val_size:].sort().values
    return Split(x[train_idx], y[train_idx]), Split(x[val_idx], y[val_idx])


def _check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise ValueError(f"{where}: labels must lie in [0, {num_classes}); found {int(bad)}.")


# --------------------------------------------------------------------------- digits


def load_digits(*, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0) -> Splits:
    """scikit-learn's bundled 8x8 digits (1,797 images), no files needed.

    The digits have no official test set, so one is carved with a fixed seed
    that does not depend on ``seed``: changing ``seed`` reshuffles train and
    validation only, and the test images stay the same. Both cuts are
    stratified by class.

    Args:
        val_fraction: fraction of all images used for validation.
        test_fraction: fraction of all images held out as the test set.
        seed: seed of the train/validation cut.

    Returns:
        Splits with ``x`` float32 ``(N, 1, 8, 8)`` scaled to ``[0, 1]``.

    Example:
        >>> d = load_digits(seed=1)
        >>> tuple(d.train.x.shape[1:]), d.train.x.dtype
        ((1, 8, 8), torch.float32)
    """
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ValueError(f"`{name}` must be a number in (0, 1); got {value!r}.")
    if val_fraction + test_fraction >= 0.9:
        raise ValueError(
            f"`val_fraction` + `test_fraction` must be below 0.9 to leave training data; "
            f"got {val_fraction} + {test_fraction}."
        )
    _check_int("seed", seed, 0)
    bunch = _sk_load_digits()
    x = torch.from_numpy((bunch.images / 16.0).astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=test_fraction, random_state=0, stratify=y.numpy())
    val_share = val_fraction / (1.0 - test_fraction)
    train, val = train_test_split(
        rest, test_size=val_share, random_state=seed, stratify=y.numpy()[rest]
    )

    def part(i: np.ndarray) -> Split:
        i = torch.from_numpy(np.sort(i))
        return Split(x[i], y[i])

    classes = tuple(str(c) for c in range(10))
    return Splits(part(train), part(val), part(test), 10, "digits", classes=classes)


# --------------------------------------------------------------------------- MNIST (idx)

_IDX_MAGIC = {"images": (0x0803, 3), "labels": (0x0801, 1)}


def _find_idx(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"MNIST file not found: expected {folder / stem} or {folder / stem}.gz "
        f"(the idx files {{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte[.gz])."
    )


def _read_idx(path: Path, kind: str) -> np.ndarray:
    """Read one idx file (optionally gzipped) holding unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read the idx file ({e}).") from e
    magic, ndim = _IDX_MAGIC[kind]
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if found != magic:
        shown = "nothing" if found is None else f"0x{found:08x}"
        raise ValueError(
            f"{path}: bad magic number {shown}; an idx file of {kind} starts with 0x{magic:08x} "
            f"(unsigned bytes, {ndim} dimension{'s' if ndim > 1 else ''})."
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated idx header ({len(raw)} bytes, expected {header}).")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise ValueError(
            f"{path}: the header announces shape {tuple(dims)} ({expected} bytes in all) "
            f"but the file holds {len(raw)} bytes."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _read_mnist_part(folder: Path, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    images_path = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
    images = _read_idx(images_path, "images")
    labels = _read_idx(labels_path, "labels")
    if len(images) != len(labels):
        raise ValueError(
            f"{labels_path}: holds {len(labels)} labels but {images_path} holds "
            f"{len(images)} images; they must match."
        )
    _check_labels(labels, 10, str(labels_path))
    x = torch.from_numpy(images).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def load_mnist(path, *, val_size: int = 5000, seed: int = 0) -> Splits:
    """MNIST from the standard idx files, plain or gzipped.

    Args:
        path: folder holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` with
            or without ``.gz``; a relative path is resolved against the current
            directory.
        val_size: number of training images held out for validation.
        seed: seed of the train/validation cut.

    Returns:
        Splits with ``x`` uint8 ``(N, 1, 28, 28)``: 60,000 - ``val_size`` train,
        ``val_size`` validation and the 10,000 official test images.

    Example:
        >>> m = load_mnist("../shared/data/mnist")  # doctest: +SKIP
        >>> len(m.train), len(m.val), len(m.test)  # doctest: +SKIP
        (55000, 5000, 10000)
    """
    folder = _as_path(path, "the MNIST folder")
    _check_int("val_size", val_size, 1)
    _check_int("seed", seed, 0)
    if not folder.is_dir():
        raise FileNotFoundError(f"MNIST folder not found: {folder} (expected a folder of idx files).")
    x, y = _read_mnist_part(folder, "train")
    x_test, y_test = _read_mnist_part(folder, "t10k")
    train, val = _carve(x, y, val_size, seed)
    classes = tuple(str(c) for c in range(10))
    return Splits(train, val, Split(x_test, y_test), 10, "mnist", classes=classes)


# --------------------------------------------------------------------------- CIFAR-10


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches without running arbitrary code from the file."""

    def find_class(self, module: str, name: str):
        allowed = {"_reconstruct", "_frombuffer", "ndarray", "dtype", "encode"}
        numpy_module = module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray",
                                  "numpy.core.numeric", "numpy._core.numeric")
        if name in allowed and (numpy_module or (module, name) == ("_codecs", "encode")):
            # Old pickles name numpy.core, which numpy 2 renamed numpy._core.
            for candidate in (module.replace("numpy.core", "numpy._core"), module):
                try:
                    return super().find_class(candidate, name)
                except (ImportError, AttributeError):
                    continue
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({e}).") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: a CIFAR-10 batch is a dict; got {type(obj).__name__}.")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(
            f"CIFAR-10 batch not found: {path} (the python batches folder holds "
            f"data_batch_1 .. data_batch_5 and test_batch)."
        )
    batch = _unpickle(path)
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"{path}: a CIFAR-10 batch needs the keys 'data' and 'labels'; got {sorted(batch)}.")
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: 'data' must have shape (N, 3072); got {data.shape}.")
    if len(labels) != len(data):
        raise ValueError(f"{path}: holds {len(labels)} labels for {len(data)} images; they must match.")
    _check_labels(labels, 10, str(path))
    return data.reshape(-1, 3, 32, 32), labels


def _decode_batches(folder: Path) -> dict:
    parts = [_read_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = _read_batch(folder / "test_batch")
    classes = CIFAR10_CLASSES
    meta = folder / "batches.meta"
    if meta.is_file():
        names = _unpickle(meta).get("label_names")
        if names is not None and len(names) == 10:
            classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    return {
        "x_train": np.concatenate([p[0] for p in parts]),
        "y_train": np.concatenate([p[1] for p in parts]),
        "x_test": x_test,
        "y_test": y_test,
        "classes": np.array(classes),
    }


def _decode_image(data: bytes, where: str) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "load_cifar10 needs Pillow to decode images: pip install 'compresstune[data]'"
        ) from e
    try:
        with Image.open(io.BytesIO(data)) as im:
            rgb = np.asarray(im.convert("RGB"))
    except Exception as e:  # Pillow raises several unrelated types for bad files
        raise ValueError(f"{where}: cannot decode the image ({e}).") from e
    if rgb.shape != (32, 32, 3):
        raise ValueError(f"{where}: CIFAR-10 images are 32x32; got {rgb.shape[1]}x{rgb.shape[0]}.")
    return rgb.transpose(2, 0, 1)


def _image_entries_from_tar(archive: Path) -> Iterable[tuple[str, str, str, bytes]]:
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if not member.isfile() or len(parts) < 3 or parts[-3] not in ("train", "test"):
                    continue
                if not parts[-1].lower().endswith(_IMAGE_SUFFIXES):
                    continue
                data = tar.extractfile(member).read()
                yield parts[-3], parts[-2], f"{archive}:{member.name}", data
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ValueError(f"{archive}: cannot read the archive ({e}).") from e


def _image_entries_from_folder(root: Path) -> Iterable[tuple[str, str, str, bytes]]:
    for split in ("train", "test"):
        for class_dir in sorted(p for p in (root / split).iterdir() if p.is_dir()):
            for f in sorted(class_dir.iterdir()):
                if f.is_file() and f.suffix.lower() in _IMAGE_SUFFIXES:
                    yield split, class_dir.name, str(f), f.read_bytes()


def _decode_images(entries: Iterable[tuple[str, str, str, bytes]], source: Path) -> dict:
    found: dict[str, list[tuple[str, str, np.ndarray]]] = {"train": [], "test": []}
    for split, cls, where, data in entries:
        found[split].append((cls, where, _decode_image(data, where)))
    for split, items in found.items():
        if not items:
            raise ValueError(
                f"{source}: no {split} images found; expected {split}/<class>/*.jpg "
                f"(also .jpeg or .png)."
            )
    classes = sorted({cls for cls, _, _ in found["train"]})
    extra = sorted({cls for cls, _, _ in found["test"]} - set(classes))
    if extra:
        raise ValueError(f"{source}: test classes {extra} have no training images (train classes: {classes}).")
    out = {"classes": np.array(classes)}
    for split, items in found.items():
        items.sort(key=lambda t: (t[0], t[1]))  # archive order is arbitrary; fix it
        out[f"x_{split}"] = np.stack([img for _, _, img in items])
        out[f"y_{split}"] = np.array([classes.index(cls) for cls, _, _ in items], dtype=np.int64)
    return out


def _cifar_source(path: Path) -> tuple[str, Path]:
    if path.is_file():
        return "archive", path
    if not path.is_dir():
        raise FileNotFoundError(
            f"CIFAR-10 source not found: {path} (expected the JPEG .tar.gz archive, a folder "
            f"with train/<class>/*.jpg and test/<class>/*.jpg, or the python batches folder)."
        )
    if (path / "train").is_dir() and (path / "test").is_dir():
        return "folder", path
    if (path / "data_batch_1").exists() or (path / "test_batch").exists():
        return "batches", path
    nested = path / "cifar-10-batches-py"
    if nested.is_dir():
        return "batches", nested
    raise FileNotFoundError(
        f"{path}: neither train/ and test/ class folders nor CIFAR-10 python batches "
        f"(data_batch_1 .. data_batch_5, test_batch) found there."
    )


def _source_fingerprint(kind: str, path: Path) -> str:
    """Changes whenever the source files change, so a stale cache is never read."""
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{_CIFAR_CACHE_VERSION}|{kind}|{path}".encode())
    files = [path] if kind == "archive" else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        st = f.stat()
        h.update(f"|{f.relative_to(path) if f != path else ''}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


_CIFAR_KEYS = ("x_train", "y_train", "x_test", "y_test", "classes")


def _read_cache(path: Path) -> dict | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in _CIFAR_KEYS}
    except (OSError, KeyError, ValueError, EOFError):
        return None  # missing or corrupt: decode again and overwrite it
    return arrays


def _write_cache(path: Path, arrays: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write-then-rename keeps readers (other processes, Ray workers) from ever
    # seeing a half-written cache.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache is meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _decode_cifar(kind: str, source: Path) -> dict:
    if kind == "batches":
        return _decode_batches(source)
    if kind == "archive":
        return _decode_images(_image_entries_from_tar(source), source)
    return _decode_images(_image_entries_from_folder(source), source)


def load_cifar10(path, *, cache_dir=None, val_size: int = 5000, seed: int = 0) -> Splits:
    """CIFAR-10 from the JPEG archive, an extracted JPEG folder, or the python batches.

    JPEGs are decoded once with Pillow (about 11 s for 60,000 images); with
    ``cache_dir`` the decoded arrays are kept there as ``.npz`` and reused while
    the source files are unchanged. Class labels follow the sorted class-folder
    names, which for CIFAR-10 is the official label order.

    Args:
        path: the ``.tar.gz`` archive of ``{train,test}/<class>/*.jpg``, the same
            tree extracted, or the folder with ``data_batch_1`` .. ``data_batch_5``
            and ``test_batch``. Relative paths resolve against the current directory.
        cache_dir: folder for the decoded-array cache; ``None`` disables it.
        val_size: number of training images held out for validation.
        seed: seed of the train/validation cut.

    Returns:
        Splits with ``x`` uint8 ``(N, 3, 32, 32)``.

    Example:
        >>> c = load_cifar10("../shared/data/cifar10-jpg.tar.gz", cache_dir=".cache")  # doctest: +SKIP
        >>> len(c.train), len(c.val), len(c.test), c.classes[0]  # doctest: +SKIP
        (45000, 5000, 10000, 'airplane')
    """
    source = _as_path(path, "the CIFAR-10 archive or folder")
    _check_int("val_size", val_size, 1)
    _check_int("seed", seed, 0)
    kind, source = _cifar_source(source)
    arrays = None
    if cache_dir is not None:
        cache_file = _as_path(cache_dir, "a cache folder") / f"cifar10-{_source_fingerprint(kind, source)}.npz"
        arrays = _read_cache(cache_file) if cache_file.is_file() else None
    if arrays is None:
        arrays = _decode_cifar(kind, source)
        if cache_dir is not None:
            _write_cache(cache_file, arrays)
    classes = tuple(str(c) for c in arrays["classes"])
    x, y = torch.from_numpy(arrays["x_train"]), torch.from_numpy(arrays["y_train"].astype(np.int64))
    train, val = _carve(x, y, val_size, seed)
    test = Split(torch.from_numpy(arrays["x_test"]), torch.from_numpy(arrays["y_test"].astype(np.int64)))
    return Splits(train, val, test, len(classes), "cifar10", classes=classes)


# --------------------------------------------------------------------------- TSV text

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*|'[a-z0-9]+|[^\sa-z0-9]")


def tokenize(text: str) -> list[str]:
    """Lowercase and split into words, clitics (``'s``, ``n't``) and punctuation.

    Example:
        >>> tokenize("It 's a charming, well-made film!")
        ['it', "'s", 'a', 'charming', ',', 'well', '-', 'made', 'film', '!']
    """
    return _TOKEN.findall(text.lower())


def _read_tsv(path: Path) -> tuple[list[str], list[int]]:
    if not path.is_file():
        raise FileNotFoundError(f"TSV file not found: {path} (expected `sentence<TAB>label` rows with a header).")
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if not lines or not lines[0].strip():
        raise ValueError(f"{path}: empty file; expected a header line `sentence<TAB>label` and rows.")
    header = [h.strip().lower() for h in lines[0].split("\t")]
    if "sentence" not in header or "label" not in header:
        raise ValueError(f"{path}: the header must name the columns 'sentence' and 'label'; got {header}.")
    s_col, l_col = header.index("sentence"), header.index("label")
    sentences, labels = [], []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            raise ValueError(f"{path}:{number}: expected {len(header)} tab-separated fields; got {len(fields)}.")
        label = fields[l_col].strip()
        if not label.isdigit():
            raise ValueError(f"{path}:{number}: the label must be a non-negative integer; got {label!r}.")
        sentences.append(fields[s_col])
        labels.append(int(label))
    if not sentences:
        raise ValueError(f"{path}: no rows after the header.")
    return sentences, labels


def _build_vocab(sentences: Sequence[list[str]], vocab_size: int, min_freq: int) -> tuple[str, ...]:
    counts = Counter(tok for toks in sentences for tok in toks)
    kept = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
    return ("<pad>", "<unk>", *kept[: vocab_size - 2])


def _encode(token_lists: Sequence[list[str]], index: dict[str, int], max_len: int) -> torch.Tensor:
    out = torch.full((len(token_lists), max_len), PAD_ID, dtype=torch.int64)
    for row, toks in enumerate(token_lists):
        ids = [index.get(t, UNK_ID) for t in toks[:max_len]]
        out[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
    return out


def load_tsv(
    path_train,
    path_dev,
    path_test,
    *,
    max_len: int = 64,
    vocab_size: int = 20000,
    min_freq: int = 2,
    val_size: int = 1000,
    seed: int = 0,
    name: str = "text",
) -> Splits:
    """Sentence-classification data from ``sentence<TAB>label`` files with a header.

    The vocabulary is built from the training file only (most frequent first,
    ties alphabetical); id 0 is padding and id 1 the unknown token. Sentences
    are cut to ``max_len`` tokens and padded with 0. Columns are found by name,
    so extra columns (such as GLUE's ``index``) are ignored.

    Args:
        path_train: training rows.
        path_dev: validation rows, used as the validation split as they are (for
            SST-2 here, a held-out part of the original training set); ``None``
            carves ``val_size`` random rows out of ``path_train`` instead.
        path_test: test rows (for SST-2, the GLUE dev set).
        max_len: tokens kept per sentence.
        vocab_size: size of the vocabulary, padding and unknown included.
        min_freq: a token enters the vocabulary when it occurs this often in training.
        val_size: rows carved for validation when ``path_dev`` is ``None``.
        seed: seed of that cut; unused when ``path_dev`` is given.
        name: the dataset name stored in the result, e.g. ``"sst2"``.

    Returns:
        Splits with ``x`` int64 ``(N, max_len)`` and ``vocab`` set; the class count
        is one more than the largest training label.

    Example:
        >>> s = load_tsv("sst2/train.tsv", "sst2/dev.tsv", "sst2/test.tsv")  # doctest: +SKIP
        >>> s.train.x.shape[1], len(s.vocab) <= 20000  # doctest: +SKIP
        (64, True)
    """
    _check_int("max_len", max_len, 1)
    _check_int("vocab_size", vocab_size, 3)
    _check_int("min_freq", min_freq, 1)
    _check_int("val_size", val_size, 1)
    _check_int("seed", seed, 0)
    paths = {"train": path_train, "val": path_dev, "test": path_test}
    rows = {k: _read_tsv(_as_path(p, "a TSV file")) for k, p in paths.items() if p is not None}
    tokens = {k: [tokenize(s) for s in sents] for k, (sents, _) in rows.items()}
    vocab = _build_vocab(tokens["train"], vocab_size, min_freq)
    index = {t: i for i, t in enumerate(vocab)}
    labels = {k: np.array(lab, dtype=np.int64) for k, (_, lab) in rows.items()}
    num_classes = int(labels["train"].max()) + 1
    if num_classes < 2:
        raise ValueError(f"{_as_path(path_train, '')}: training labels must cover at least 2 classes; all are 0.")
    for k, lab in labels.items():
        _check_labels(lab, num_classes, f"{_as_path(paths[k], '')} (training labels define {num_classes} classes)")
    splits = {k: Split(_encode(tokens[k], index, max_len), torch.from_numpy(labels[k])) for k in rows}
    if path_dev is None:
        splits["train"], splits["val"] = _carve(splits["train"].x, splits["train"].y, val_size, seed)
    classes = tuple(str(c) for c in range(num_classes))
    return Splits(splits["train"], splits["val"], splits["test"], num_classes, name, classes=classes, vocab=vocab)
