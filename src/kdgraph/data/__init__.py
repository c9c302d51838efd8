"""Data sources, batch augmentations and seeded loaders for kdgraph.

Public API::

    DataError                      # user-facing data problems (a ValueError)
    load_fashion_mnist(root, split, source=...)   -> FashionMNISTSplit
    build_datasets(name, root, ...)               -> DataBundle
    take(dataset, n)                              # first n samples (train_subset)
    make_loader(dataset, batch_size, train=, seed=, drop_last=)
    TensorBatchLoader, SeededDataLoader, TensorImageDataset
    random_crop_flip, random_resized_crop_flip, mixup, cutmix   # batch-level, on tensors
    crop_flip_params, resized_crop_params, sample_mix_ratio    # their random numbers (to replay them)
"""

from __future__ import annotations


class DataError(ValueError):
    """A data source is missing, malformed or misconfigured.

    Messages say what went wrong, where kdgraph looked, and what to try.
    """


from .fashion_mnist import (  # noqa: E402
    DataSourceInfo,
    FashionMNISTSplit,
    load_fashion_mnist,
    read_idx,
    write_idx,
)
from .datasets import DataBundle, TensorImageDataset, take  # noqa: E402
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
from .loader import (  # noqa: E402
    EpochSampler,
    SeededDataLoader,
    TensorBatchLoader,
    WithIndex,
    epoch_indices,
    make_loader,
)

__all__ = [
    "DataError",
    "DataSourceInfo",
    "FashionMNISTSplit",
    "load_fashion_mnist",
    "read_idx",
    "write_idx",
    "DATASET_NAMES",
    "DataBundle",
    "TensorImageDataset",
    "build_datasets",
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
    "WithIndex",
    "sample_mix_ratio",
    "EpochSampler",
    "SeededDataLoader",
    "TensorBatchLoader",
    "epoch_indices",
    "make_loader",
]
