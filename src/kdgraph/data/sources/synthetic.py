"""``synthetic``: smooth class prototypes plus Gaussian noise, learnable and deterministic by seed (shapes from
``data.synthetic`` and ``data.image_size``), for smoke tests and benchmarks."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdgraph.data import DataError
from kdgraph.data.datasets import DataBundle, Provides, TensorImageDataset
from kdgraph.data.sources.common import SourceOptions

__all__ = ["build"]


def build(opts: SourceOptions) -> DataBundle:
    """Smooth class prototypes plus Gaussian noise, drawn at no more than 32 px and resized on access.

    Drawn at full size, ``specs/examples``' 1000 classes at 224 px cost seconds and ~1.2 GB before the first
    step, for a data set that only tests shapes and learnability. Up to 32 px nothing is resized.
    """
    size = 32 if opts.image_size is None else int(opts.image_size)
    k = 10 if opts.num_classes is None else int(opts.num_classes)
    n_train = 512 if opts.synthetic_size is None else int(opts.synthetic_size)
    c = 3 if opts.channels is None else int(opts.channels)
    seed = opts.seed
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
    tr = TensorImageDataset(xtr, ytr, size=size, transform=opts.train_transform)
    te = TensorImageDataset(xte, yte, size=size, transform=opts.eval_transform)
    return DataBundle(
        train=tr,
        test=te,
        num_classes=k,
        input_shape=(c, size, size),
        description=f"synthetic: {n_train:,} train / {n_test:,} test, {c}x{size}x{size}, {k} classes (seed {seed})",
        mean=(0.0,) * c,
        std=(1.0,) * c,
        classes=tuple(f"class_{i}" for i in range(k)),
        provides=Provides.in_memory(transforms=opts.train_transform is not None),
    )
