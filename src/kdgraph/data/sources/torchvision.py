"""``torchvision:CIFAR10|CIFAR100|MNIST|FashionMNIST``: the files torchvision's data sets use, under ``data.root``
(CIFAR through kdgraph's safe python-batch reader, ``kdgraph.data.cifar``; MNIST-style idx files through
torchvision), held in memory. Nothing is downloaded."""

from __future__ import annotations

import torch

from kdgraph.data import DataError
from kdgraph.data.cifar import CIFAR_LAYOUTS, read_cifar
from kdgraph.data.datasets import FASHION_MNIST_MEAN, FASHION_MNIST_STD, MNIST_MEAN, MNIST_STD, DataBundle
from kdgraph.data.sources.common import SourceOptions, check_num_classes, require_root, tensor_bundle

__all__ = ["build"]


def build(opts: SourceOptions) -> DataBundle:
    name = opts.name
    if name in CIFAR_LAYOUTS:
        spec = CIFAR_LAYOUTS[name]
        root = require_root(name, opts.root, f"{spec['folder']}/ (the extracted python version)")
        train, test, classes = read_cifar(name, root)
        mean, std, k = spec["mean"], spec["std"], spec["num_classes"]
        prenormalise = False  # keep uint8 in memory (4x smaller); normalised on access
    else:
        cls_name = name.split(":", 1)[1]
        sub = f"{cls_name}/raw/"
        root = require_root(name, opts.root, f"{sub} with the idx files (train-images-idx3-ubyte, ...)")
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
    check_num_classes(name, opts.num_classes, k)
    return tensor_bundle(
        opts,
        train,
        test,
        mean=mean,
        std=std,
        num_classes=k,
        description=f"{name.split(':', 1)[1]} from {root}: {len(train[1]):,} train / {len(test[1]):,} test",
        classes=classes,
        prenormalise=prenormalise,
    )
