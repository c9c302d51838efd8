"""``digits``: scikit-learn's 8x8 digits (1x8x8, 10 classes), a deterministic 80/20 split, normalised with the
train split's mean and std."""

from __future__ import annotations

import numpy as np
import torch

from kdgraph.data import DataError
from kdgraph.data.datasets import DataBundle, Provides, TensorImageDataset
from kdgraph.data.sources.common import SourceOptions, check_num_classes

__all__ = ["build"]


def build(opts: SourceOptions) -> DataBundle:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DataError("the 'digits' data set needs scikit-learn, which is not installed. Install it "
                        "(`pip install scikit-learn` or `apt-get install python3-sklearn`) or use "
                        "'fashion-mnist' or 'synthetic'.") from exc
    check_num_classes("digits", opts.num_classes, 10)
    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 16.0  # (N, 8, 8) in [0, 1]
    labels = np.asarray(bunch.target, dtype=np.int64)
    n = len(labels)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    n_train = int(round(0.8 * n))
    x, y = torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels)
    tr_idx, te_idx = perm[:n_train], perm[n_train:]
    mean = float(x[tr_idx].mean())
    std = float(x[tr_idx].std()) or 1.0
    xn = (x - mean) / std
    tr = TensorImageDataset(xn[tr_idx], y[tr_idx], size=opts.image_size, transform=opts.train_transform)
    te = TensorImageDataset(xn[te_idx], y[te_idx], size=opts.image_size, transform=opts.eval_transform)
    return DataBundle(train=tr, test=te, num_classes=10, input_shape=tr.sample_shape,
                      description=f"digits (scikit-learn 8x8): {len(tr):,} train / {len(te):,} test",
                      mean=(mean,), std=(std,), classes=tuple(str(i) for i in range(10)),
                      provides=Provides.in_memory(transforms=opts.train_transform is not None))
