"""Dataset loaders and the batch iterator: real Fashion-MNIST and MNIST from $FASTCONV_DATA,
synthetic IDX files for round trips, damaged files, the search order and downloads (with a fake
fetcher: no test touches the network)."""

import doctest
import gzip
import hashlib
import os
import struct
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from fastconv import data

IMAGES, LABELS = "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No test sees the user's cache, Debian's copy, $FASTCONV_DATA or the network."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FASTCONV_DATA", raising=False)
    monkeypatch.setitem(data.DATASETS["fashion-mnist"], "system", ())

    def offline(url, dest):
        raise urllib.error.URLError("no network in tests")
    monkeypatch.setattr(data, "_fetch", offline)


@pytest.fixture(scope="module")
def data_dir():
    """The real datasets: $FASTCONV_DATA, as CI sets it (tests skip, saying why, without it)."""
    path = os.environ.get("FASTCONV_DATA")
    if not path or not Path(path).is_dir():
        pytest.skip(f"FASTCONV_DATA={path!r} is not a directory; point it at a folder holding "
                    "fashion-mnist/ and mnist-t10k/ to run the real-data tests")
    return Path(path)


def need(folder: Path) -> Path:
    if not folder.is_dir():
        pytest.skip(f"{folder} is missing")
    return folder


def idx_bytes(array, magic=None, shape=None) -> bytes:
    """An uncompressed IDX file of uint8 ``array``; ``magic`` and ``shape`` override the header."""
    array = np.asarray(array, np.uint8)
    magic = (0x800 | array.ndim) if magic is None else magic
    shape = array.shape if shape is None else shape
    return struct.pack(f">{1 + len(shape)}I", magic, *shape) + array.tobytes()


def write_split(folder: Path, n: int, prefix: str = "t10k", seed: int = 0, labels_n=None):
    """Write ``n`` random images and labels as gzip IDX files; returns the arrays."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n if labels_n is None else labels_n, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
    (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    return images, labels


# Real data ------------------------------------------------------------------------------------

@pytest.mark.parametrize("split, n", [("train", 60000), ("test", 10000)])
def test_fashion_mnist_real(data_dir, split, n):
    need(data_dir / "fashion-mnist")
    images, labels = data.load_fashion_mnist(split, root=data_dir, download=False)
    assert images.shape == (n, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.uint8
    assert labels.min() == 0 and labels.max() == 9
    assert np.bincount(labels).tolist() == [n // 10] * 10
    assert 0.28 < data.pixel_stats(images)[0] < 0.29


def test_fashion_mnist_found_through_env(data_dir, monkeypatch):
    need(data_dir / "fashion-mnist")
    monkeypatch.setenv("FASTCONV_DATA", str(data_dir))
    assert data.load_fashion_mnist("test", download=False)[0].shape == (10000, 28, 28)


def test_mnist_t10k_protocol(data_dir):
    folder = need(data_dir / "mnist-t10k")
    full = data.read_idx(folder / IMAGES, data.IMAGES_MAGIC)
    full_labels = data.read_idx(folder / LABELS, data.LABELS_MAGIC)
    where = {image.tobytes(): i for i, image in enumerate(full)}
    assert len(where) == len(full)  # every test image is distinct, so rows identify indices
    parts = {}
    for split in ("train", "test"):
        images, labels = data.load_mnist(split, root=data_dir, download=False)
        index = np.array([where[image.tobytes()] for image in images])
        np.testing.assert_array_equal(labels, full_labels[index])
        again = data.load_mnist(split, root=data_dir, protocol="t10k", download=False)
        np.testing.assert_array_equal(again[0], images)
        np.testing.assert_array_equal(again[1], labels)
        parts[split] = index
    assert len(parts["train"]) == 8000 and len(parts["test"]) == 2000
    assert np.array_equal(np.sort(np.concatenate(list(parts.values()))), np.arange(10000))
    # The protocol is defined by seed 0; a change of NumPy's permutation stream must show here.
    assert parts["test"][:5].tolist() == [3, 6, 8, 9, 18]


def test_mnist_t10k_download_checks_published_md5(data_dir, monkeypatch):
    """The real test files, served by a fake fetcher, pass the MD5s written in the module."""
    folder = need(data_dir / "mnist-t10k")
    monkeypatch.setattr(data, "_fetch",
                        lambda url, dest: dest.write_bytes((folder / url.split("/")[-1])
                                                           .read_bytes()))
    images, _ = data.load_mnist("test", protocol="t10k")
    assert images.shape == (2000, 28, 28)
    assert sorted(os.listdir(data.cache_dir() / "mnist")) == [IMAGES, LABELS]


# Synthetic files ------------------------------------------------------------------------------

def test_idx_round_trip(tmp_path):
    images, labels = write_split(tmp_path / "fashion-mnist", 7, prefix="train")
    got_images, got_labels = data.load_fashion_mnist("train", root=tmp_path, download=False)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_images.flags.writeable
    # root may also be the dataset folder itself
    np.testing.assert_array_equal(
        data.load_fashion_mnist("train", root=tmp_path / "fashion-mnist")[0], images)


def test_mnist_auto_uses_full_set_when_train_files_exist(tmp_path):
    train, _ = write_split(tmp_path / "mnist", 12, prefix="train")
    test, _ = write_split(tmp_path / "mnist", 10, seed=1)
    np.testing.assert_array_equal(data.load_mnist("train", root=tmp_path)[0], train)
    np.testing.assert_array_equal(data.load_mnist("test", root=tmp_path)[0], test)
    assert len(data.load_mnist("train", root=tmp_path, protocol="t10k")[0]) == 8
    assert len(data.load_mnist("test", root=tmp_path, protocol="t10k")[0]) == 2


def damage(folder: Path, kind: str) -> str:
    """Damage a valid split in ``kind``'s way; returns the name of the file to blame."""
    images = folder / IMAGES
    raw = gzip.decompress(images.read_bytes())
    if kind == "truncated":
        images.write_bytes(images.read_bytes()[:-100])
    elif kind == "corrupt gzip":
        blob = bytearray(images.read_bytes())
        blob[len(blob) // 2: len(blob) // 2 + 64] = bytes(64)
        images.write_bytes(bytes(blob))
    elif kind == "not gzip":
        images.write_bytes(raw)
    elif kind == "wrong magic":
        images.write_bytes(gzip.compress(struct.pack(">I", 0x0801) + raw[4:]))
    elif kind == "header too large":
        images.write_bytes(gzip.compress(raw[:4] + struct.pack(">I", 6) + raw[8:]))
    elif kind == "header too small":
        images.write_bytes(gzip.compress(raw[:4] + struct.pack(">I", 4) + raw[8:]))
    elif kind == "absurd header":
        images.write_bytes(gzip.compress(raw[:4] + struct.pack(">I", 2**31) + raw[8:]))
    elif kind == "short header":
        images.write_bytes(gzip.compress(raw[:10]))
    elif kind == "not 28x28":
        images.write_bytes(gzip.compress(idx_bytes(np.zeros((5, 28, 27)))))
    elif kind == "label out of range":
        (folder / LABELS).write_bytes(gzip.compress(idx_bytes(np.full(5, 10))))
        return LABELS
    elif kind == "count mismatch":
        write_split(folder, 5, labels_n=4)
    return IMAGES


@pytest.mark.parametrize("kind", ["truncated", "corrupt gzip", "not gzip", "wrong magic",
                                  "header too large", "header too small", "absurd header",
                                  "short header", "not 28x28", "label out of range",
                                  "count mismatch"])
def test_damaged_file_raises_naming_it(tmp_path, kind):
    write_split(tmp_path / "fashion-mnist", 5)
    blamed = damage(tmp_path / "fashion-mnist", kind)
    with pytest.raises(ValueError, match=blamed):
        data.load_fashion_mnist("test", root=tmp_path)


# Search order and downloads -------------------------------------------------------------------

@pytest.mark.parametrize("present, expected", [
    (("arg", "env", "cache", "system"), 3), (("env", "cache", "system"), 4),
    (("cache", "system"), 5), (("system",), 6)])
def test_search_order(tmp_path, monkeypatch, present, expected):
    """The argument beats $FASTCONV_DATA, which beats the cache, which beats Debian's copy."""
    places = {"arg": tmp_path / "arg" / "fashion-mnist", "env": tmp_path / "env" / "fashion-mnist",
              "cache": data.cache_dir() / "fashion-mnist", "system": tmp_path / "debian"}
    for n, name in enumerate(("arg", "env", "cache", "system"), start=3):
        if name in present:
            write_split(places[name], n)
    monkeypatch.setenv("FASTCONV_DATA", str(tmp_path / "env"))
    monkeypatch.setitem(data.DATASETS["fashion-mnist"], "system", (places["system"],))
    root = tmp_path / "arg" if "arg" in present else None
    assert len(data.load_fashion_mnist("test", root=root)[1]) == expected


@pytest.fixture
def served(monkeypatch):
    """Fake upstream: synthetic files whose MD5s become the published ones; records fetches."""
    rng = np.random.default_rng(0)
    files = {IMAGES: gzip.compress(idx_bytes(rng.integers(0, 256, (6, 28, 28)))),
             LABELS: gzip.compress(idx_bytes(rng.integers(0, 10, 6)))}
    for name, blob in files.items():
        monkeypatch.setitem(data.DATASETS["fashion-mnist"]["md5"], name,
                            hashlib.md5(blob).hexdigest())
    fetched = []

    def fetch(url, dest):
        name = url.split("/")[-1]
        final = data.cache_dir() / "fashion-mnist" / name
        assert dest.parent == final.parent and dest != final and not final.exists()
        fetched.append(url)
        dest.write_bytes(files[name])
    monkeypatch.setattr(data, "_fetch", fetch)
    return files, fetched


def test_download_is_stored_atomically(served):
    files, fetched = served
    images, labels = data.load_fashion_mnist("test")
    assert images.shape == (6, 28, 28) and labels.shape == (6,)
    folder = data.cache_dir() / "fashion-mnist"
    assert sorted(os.listdir(folder)) == [IMAGES, LABELS]  # no temporary file left
    assert (folder / IMAGES).read_bytes() == files[IMAGES]
    assert fetched == [data.DATASETS["fashion-mnist"]["mirrors"][0] + f for f in (IMAGES, LABELS)]
    data.load_fashion_mnist("test")
    assert len(fetched) == 2  # the second load reads the cache


def test_download_checksum_mismatch_raises_and_keeps_nothing(served, monkeypatch):
    monkeypatch.setitem(data.DATASETS["fashion-mnist"]["md5"], IMAGES, "0" * 32)
    with pytest.raises(ValueError, match="MD5"):
        data.load_fashion_mnist("test")
    assert os.listdir(data.cache_dir() / "fashion-mnist") == []


def test_offline_error_lists_places_searched(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCONV_DATA", str(tmp_path / "env"))
    with pytest.raises(FileNotFoundError) as err:
        data.load_mnist("train", root=tmp_path / "arg")
    message = str(err.value)
    for place in (tmp_path / "arg" / "mnist", tmp_path / "env" / "mnist-t10k",
                  data.cache_dir() / "mnist", "no network in tests",
                  data.DATASETS["mnist"]["mirrors"][-1]):
        assert str(place) in message
    assert not list((data.cache_dir() / "mnist").iterdir())
    with pytest.raises(FileNotFoundError, match="download=False"):
        data.load_fashion_mnist("test", download=False)


@pytest.mark.parametrize("call", [lambda: data.load_fashion_mnist("val"),
                                  lambda: data.load_mnist("test", protocol="kmnist")])
def test_bad_arguments(call):
    with pytest.raises(ValueError):
        call()


@pytest.mark.slow
def test_imports_with_numpy_only():
    """data.py itself needs nothing beyond NumPy (the package's __init__ does import numba)."""
    code = (
        "import sys, importlib.abc, importlib.util\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'numba', 'scipy', 'fastconv'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"spec = importlib.util.spec_from_file_location('data', {data.__file__!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "print(len(module.Batches(module.np.zeros((3, 28, 28), 'uint8'), [0, 1, 2], 2)))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2"


# Batches --------------------------------------------------------------------------------------

def synthetic(n=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n, dtype=np.uint8)


@pytest.mark.parametrize("drop_last, sizes", [(False, [4, 4, 2]), (True, [4, 4])])
def test_batches_shapes_and_len(drop_last, sizes):
    images, labels = synthetic()
    loader = data.batches(images, labels, 4, drop_last=drop_last)
    out = list(loader)
    assert len(loader) == len(out) == len(sizes)
    assert [len(y) for _, y in out] == sizes
    for x, y in out:
        assert x.shape == (len(y), 1, 32, 32) and x.dtype == np.float32 and y.dtype == np.int64


def test_batches_pad_normalise_like_torchvision():
    """ToTensor -> Normalize(mean, std) -> Pad(2): zeros around (x / 255 - mean) / std."""
    images, labels = synthetic()
    loader = data.Batches(images, labels, 3, shuffle=False, normalize=(0.25, 0.5))
    x = np.concatenate([x for x, _ in loader])
    expected = np.pad((images / 255 - 0.25) / 0.5, ((0, 0), (2, 2), (2, 2)))[:, None]
    np.testing.assert_allclose(x, expected, rtol=1e-6, atol=1e-6)
    raw = data.Batches(images, labels, 10, normalize=False, pad_to=None)
    x, y = next(iter(raw))
    np.testing.assert_allclose(x[:, 0], images[y] / 255, rtol=1e-6)


def test_batches_normalised_statistics():
    images, labels = synthetic(200)
    loader = data.Batches(images, labels, 64)
    x = np.concatenate([x for x, _ in loader])
    inner, border = x[:, :, 2:30, 2:30], x.copy()
    border[:, :, 2:30, 2:30] = 0
    assert abs(inner.mean()) < 1e-5 and abs(inner.std() - 1) < 1e-5
    assert not border.any()
    assert (loader.mean, loader.std) == pytest.approx((images.mean() / 255, images.std() / 255))


def test_batches_seeded_shuffles():
    images, labels = synthetic(50)

    def orders(loader, epochs=2):
        return [np.concatenate([y for _, y in loader]).tolist() for _ in range(epochs)]
    first, second = orders(data.Batches(images, labels, 8, seed=3))
    assert sorted(first) == sorted(second) == list(range(50))  # each epoch a permutation
    assert first != second  # a new order each epoch
    assert orders(data.Batches(images, labels, 8, seed=3)) == [first, second]  # reproducible
    replay = data.Batches(images, labels, 8, seed=3)
    replay.epoch = 1
    assert orders(replay, 1) == [second]
    assert orders(data.Batches(images, labels, 8, seed=4), 1) != [first]
    assert orders(data.Batches(images, labels, 8, shuffle=False), 1) == [list(range(50))]
    x, y = next(iter(data.Batches(images, labels, 8, seed=3, pad_to=None, normalize=False)))
    np.testing.assert_allclose(x[:, 0] * 255, images[y], atol=1e-4)  # images follow labels


def test_docstring_examples():
    result = doctest.testmod(data, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
