"""Fashion-MNIST: idx parsing and source resolution.

Resolution order for :func:`load_fashion_mnist`:

1. an explicit ``root`` folder holding the four idx files (``.gz`` or raw);
2. Debian's ``dataset-fashion-mnist`` folder (``/usr/share/datasets/fashion-mnist``)
   when ``source="auto"`` (or ``"full"``);
3. the class-balanced subset embedded in the package
   (``src/kdgraph/data/embedded/fashion_mnist_subset.npz``: 12,000 train / 2,000 test).
"""

from __future__ import annotations

import functools
import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from . import DataError

#: Folder installed by Debian's ``dataset-fashion-mnist`` package. Looked up at call
#: time, so tests may monkeypatch it.
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"
EMBEDDED_FILE = EMBEDDED_DIR / "fashion_mnist_subset.npz"

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

SOURCES = ("auto", "full", "embedded")

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}


# --------------------------------------------------------------------------- idx I/O
def _open(path: Path):
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")
    return open(path, "rb")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (as used by (Fashion-)MNIST), gzip-compressed or raw.

    Returns a numpy array in native byte order with the shape stored in the header.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"idx file not found: {path}")
    try:
        with _open(path) as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"could not read idx file {path}: {exc}. The file may be truncated; "
                        "re-copy or re-install it.") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an idx file (bad magic number {data[:4]!r}); expected "
                        "files such as train-images-idx3-ubyte(.gz).")
    dtype = _IDX_DTYPES[data[2]]
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: idx header is truncated.")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    count = int(np.prod(shape)) if shape else 1
    expected = header + count * dtype.itemsize
    if len(data) != expected:
        raise DataError(f"{path}: idx header announces shape {shape} ({expected} bytes) but the file "
                        f"holds {len(data)} bytes; the file is truncated or corrupted.")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` as an idx file; gzip-compressed when ``compress`` (default: name ends in .gz)."""
    path = Path(path)
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _IDX_CODES:
        raise DataError(f"cannot write dtype {array.dtype} to an idx file.")
    code = _IDX_CODES[native]
    big = _IDX_DTYPES[code]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=big).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(path, "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)
    return path


# ----------------------------------------------------------------------- resolution
@dataclass(frozen=True)
class DataSourceInfo:
    """Where a data set came from.

    kind: ``"root"`` (user folder), ``"debian"`` (system package) or ``"embedded"``.
    """

    kind: str
    location: str
    description: str
    num_train: int
    num_test: int


class FashionMNISTSplit(NamedTuple):
    images: torch.Tensor  # uint8 (N, 28, 28)
    labels: torch.Tensor  # int64 (N,)
    source: DataSourceInfo


def _find(folder: Path, name: str) -> Path | None:
    for cand in (folder / name, folder / (name + ".gz")):
        if cand.is_file():
            return cand
    return None


def _folder_files(folder: Path) -> dict[str, tuple[Path | None, Path | None]]:
    return {split: (_find(folder, img), _find(folder, lab)) for split, (img, lab) in FILES.items()}


def _candidate_folders(root: Path) -> list[Path]:
    # accept the folder itself and torchvision's <root>/FashionMNIST/raw layout
    return [root, root / "FashionMNIST" / "raw"]


def _idx_length(path: Path | None) -> int:
    if path is None:
        return 0
    with _open(path) as fh:
        head = fh.read(8)
    if len(head) < 8:
        return 0
    return int(np.frombuffer(head, dtype=">u4", count=1, offset=4)[0])


def _load_from_folder(folder: Path, split: str, kind: str) -> FashionMNISTSplit:
    files = _folder_files(folder)
    img_path, lab_path = files[split]
    images = read_idx(img_path)
    labels = read_idx(lab_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise DataError(f"{img_path}: expected uint8 images of shape (N, 28, 28), got "
                        f"{images.dtype} {images.shape}.")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(f"{lab_path}: expected {images.shape[0]} labels to match {img_path.name}, "
                        f"got shape {labels.shape}.")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{lab_path}: labels must lie in 0..9 for Fashion-MNIST.")
    n_train = images.shape[0] if split == "train" else _idx_length(files["train"][1])
    n_test = images.shape[0] if split == "test" else _idx_length(files["test"][1])
    what = "full set" if kind == "debian" else "idx files"
    info = DataSourceInfo(
        kind=kind,
        location=str(folder),
        description=f"Fashion-MNIST: {what} from {folder} ({n_train:,} train / {n_test:,} test)",
        num_train=n_train,
        num_test=n_test,
    )
    return FashionMNISTSplit(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)), info)


@functools.lru_cache(maxsize=1)
def _embedded_arrays(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}


def _load_embedded(split: str) -> FashionMNISTSplit:
    if not EMBEDDED_FILE.is_file():
        raise DataError(
            f"the embedded Fashion-MNIST subset is missing ({EMBEDDED_FILE}). Reinstall kdgraph, "
            "regenerate it with `python3 scripts/make_embedded_fmnist.py`, or point data.root at a "
            "folder holding the Fashion-MNIST idx files."
        )
    arrays = _embedded_arrays(str(EMBEDDED_FILE))
    images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
    n_train, n_test = len(arrays["y_train"]), len(arrays["y_test"])
    info = DataSourceInfo(
        kind="embedded",
        location=str(EMBEDDED_FILE),
        description=f"Fashion-MNIST: embedded subset ({n_train:,} train / {n_test:,} test)",
        num_train=n_train,
        num_test=n_test,
    )
    return FashionMNISTSplit(
        torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)), info
    )


def _missing_message(folder: Path, split: str) -> str | None:
    img, lab = _folder_files(folder)[split]
    missing = [name for name, p in zip(FILES[split], (img, lab)) if p is None]
    if not missing:
        return None
    return ", ".join(f"{m}(.gz)" for m in missing)


def load_fashion_mnist(
    root: str | os.PathLike | None = None,
    split: str = "train",
    *,
    source: str = "auto",
) -> FashionMNISTSplit:
    """Load one Fashion-MNIST split.

    Returns ``(images, labels, source)``: uint8 images (N, 28, 28), int64 labels (N,) and a
    :class:`DataSourceInfo` whose ``description`` is suitable for printing.

    ``source``: ``"auto"`` (root → Debian folder → embedded subset), ``"full"`` (root or Debian
    folder, never the subset) or ``"embedded"`` (always the packaged subset).
    """
    if split not in FILES:
        raise DataError(f"unknown Fashion-MNIST split {split!r}; use 'train' or 'test'.")
    if source not in SOURCES:
        raise DataError(f"unknown Fashion-MNIST source {source!r}; use one of {', '.join(SOURCES)}.")

    if source == "embedded":
        if root is not None:
            raise DataError(
                f"data.root={str(root)!r} was given together with source='embedded'; the embedded "
                "subset ignores folders. Drop data.root, or use source='auto' or 'full' to read it."
            )
        return _load_embedded(split)

    if root is not None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DataError(
                f"Fashion-MNIST root {str(root)!r} is not a folder. Point data.root at a folder holding "
                "train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte(.gz), t10k-images-idx3-ubyte(.gz) "
                "and t10k-labels-idx1-ubyte(.gz), or leave it unset to use the system or embedded copy."
            )
        for folder in _candidate_folders(root):
            if _missing_message(folder, split) is None:
                return _load_from_folder(folder, split, "root")
        raise DataError(
            f"Fashion-MNIST {split} files not found under {str(root)!r}: missing "
            f"{_missing_message(root, split)}. Copy the idx files (gzip or raw) into that folder, "
            "install them with `apt-get install dataset-fashion-mnist`, or unset data.root."
        )

    debian = Path(DEBIAN_DIR)
    if debian.is_dir() and _missing_message(debian, split) is None:
        return _load_from_folder(debian, split, "debian")

    if source == "full":
        raise DataError(
            "the full Fashion-MNIST set was requested (source='full') but no copy was found: "
            f"data.root is unset and {str(debian)!r} does not hold the idx files. Install it with "
            "`apt-get install dataset-fashion-mnist`, or set data.root to a folder with the four "
            "idx files, or use source='embedded' for the packaged 12,000/2,000 subset."
        )
    return _load_embedded(split)
