"""Fashion-MNIST and MNIST as NumPy arrays, and a seeded mini-batch iterator for training.

NumPy and the standard library only: this module imports without torch, numba or scipy.

Where the files are looked for, in order (the first directory holding every file a split needs
wins; a file found there that is damaged raises, it is never skipped):

1. the ``root`` argument: a dataset folder itself, or a folder with the dataset folders inside;
2. ``$FASTCONV_DATA``, a folder with ``fashion-mnist/``, ``mnist/`` or ``mnist-t10k/`` inside;
3. ``~/.cache/fastconv/datasets/<name>/``, where downloads are stored;
4. for Fashion-MNIST, Debian's ``/usr/share/datasets/fashion-mnist`` (package
   ``dataset-fashion-mnist``);
5. a download from the upstream mirrors into the cache, checked against the published MD5s.

Checksums are checked on downloads only: Debian recompresses Fashion-MNIST, so a good local copy
need not match the upstream MD5. Every file read is instead checked for structure (gzip stream
intact, IDX magic, header dimensions equal to the data length, as many labels as images, 28x28
images, labels 0-9); any failure raises ``ValueError`` naming the file.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np

IMAGES_MAGIC = 0x00000803  # uint8 data, 3 dimensions (N, rows, cols)
LABELS_MAGIC = 0x00000801  # uint8 data, 1 dimension (N,)
MAX_BYTES = 1 << 30  # a header asking for more is corrupt: no dataset here comes near
SPLITS = {"train": "train", "test": "t10k"}  # split name -> file prefix

# MNIST's "t10k" protocol, for machines that hold only MNIST's 10,000 test images: a fixed
# 80 / 20 split of them (8,000 / 2,000). The seed is part of the protocol; do not change it.
T10K_SEED = 0
T10K_TRAIN_FRACTION = 0.8

DATASETS = {
    "fashion-mnist": {
        "folders": ("fashion-mnist",),
        "system": (Path("/usr/share/datasets/fashion-mnist"),),
        # zalandoresearch/fashion-mnist README: download links and MD5s.
        "mirrors": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        "md5": {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    },
    "mnist": {
        "folders": ("mnist", "mnist-t10k"),
        "system": (),
        # yann.lecun.com now refuses downloads; these mirrors serve the original files.
        "mirrors": ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                    "https://storage.googleapis.com/cvdf-datasets/mnist/"),
        "md5": {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    },
}


def load_fashion_mnist(split: str = "train", root=None, download: bool = True):
    """Load a split of Fashion-MNIST (Xiao et al., 2017): 60,000 train and 10,000 test images.

    Args:
        split (str): ``"train"`` or ``"test"``. Default: ``"train"``
        root (str or Path, optional): folder searched first (see the module docstring for the
            search order). Default: None
        download (bool): fetch the files into ``~/.cache/fastconv/datasets`` when no folder has
            them. Default: True

    Returns:
        (images, labels): ``images`` uint8 of shape :math:`(N, 28, 28)` with 0 the background,
        ``labels`` uint8 of shape :math:`(N,)` in 0-9.

    Raises:
        FileNotFoundError: no folder has the files and they could not be downloaded; the message
            lists every place searched.
        ValueError: a file is damaged (the message names it), or a download fails its checksum.
    """
    return _load_split("fashion-mnist", _prefix(split), root, download)


def load_mnist(split: str = "train", root=None, protocol: str = "auto", download: bool = True):
    """Load a split of MNIST, the full set or the "t10k" protocol when only its test set exists.

    Protocols:

    - ``"full"``: the official 60,000 train / 10,000 test split;
    - ``"t10k"``: MNIST's 10,000 test images split into 8,000 train and 2,000 test (80 / 20) by
      a permutation from ``numpy.random.default_rng(T10K_SEED)`` (seed 0); each part keeps the
      file's order, and the split is the same on every call;
    - ``"auto"``: ``"full"`` when a folder holds the train files, else ``"t10k"`` when one holds
      the test files, else a download of the full set.

    Args:
        split (str): ``"train"`` or ``"test"``. Default: ``"train"``
        root (str or Path, optional): folder searched first. Default: None
        protocol (str): ``"auto"``, ``"full"`` or ``"t10k"``. Default: ``"auto"``
        download (bool): fetch missing files into the cache. Default: True

    Returns:
        (images, labels): uint8 arrays of shapes :math:`(N, 28, 28)` and :math:`(N,)`.

    Raises:
        FileNotFoundError, ValueError: as :func:`load_fashion_mnist`.
    """
    prefix = _prefix(split)
    if protocol not in ("auto", "full", "t10k"):
        raise ValueError(f"protocol must be 'auto', 'full' or 't10k', got {protocol!r}")
    if protocol == "auto":
        found = _find("mnist", "train", root)[0] is not None
        protocol = "full" if found or _find("mnist", "t10k", root)[0] is None else "t10k"
    if protocol == "full":
        return _load_split("mnist", prefix, root, download)
    images, labels = _load_split("mnist", "t10k", root, download)
    order = np.random.default_rng(T10K_SEED).permutation(len(labels))
    n_train = round(T10K_TRAIN_FRACTION * len(labels))
    keep = np.sort(order[:n_train] if split == "train" else order[n_train:])
    return images[keep], labels[keep]


def _prefix(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return SPLITS[split]


def _files(prefix: str) -> tuple[str, str]:
    return f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"


def cache_dir() -> Path:
    """Where downloads go: ``~/.cache/fastconv/datasets``."""
    return Path.home() / ".cache" / "fastconv" / "datasets"


def _candidates(name: str, root) -> list[Path]:
    """The folders searched for dataset ``name``, in order."""
    folders = DATASETS[name]["folders"]
    places = []
    if root is not None:
        places += [Path(root) / f for f in folders] + [Path(root)]
    if os.environ.get("FASTCONV_DATA"):
        places += [Path(os.environ["FASTCONV_DATA"]) / f for f in folders]
    places += [cache_dir() / name]
    places += list(DATASETS[name]["system"])
    return places


def _find(name: str, prefix: str, root) -> tuple[Path | None, list[Path]]:
    """The first folder holding both files of ``prefix``, and every folder searched."""
    places = _candidates(name, root)
    for place in places:
        if all((place / f).is_file() for f in _files(prefix)):
            return place, places
    return None, places


def _load_split(name: str, prefix: str, root, download: bool):
    folder, searched = _find(name, prefix, root)
    if folder is None:
        folder = _download(name, prefix, searched, download)
    images_path, labels_path = (folder / f for f in _files(prefix))
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path}: images are {images.shape[1:]}, expected (28, 28)")
    if len(images) != len(labels):
        raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                         f"{len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{labels_path}: label {labels.max()} is outside 0-9")
    return images, labels


def read_idx(path, magic: int) -> np.ndarray:
    """Read a gzip-compressed IDX file of uint8 data, checking its structure.

    Args:
        path (str or Path): the ``.gz`` file.
        magic (int): the expected magic number, :data:`IMAGES_MAGIC` or :data:`LABELS_MAGIC`;
            its low byte is the number of dimensions.

    Returns:
        A writable uint8 array of the shape the header gives.

    Raises:
        ValueError: naming ``path``, when the gzip stream is damaged or truncated, the magic
            differs, or the data is shorter or longer than the header's dimensions.
    """
    ndim = magic & 0xFF
    with open(path, "rb") as raw:
        try:
            stream = gzip.GzipFile(fileobj=raw)
            header = stream.read(4 + 4 * ndim)
            if len(header) < 4 + 4 * ndim:
                raise ValueError(f"{path}: truncated header ({len(header)} bytes)")
            found, *shape = struct.unpack(f">{1 + ndim}I", header)
            if found != magic:
                raise ValueError(f"{path}: magic number {found:#010x}, expected {magic:#010x}")
            if math.prod(shape) > MAX_BYTES:
                raise ValueError(f"{path}: header gives shape {tuple(shape)}, over "
                                 f"{MAX_BYTES} bytes")
            data = np.empty(shape, np.uint8)
            got = stream.readinto(memoryview(data.reshape(-1)))
            extra = len(stream.read(1))
        except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
            raise ValueError(f"{path}: not a valid gzip file ({err})") from err
    if got != data.size or extra:
        size = f"more than {data.size}" if extra else str(got)
        raise ValueError(f"{path}: header gives shape {tuple(shape)} = {data.size} bytes of "
                         f"data, the file holds {size}")
    return data


def _fetch(url: str, dest: Path) -> None:
    """Write the bytes at ``url`` to ``dest`` (tests replace this function)."""
    with urllib.request.urlopen(url, timeout=30) as response, open(dest, "wb") as out:
        while chunk := response.read(1 << 20):
            out.write(chunk)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _download(name: str, prefix: str, searched: list[Path], enabled: bool) -> Path:
    """Fetch both files of ``prefix`` into the cache and return the folder.

    Each file goes to a temporary file in the cache folder, is checked against the published MD5
    and only then renamed into place (``os.replace``, atomic), so an interrupted or corrupt
    download never leaves a file the loader would read.
    """
    where = "\n  ".join(str(p) for p in searched)
    if not enabled:
        raise FileNotFoundError(f"{name} {prefix} files not found; searched:\n  {where}\n"
                                "and download=False")
    spec = DATASETS[name]
    folder = cache_dir() / name
    for file in _files(prefix):
        if (folder / file).is_file():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        errors = []
        for mirror in spec["mirrors"]:
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{file}.", suffix=".part")
            os.close(fd)
            try:
                _fetch(mirror + file, Path(tmp))
                digest = _md5(Path(tmp))
                if digest != spec["md5"][file]:
                    raise ValueError(f"{mirror + file}: MD5 {digest}, expected "
                                     f"{spec['md5'][file]}; the download was discarded")
                os.replace(tmp, folder / file)
                break
            except OSError as err:  # urllib's errors are OSErrors: try the next mirror
                errors.append(f"{mirror + file}: {err}")
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:
            tried = "\n  ".join(errors)
            raise FileNotFoundError(f"{name} {prefix} files not found; searched:\n  {where}\n"
                                    f"and the download failed:\n  {tried}")
    return folder


def pixel_stats(images: np.ndarray) -> tuple[float, float]:
    """Mean and (population) standard deviation of uint8 images scaled to [0, 1].

    Exact, from a 256-bin histogram, so it needs no float copy of the images. Fashion-MNIST's
    train set gives about (0.2860, 0.3530), MNIST's (0.1307, 0.3081).
    """
    counts = np.bincount(np.ravel(images), minlength=256).astype(np.float64)
    values = np.arange(256) / 255.0
    mean = counts @ values / counts.sum()
    var = counts @ (values - mean) ** 2 / counts.sum()
    return float(mean), float(np.sqrt(var))


class Batches:
    r"""Mini-batches of images as float32 NCHW arrays, shuffled by seed and epoch.

    Each batch mirrors torchvision's ``ToTensor() -> Normalize(mean, std) -> Pad(p)``: pixels are
    scaled to [0, 1], normalised to ``(x - mean) / std``, then padded with zeros to
    ``pad_to x pad_to`` (28 -> 32 gives LeNet-5's 2-pixel border). As in that recipe the border is
    0 after normalisation, not the normalised background ``-mean / std``.

    Args:
        images (ndarray): uint8 of shape :math:`(N, H, W)`.
        labels (ndarray): integers of shape :math:`(N,)`.
        batch_size (int): images per batch.
        shuffle (bool): visit the images in a new order each epoch; the order of epoch ``e`` is
            ``numpy.random.default_rng([seed, e]).permutation(N)``. Default: True
        seed (int): seed of the shuffles. Default: 0
        normalize (bool or (float, float)): ``True`` computes the mean and std of ``images``
            (:func:`pixel_stats`); a pair gives them (on the [0, 1] scale: pass the train set's
            statistics to the test set's batches); ``False`` keeps [0, 1]. Default: True
        pad_to (int, optional): output height and width, at least ``H`` and ``W``; the odd pixel
            of an odd padding goes after (bottom/right). ``None`` pads nothing. Default: 32
        drop_last (bool): drop the last batch when it is smaller than ``batch_size``.
            Default: False
        augment (bool): each image at a random offset within the ``pad_to`` canvas and flipped
            left-right with probability 1/2: the random crop with that border as padding
            (2 pixels for 28 -> 32) and the horizontal flip of He et al.'s CIFAR recipe, drawn
            from ``numpy.random.default_rng([seed, epoch, 1])``, so an epoch replays exactly.
            Default: False

    Attributes:
        epoch (int): the epoch the next iteration runs; each iteration increments it, and setting
            it replays that epoch's order.
        mean, std (float): the normalisation used (0 and 1 when ``normalize=False``).

    Yields:
        (x, y): ``x`` float32 of shape :math:`(B, 1, \text{pad\_to}, \text{pad\_to})`, ``y``
        int64 of shape :math:`(B,)`.

    Example::

        >>> images = np.arange(10 * 28 * 28, dtype=np.uint8).reshape(10, 28, 28)
        >>> train = Batches(images, np.arange(10), batch_size=4)
        >>> len(train), [x.shape for x, y in train]
        (3, [(4, 1, 32, 32), (4, 1, 32, 32), (2, 1, 32, 32)])
        >>> x, y = next(iter(train))
        >>> x.dtype, y.dtype, float(x[0, 0, 0, 0])
        (dtype('float32'), dtype('int64'), 0.0)
    """

    def __init__(self, images, labels, batch_size: int, shuffle: bool = True, seed: int = 0,
                 normalize=True, pad_to: int | None = 32, drop_last: bool = False,
                 augment: bool = False):
        images, labels = np.asarray(images), np.asarray(labels)
        if images.dtype != np.uint8 or images.ndim != 3:
            raise ValueError(f"images must be uint8 (N, H, W), got {images.dtype} "
                             f"{images.shape}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels must have shape ({len(images)},), got {labels.shape}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        height, width = images.shape[1:]
        size = (height, width) if pad_to is None else (pad_to, pad_to)
        if size[0] < height or size[1] < width:
            raise ValueError(f"pad_to={pad_to} is smaller than the images ({height}x{width})")
        if normalize is True:
            normalize = pixel_stats(images)
        self.mean, self.std = (0.0, 1.0) if normalize is False else map(float, normalize)
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed, self.drop_last = (batch_size, shuffle, seed,
                                                                    drop_last)
        self.size = size
        self.augment = augment
        self.epoch = 0

    def __len__(self) -> int:
        n, b = len(self.images), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self):
        n = len(self.images)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        else:
            order = np.arange(n)
        height, width = self.images.shape[1:]
        room = self.size[0] - height, self.size[1] - width
        if self.augment:
            draw = np.random.default_rng([self.seed, self.epoch, 1])
            offsets = np.stack([draw.integers(0, r + 1, n) for r in room], axis=1)
            flips = draw.random(n) < 0.5
        self.epoch += 1
        scale = np.float32(1 / (255 * self.std))
        shift = np.float32(self.mean / self.std)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start:start + self.batch_size]
            x = np.zeros((len(index), 1, *self.size), np.float32)
            pixels = self.images[index] * scale - shift
            if not self.augment:
                top, left = room[0] // 2, room[1] // 2
                x[:, 0, top:top + height, left:left + width] = pixels
            else:
                for i, image in enumerate(index):  # each image at its own place
                    top, left = offsets[image]
                    x[i, 0, top:top + height, left:left + width] = (
                        pixels[i, :, ::-1] if flips[image] else pixels[i])
            yield x, self.labels[index].astype(np.int64)


def batches(images, labels, batch_size: int, shuffle: bool = True, seed: int = 0,
            normalize=True, pad_to: int | None = 32, drop_last: bool = False,
            augment: bool = False) -> Batches:
    """Shorthand for :class:`Batches` with the same arguments."""
    return Batches(images, labels, batch_size, shuffle=shuffle, seed=seed, normalize=normalize,
                   pad_to=pad_to, drop_last=drop_last, augment=augment)
