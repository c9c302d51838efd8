"""The CIFAR python-batch reader: the ``cifar-10-batches-py`` / ``cifar-100-python`` layout torchvision uses.

The batches are pickles, so they are read with an unpickler that builds only plain data and numpy arrays
(``_CifarUnpickler``); a crafted file in data.root cannot run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import DataError
from .datasets import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD

__all__ = ["CIFAR_LAYOUTS", "read_cifar"]

CIFAR_LAYOUTS = {  # name -> where the files lie, what they hold, the normalisation
    "torchvision:CIFAR10": dict(
        folder="cifar-10-batches-py",
        train=[f"data_batch_{i}" for i in range(1, 6)],
        test=["test_batch"],
        meta=("batches.meta", "label_names"),
        label_key="labels",
        num_classes=10,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
    ),
    "torchvision:CIFAR100": dict(
        folder="cifar-100-python",
        train=["train"],
        test=["test"],
        meta=("meta", "fine_label_names"),
        label_key="fine_labels",
        num_classes=100,
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
    ),
}


class _CifarUnpickler(pickle.Unpickler):
    """The CIFAR python batches are pickles; only what they hold may be built (dicts, lists, strings, numpy
    arrays), never an arbitrary callable: a crafted file in data.root must not run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only plain data and numpy arrays)")
        return super().find_class(module, name)


def read_cifar(name: str, root: Path) -> tuple[tuple, tuple, tuple[str, ...]]:
    """Read the python-pickle CIFAR layout torchvision uses (``cifar-10-batches-py`` etc.) under ``root``.

    ``name`` is a key of ``CIFAR_LAYOUTS`` (``torchvision:CIFAR10`` or ``torchvision:CIFAR100``). Returns
    ``((train_images, train_labels), (test_images, test_labels), classes)`` with images uint8
    ``(N, 3, 32, 32)`` and labels int64 ``(N,)``. Raises :class:`DataError` when files are missing,
    unreadable or hold anything but plain data and numpy arrays.
    """
    spec = CIFAR_LAYOUTS[name]
    folder = root / spec["folder"]
    needed = spec["train"] + spec["test"] + [spec["meta"][0]]
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        raise DataError(
            f"{name}: files not found under {str(root)!r}: expected {spec['folder']}/ with "
            f"{', '.join(missing)}. Extract the official python archive there (kdgraph never downloads; "
            "torchvision's download=True or the dataset website can fetch it)."
        )

    def load(path: Path) -> dict:
        try:
            with open(path, "rb") as fh:
                entry = _CifarUnpickler(fh, encoding="latin1").load()
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
            raise DataError(f"{name}: could not read {path} ({exc}); the file is corrupted or not a "
                            "CIFAR python batch.") from None
        if not isinstance(entry, dict):
            raise DataError(f"{name}: {path} holds a {type(entry).__name__}, not a CIFAR python batch (a dict).")
        return entry

    def split(files: list[str]):
        xs, ys = [], []
        for f in files:
            entry = load(folder / f)
            bad = f"{name}: {folder / f}"
            for key in ("data", spec["label_key"]):
                if key not in entry:
                    raise DataError(f"{bad} has no {key!r} entry (it has {sorted(map(str, entry))[:6]}); the file "
                                    "is not a CIFAR python batch of this data set.")
            x, y = np.asarray(entry["data"]), np.asarray(entry[spec["label_key"]])
            if x.size % 3072 or (x.ndim == 2 and x.shape[1] != 3072):
                raise DataError(f"{bad}: 'data' holds {x.size} values of shape {x.shape}, not images of 3x32x32 "
                                "(an (N, 3072) uint8 array); the file is corrupted or not a CIFAR python batch.")
            x = x.astype(np.uint8).reshape(-1, 3, 32, 32)
            if y.shape != (len(x),):
                raise DataError(f"{bad}: {len(x)} images but {y.size} labels; the file is corrupted.")
            k = spec["num_classes"]
            if len(y) and (y.min() < 0 or y.max() >= k):
                wrong = y.max() if y.max() >= k else y.min()
                raise DataError(f"{bad}: label {wrong} is outside 0..{k - 1} ({name} has {k} classes); the file "
                                "is corrupted or belongs to another data set.")
            xs.append(x)
            ys.append(y.astype(np.int64))
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    meta = load(folder / spec["meta"][0])
    classes = tuple(meta.get(spec["meta"][1], ()))
    return split(spec["train"]), split(spec["test"]), classes
