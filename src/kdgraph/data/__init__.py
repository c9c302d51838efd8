"""Data sources, batch augmentations and seeded loaders for kdgraph.

Public API::

    DataError                      # user-facing data problems (a KdgraphError and a ValueError)
    build_datasets(name, root, ...)               -> DataBundle (train, test, shapes, classes, provides)
    DATASET_NAMES                                 # the names build_datasets knows (kdgraph.data.sources.SOURCES)
    take(dataset, n), select(dataset, idx)        # the first n samples (train_subset) / samples by position
    make_loader(dataset, batch_size, train=, seed=, drop_last=)
    TensorImageDataset, WithIndex, load_fashion_mnist
    random_crop_flip, random_resized_crop_flip, mixup, cutmix   # batch-level, on tensors (kdgraph.data.augment)
    crop_flip_params, resized_crop_params, sample_mix_ratio    # their random numbers (to replay them)
"""

from __future__ import annotations

from kdgraph.errors import KdgraphError


class DataError(KdgraphError, ValueError):
    """A data source is missing, malformed or misconfigured (also a ``ValueError``).

    Messages say what went wrong, where kdgraph looked, and what to try.
    """


from .fashion_mnist_files import load_fashion_mnist  # noqa: E402
from .datasets import DataBundle, Provides, ReplayedViews, TensorImageDataset, select, take  # noqa: E402
from .sources import DATASET_NAMES, build_datasets  # noqa: E402
from .augment import (  # noqa: E402
    crop_flip,
    crop_flip_params,
    cutmix,
    cutmix_box,
    mixup,
    random_crop_flip,
    random_resized_crop_flip,
    resized_crop_flip,
    resized_crop_params,
    sample_mix_ratio,
)
from .loader import WithIndex, make_loader  # noqa: E402

__all__ = [
    "DataError",
    "DATASET_NAMES",
    "DataBundle",
    "Provides",
    "ReplayedViews",
    "TensorImageDataset",
    "build_datasets",
    "load_fashion_mnist",
    "select",
    "take",
    "crop_flip",
    "crop_flip_params",
    "cutmix",
    "cutmix_box",
    "mixup",
    "random_crop_flip",
    "random_resized_crop_flip",
    "resized_crop_flip",
    "resized_crop_params",
    "sample_mix_ratio",
    "WithIndex",
    "make_loader",
]
