"""Data sources: a table of name -> :class:`Source`, one module per source (``fashion_mnist``, ``digits``,
``imagefolder``, ``torchvision``, ``synthetic``), and ``build_datasets(name, root, ...) -> DataBundle``.

Names (``DATASET_NAMES``):

* ``fashion-mnist``           1x28x28, 10 classes; root / Debian package / embedded subset
* ``digits``                  1x8x8, 10 classes; ``sklearn.datasets.load_digits`` (80/20 split)
* ``imagefolder``             ImageNet layout ``root/train/<class>/*`` + ``root/val`` (or ``root/test``)
* ``torchvision:CIFAR10``     ``root/cifar-10-batches-py/``
* ``torchvision:CIFAR100``    ``root/cifar-100-python/``
* ``torchvision:MNIST``       ``root/MNIST/raw/``
* ``torchvision:FashionMNIST`` ``root/FashionMNIST/raw/``
* ``synthetic``               random, learnable (class-dependent mean), deterministic by seed

kdgraph never downloads anything. Each builder takes the :class:`SourceOptions` and returns a ``DataBundle`` whose
``provides`` says what its splits promise (indexable, exact, per-sample transforms, file-backed). Adding a source is
one module here and one row in ``SOURCES`` (docs/architecture.md, "How to add a data source").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from kdgraph.data import DataError
from kdgraph.data.datasets import DataBundle, TensorImageDataset, renormalised
from kdgraph.data.sources import digits, fashion_mnist, imagefolder, synthetic, torchvision
from kdgraph.data.sources.common import SourceOptions
from kdgraph.errors import suggest

__all__ = ["Source", "SourceOptions", "SOURCES", "DATASET_NAMES", "build_datasets"]


@dataclass(frozen=True)
class Source:
    """One data source: its builder, the spellings that also name it, and where its data comes from when it has
    no ``data.source`` choice (said when one is given)."""

    build: Callable[[SourceOptions], DataBundle]
    aliases: tuple[str, ...] = ()
    origin: str = "data.root"
    takes_source: bool = False


SOURCES: dict[str, Source] = {
    "fashion-mnist": Source(fashion_mnist.build, ("fashion_mnist", "fashionmnist", "fmnist"), takes_source=True),
    "digits": Source(digits.build, origin="scikit-learn's load_digits"),
    "imagefolder": Source(imagefolder.build, ("image-folder", "image_folder")),
    "torchvision:CIFAR10": Source(torchvision.build),
    "torchvision:CIFAR100": Source(torchvision.build),
    "torchvision:MNIST": Source(torchvision.build),
    "torchvision:FashionMNIST": Source(torchvision.build),
    "synthetic": Source(synthetic.build, origin="a seeded generator"),
}
"""Every data set name a spec may give (``data.dataset``), in the order the docs list them."""

DATASET_NAMES = tuple(SOURCES)

_ALIASES = {spelling: name for name, source in SOURCES.items()
            for spelling in (name.lower(), *source.aliases)}


def _canonical(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"data set name must be a non-empty string, got {name!r}. "
                        f"Valid names: {', '.join(DATASET_NAMES)}.")
    key = name.strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    near = list(dict.fromkeys(_ALIASES[n] for n in suggest(key, _ALIASES, n=3, cutoff=0.5)))
    hint = f" Did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
    raise DataError(f"unknown data set {name!r}.{hint} Valid names: {', '.join(DATASET_NAMES)}.")


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
    mean: tuple | None = None,
    std: tuple | None = None,
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
    found = SOURCES[canon]
    if source != "auto" and not found.takes_source:
        raise DataError(f"source={source!r} only applies to fashion-mnist; {canon} takes its data from "
                        f"{found.origin}. Remove the source setting.")
    bundle = found.build(SourceOptions(canon, root, image_size=image_size, num_classes=num_classes, source=source,
                                       seed=seed, synthetic_size=synthetic_size, channels=channels,
                                       train_transform=train_transform, eval_transform=eval_transform,
                                       mean=tuple(mean) if mean else None, std=tuple(std) if std else None))
    return _normalised_for(bundle, mean, std)


def _normalised_for(bundle: DataBundle, mean: tuple | None, std: tuple | None) -> DataBundle:
    """An in-memory bundle converted once to the normalisation asked for (a source that read ``opts.mean`` and
    ``opts.std`` itself already carries them)."""
    mean, std = tuple(mean or bundle.mean), tuple(std or bundle.std)
    if mean == tuple(bundle.mean) and std == tuple(bundle.std):
        return bundle
    splits = (bundle.train, bundle.test)
    if not all(isinstance(ds, TensorImageDataset) for ds in splits):
        raise DataError(f"{bundle.description}: this source cannot be normalised with mean {mean}, std {std}; "
                        "remove student.input.mean and std")
    bundle.train, bundle.test = (renormalised(ds, bundle.mean, bundle.std, mean, std) for ds in splits)
    bundle.mean, bundle.std = mean, std
    return bundle
