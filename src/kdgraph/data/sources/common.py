"""What every source builder shares: the options ``build_datasets`` hands it, and helpers to check them and to
bundle in-memory splits."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from kdgraph.data import DataError
from kdgraph.data.datasets import DataBundle, Provides, TensorImageDataset, _normalised_float

__all__ = ["SourceOptions", "require_root", "check_num_classes", "tensor_bundle"]


@dataclass(frozen=True)
class SourceOptions:
    """What ``build_datasets`` passes every builder; a builder reads the options that concern it."""

    name: str
    """The canonical data set name (``torchvision:CIFAR10``)."""
    root: Optional[str | os.PathLike] = None
    image_size: Optional[int] = None
    num_classes: Optional[int] = None
    source: str = "auto"
    seed: int = 0
    synthetic_size: Optional[int] = None
    channels: Optional[int] = None
    train_transform: Optional[Callable] = None
    eval_transform: Optional[Callable] = None
    mean: Optional[tuple] = None
    """The normalisation the student wants (``student.input``); None: the source's own. File-backed sources normalise
    with it; in-memory bundles are converted once by ``build_datasets``."""
    std: Optional[tuple] = None


def check_num_classes(name: str, given: int | None, actual: int) -> None:
    if given is not None and int(given) != actual:
        raise DataError(f"{name} has {actual} classes but num_classes={given} was requested; "
                        f"drop num_classes or set it to {actual}.")


def require_root(name: str, root: str | os.PathLike | None, layout: str) -> Path:
    if root is None:
        raise DataError(f"{name} needs data.root: a local folder containing {layout}. "
                        "kdgraph never downloads data.")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{name}: data.root {str(root)!r} is not an existing folder; it must contain "
                        f"{layout}. kdgraph never downloads data.")
    return root


def tensor_bundle(
    opts: SourceOptions,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    *,
    mean: tuple,
    std: tuple,
    num_classes: int,
    description: str,
    classes: tuple[str, ...] = (),
    prenormalise: bool = True,
) -> DataBundle:
    """A bundle of TensorImageDatasets from uint8 (or float) ``(N, C, H, W)`` tensors: held in memory, sliced by
    batch, the same tensors on every access unless the caller gave per-sample transforms."""
    datasets = []
    for (x, y), tf in ((train, opts.train_transform), (test, opts.eval_transform)):
        if prenormalise and x.dtype == torch.uint8:
            ds = TensorImageDataset(_normalised_float(x, mean, std), y, size=opts.image_size, transform=tf)
        else:
            ds = TensorImageDataset(x, y, mean=mean, std=std, size=opts.image_size, transform=tf)
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
        provides=Provides.in_memory(transforms=opts.train_transform is not None),
    )
