"""``fashion-mnist``: 1x28x28, 10 classes; from ``data.root``, Debian's package, or the embedded subset
(``data.source``; the idx reader is ``kdgraph.data.fashion_mnist_files``)."""

from __future__ import annotations

from kdgraph.data.datasets import FASHION_MNIST_MEAN, FASHION_MNIST_STD, DataBundle
from kdgraph.data.fashion_mnist_files import CLASSES, load_fashion_mnist
from kdgraph.data.sources.common import SourceOptions, check_num_classes, tensor_bundle

__all__ = ["build"]


def build(opts: SourceOptions) -> DataBundle:
    check_num_classes("fashion-mnist", opts.num_classes, 10)
    tr = load_fashion_mnist(opts.root, "train", source=opts.source)
    te = load_fashion_mnist(opts.root, "test", source=opts.source)
    return tensor_bundle(opts, (tr.images.unsqueeze(1), tr.labels), (te.images.unsqueeze(1), te.labels),
                         mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD, num_classes=10,
                         description=tr.source.description, classes=CLASSES)
