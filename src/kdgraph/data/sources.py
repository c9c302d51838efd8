"""Data set builders: ``build_datasets(name, root, ...) -> DataBundle``.

Names (``DATASET_NAMES``):

* ``fashion-mnist``           1x28x28, 10 classes; root / Debian package / embedded subset
* ``digits``                  1x8x8, 10 classes; ``sklearn.datasets.load_digits`` (80/20 split)
* ``imagefolder``             ImageNet layout ``root/train/<class>/*`` + ``root/val`` (or ``root/test``)
* ``torchvision:CIFAR10``     ``root/cifar-10-batches-py/``
* ``torchvision:CIFAR100``    ``root/cifar-100-python/``
* ``torchvision:MNIST``       ``root/MNIST/raw/``
* ``torchvision:FashionMNIST`` ``root/FashionMNIST/raw/``
* ``synthetic``               random, learnable (class-dependent mean), deterministic by seed

kdgraph never downloads anything. Tensor-backed sources (all but ``imagefolder``) keep the
whole split in memory once and are served by index slicing (see ``loader.TensorBatchLoader``);
augmentation is meant to run per batch (``kdgraph.data.augment``).

This module holds the name table and one builder per source; the data set types (``DataBundle``,
``TensorImageDataset``, ``take``) and normalisation constants are in ``datasets``, the CIFAR
python-batch reader in ``cifar``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from kdgraph.errors import suggest

from . import DataError
from .cifar import CIFAR_LAYOUTS, read_cifar
from .datasets import (
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MNIST_MEAN,
    MNIST_STD,
    DataBundle,
    TensorImageDataset,
    _normalised_float,
)
from .fashion_mnist import CLASSES as FMNIST_CLASSES
from .fashion_mnist import load_fashion_mnist

__all__ = ["build_datasets", "DATASET_NAMES"]

DATASET_NAMES = (
    "fashion-mnist",
    "digits",
    "imagefolder",
    "torchvision:CIFAR10",
    "torchvision:CIFAR100",
    "torchvision:MNIST",
    "torchvision:FashionMNIST",
    "synthetic",
)

_ALIASES = {
    "fashion-mnist": "fashion-mnist",
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "digits": "digits",
    "imagefolder": "imagefolder",
    "image-folder": "imagefolder",
    "image_folder": "imagefolder",
    "synthetic": "synthetic",
    "torchvision:cifar10": "torchvision:CIFAR10",
    "torchvision:cifar100": "torchvision:CIFAR100",
    "torchvision:mnist": "torchvision:MNIST",
    "torchvision:fashionmnist": "torchvision:FashionMNIST",
}


# ----------------------------------------------------------------------- helpers
def _canonical(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"data set name must be a non-empty string, got {name!r}. "
                        f"Valid names: {', '.join(DATASET_NAMES)}.")
    key = name.strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    near = suggest(key, _ALIASES, n=3, cutoff=0.5)
    near = list(dict.fromkeys(_ALIASES[n] for n in near))
    hint = f" Did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
    raise DataError(f"unknown data set {name!r}.{hint} Valid names: {', '.join(DATASET_NAMES)}.")


def _check_num_classes(name: str, given: int | None, actual: int) -> None:
    if given is not None and int(given) != actual:
        raise DataError(f"{name} has {actual} classes but num_classes={given} was requested; "
                        f"drop num_classes or set it to {actual}.")


def _require_root(name: str, root: str | os.PathLike | None, layout: str) -> Path:
    if root is None:
        raise DataError(f"{name} needs data.root: a local folder containing {layout}. "
                        "kdgraph never downloads data.")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{name}: data.root {str(root)!r} is not an existing folder; it must contain "
                        f"{layout}. kdgraph never downloads data.")
    return root


def _no_source(name: str, source: str) -> None:
    if source != "auto":
        where = {"digits": "scikit-learn's load_digits", "synthetic": "a seeded generator"}.get(name, "data.root")
        raise DataError(f"source={source!r} only applies to fashion-mnist; {name} takes its data from {where}. "
                        "Remove the source setting.")


def _tensor_bundle(
    name: str,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    *,
    mean: tuple,
    std: tuple,
    num_classes: int,
    description: str,
    image_size: int | None,
    train_transform: Callable | None,
    eval_transform: Callable | None,
    classes: tuple[str, ...] = (),
    prenormalise: bool = True,
) -> DataBundle:
    """Build a bundle of TensorImageDatasets from uint8 (N, C, H, W) tensors."""
    datasets = []
    for (x, y), tf in ((train, train_transform), (test, eval_transform)):
        if prenormalise and x.dtype == torch.uint8:
            ds = TensorImageDataset(_normalised_float(x, mean, std), y, size=image_size, transform=tf)
        else:
            ds = TensorImageDataset(x, y, mean=mean, std=std, size=image_size, transform=tf)
        datasets.append(ds)
    return DataBundle(
        train=datasets[0],
        test=datasets[1],
        num_classes=num_classes,
        input_shape=datasets[0].sample_shape,
        description=description,
        mean=tuple(mean),
        std=tuple(std),
        classes=tuple(classes),
    )


# ----------------------------------------------------------------------- sources
def _fashion_mnist(root, *, image_size, num_classes, source, train_transform, eval_transform):
    _check_num_classes("fashion-mnist", num_classes, 10)
    tr = load_fashion_mnist(root, "train", source=source)
    te = load_fashion_mnist(root, "test", source=source)
    return _tensor_bundle(
        "fashion-mnist",
        (tr.images.unsqueeze(1), tr.labels),
        (te.images.unsqueeze(1), te.labels),
        mean=FASHION_MNIST_MEAN,
        std=FASHION_MNIST_STD,
        num_classes=10,
        description=tr.source.description,
        image_size=image_size,
        train_transform=train_transform,
        eval_transform=eval_transform,
        classes=FMNIST_CLASSES,
    )


def _digits(root, *, image_size, num_classes, train_transform, eval_transform):
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DataError("the 'digits' data set needs scikit-learn, which is not installed. Install it "
                        "(`pip install scikit-learn` or `apt-get install python3-sklearn`) or use "
                        "'fashion-mnist' or 'synthetic'.") from exc
    _check_num_classes("digits", num_classes, 10)
    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 16.0  # (N, 8, 8) in [0, 1]
    labels = np.asarray(bunch.target, dtype=np.int64)
    n = len(labels)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(n, generator=g)
    n_train = int(round(0.8 * n))
    x = torch.from_numpy(images).unsqueeze(1)
    y = torch.from_numpy(labels)
    tr_idx, te_idx = perm[:n_train], perm[n_train:]
    mean = float(x[tr_idx].mean())
    std = float(x[tr_idx].std()) or 1.0
    xn = (x - mean) / std
    tr = TensorImageDataset(xn[tr_idx], y[tr_idx], size=image_size, transform=train_transform)
    te = TensorImageDataset(xn[te_idx], y[te_idx], size=image_size, transform=eval_transform)
    return DataBundle(
        train=tr,
        test=te,
        num_classes=10,
        input_shape=tr.sample_shape,
        description=f"digits (scikit-learn 8x8): {len(tr):,} train / {len(te):,} test",
        mean=(mean,),
        std=(std,),
        classes=tuple(str(i) for i in range(10)),
    )


def _synthetic(*, image_size, num_classes, synthetic_size, channels, seed, train_transform, eval_transform):
    """Smooth class prototypes plus Gaussian noise, drawn at no more than 32 px and resized on access.

    Drawn at full size, ``specs/examples``' 1000 classes at 224 px cost seconds and ~1.2 GB before the first
    step, for a data set that only tests shapes and learnability. Up to 32 px nothing is resized.
    """
    size = 32 if image_size is None else int(image_size)
    k = 10 if num_classes is None else int(num_classes)
    n_train = 512 if synthetic_size is None else int(synthetic_size)
    c = 3 if channels is None else int(channels)
    if size <= 0 or k < 2 or n_train <= 0 or c <= 0:
        raise DataError(f"synthetic data needs image_size > 0, num_classes >= 2, synthetic_size > 0 and "
                        f"channels > 0; got image_size={size}, num_classes={k}, synthetic_size={n_train}, "
                        f"channels={c}.")
    n_test = max(k, n_train // 5)
    drawn = min(size, 32)
    g = torch.Generator().manual_seed(int(seed))
    # smooth class prototypes: low-resolution noise upsampled to the drawn size
    low = max(2, min(drawn, 4))
    protos = torch.randn(k, c, low, low, generator=g)
    protos = F.interpolate(protos, size=(drawn, drawn), mode="bilinear", align_corners=False)
    protos = protos / protos.flatten(1).std(dim=1).clamp_min(1e-6).view(k, 1, 1, 1)

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % k
        y = y[torch.randperm(n, generator=g)]
        x = protos[y] + 0.75 * torch.randn(n, c, drawn, drawn, generator=g)
        return (x / 1.25).float(), y

    (xtr, ytr), (xte, yte) = make(n_train), make(n_test)
    tr = TensorImageDataset(xtr, ytr, size=size, transform=train_transform)
    te = TensorImageDataset(xte, yte, size=size, transform=eval_transform)
    return DataBundle(
        train=tr,
        test=te,
        num_classes=k,
        input_shape=(c, size, size),
        description=f"synthetic: {n_train:,} train / {n_test:,} test, {c}x{size}x{size}, {k} classes (seed {seed})",
        mean=(0.0,) * c,
        std=(1.0,) * c,
        classes=tuple(f"class_{i}" for i in range(k)),
    )


def _read_image(path: str) -> Any:
    """torchvision's image loader (PIL, RGB), with a file that is no readable image named in a DataError."""
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except (OSError, SyntaxError, ValueError) as exc:  # PIL: UnidentifiedImageError (an OSError), truncated files
        raise DataError(f"imagefolder: {path} cannot be read as an image ({exc}); delete or replace the file.") from None


def _imagefolder(root, *, image_size, num_classes, train_transform, eval_transform):
    layout = "train/<class>/<image> and val/<class>/<image> (or test/) subfolders (ImageNet layout)"
    root = _require_root("imagefolder", root, layout)
    train_dir = root / "train"
    eval_dir = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
    if not train_dir.is_dir():
        raise DataError(f"imagefolder: {str(train_dir)!r} does not exist; data.root must contain {layout}.")
    if eval_dir is None:
        raise DataError(f"imagefolder: neither {str(root / 'val')!r} nor {str(root / 'test')!r} exists; "
                        f"data.root must contain {layout}.")
    from torchvision import datasets, transforms as T

    size = 224 if image_size is None else int(image_size)
    resize = int(round(size / 0.875))
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if train_transform is None:
        train_transform = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    if eval_transform is None:
        eval_transform = T.Compose([T.Resize(resize), T.CenterCrop(size), T.ToTensor(), norm])

    def load(folder: Path, tf):
        try:
            return datasets.ImageFolder(str(folder), transform=tf, loader=_read_image)
        except (FileNotFoundError, RuntimeError) as exc:
            raise DataError(f"imagefolder: no images found under {str(folder)!r} ({exc}). Each class needs "
                            "its own subfolder with image files (.jpg, .png, ...).") from exc

    tr, te = load(train_dir, train_transform), load(eval_dir, eval_transform)
    if tr.classes != te.classes:
        only_te = sorted(set(te.classes) - set(tr.classes))
        if only_te:
            raise DataError(f"imagefolder: {eval_dir.name}/ has classes missing from train/: {only_te[:5]}. "
                            "Both splits must use the same class folders.")
        # eval split lacks some classes: remap to train indices so labels agree
        te.class_to_idx = tr.class_to_idx
        te.samples = [(p, tr.class_to_idx[te.classes[t]]) for p, t in te.samples]
        te.imgs, te.targets = te.samples, [t for _, t in te.samples]
        te.classes = tr.classes
    k = len(tr.classes)
    _check_num_classes("imagefolder", num_classes, k)
    return DataBundle(
        train=tr,
        test=te,
        num_classes=k,
        input_shape=(3, size, size),
        description=f"imagefolder {root}: {len(tr):,} train / {len(te):,} {eval_dir.name}, {k} classes, {size}px",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        classes=tuple(tr.classes),
    )


def _torchvision(name, root, *, image_size, num_classes, train_transform, eval_transform):
    if name in CIFAR_LAYOUTS:
        spec = CIFAR_LAYOUTS[name]
        root = _require_root(name, root, f"{spec['folder']}/ (the extracted python version)")
        train, test, classes = read_cifar(name, root)
        mean, std, k = spec["mean"], spec["std"], spec["num_classes"]
        prenormalise = False  # keep uint8 in memory (4x smaller); normalised on access
    else:
        cls_name = name.split(":", 1)[1]
        sub = f"{cls_name}/raw/"
        root = _require_root(name, root, f"{sub} with the idx files (train-images-idx3-ubyte, ...)")
        from torchvision import datasets

        cls = getattr(datasets, cls_name)
        try:
            tv_tr = cls(str(root), train=True, download=False)
            tv_te = cls(str(root), train=False, download=False)
        except RuntimeError as exc:
            raise DataError(
                f"{name}: files not found under {str(root)!r} (expected {sub}train-images-idx3-ubyte, "
                "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, uncompressed). "
                "kdgraph never downloads data: place the files there first."
            ) from exc
        train = (tv_tr.data.unsqueeze(1).to(torch.uint8), torch.as_tensor(tv_tr.targets, dtype=torch.int64))
        test = (tv_te.data.unsqueeze(1).to(torch.uint8), torch.as_tensor(tv_te.targets, dtype=torch.int64))
        classes = tuple(getattr(tv_tr, "classes", ()))
        if cls_name == "MNIST":
            mean, std = MNIST_MEAN, MNIST_STD
        else:
            mean, std = FASHION_MNIST_MEAN, FASHION_MNIST_STD
        k = 10
        prenormalise = True
    _check_num_classes(name, num_classes, k)
    return _tensor_bundle(
        name,
        train,
        test,
        mean=mean,
        std=std,
        num_classes=k,
        description=f"{name.split(':', 1)[1]} from {root}: {len(train[1]):,} train / {len(test[1]):,} test",
        image_size=image_size,
        train_transform=train_transform,
        eval_transform=eval_transform,
        classes=classes,
        prenormalise=prenormalise,
    )


def build_datasets(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    image_size: int | None = None,
    num_classes: int | None = None,
    synthetic_size: int | None = None,
    source: str = "auto",
    train_transform: Callable | None = None,
    eval_transform: Callable | None = None,
    channels: int | None = None,
    seed: int = 0,
) -> DataBundle:
    """Build the train/test datasets for ``name`` (see ``DATASET_NAMES``).

    Datasets yield ``(float image (C, H, W), int label)``, already normalised with the
    bundle's ``mean``/``std``. ``image_size`` resizes tensor-backed sources on access
    (default: native size; imagefolder default 224). ``num_classes``, when given, must match
    the data (synthetic: number of classes, default 10). ``synthetic_size``/``channels``/``seed``
    only apply to ``synthetic``. ``source`` ("auto"|"full"|"embedded") only to fashion-mnist.
    For tensor-backed sources, ``train_transform``/``eval_transform`` receive normalised float
    tensors and disable the batched fast path; prefer batch augmentations.
    """
    canon = _canonical(name)
    if image_size is not None and int(image_size) <= 0:
        raise DataError(f"image_size must be a positive integer, got {image_size!r}.")
    common: dict[str, Any] = dict(
        image_size=image_size, num_classes=num_classes,
        train_transform=train_transform, eval_transform=eval_transform,
    )
    if canon == "fashion-mnist":
        return _fashion_mnist(root, source=source, **common)
    _no_source(canon, source)
    if canon == "digits":
        return _digits(root, **common)
    if canon == "synthetic":
        return _synthetic(synthetic_size=synthetic_size, channels=channels, seed=seed, **common)
    if canon == "imagefolder":
        return _imagefolder(root, **common)
    return _torchvision(canon, root, **common)
