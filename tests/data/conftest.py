"""Shared data-test helpers: a bundle sanity check and a tiny ImageNet-layout PNG tree."""

import numpy as np
import pytest
import torch
from PIL import Image

from kdgraph.data import DataBundle


def _check_bundle(b: DataBundle, n_classes, shape):
    assert b.num_classes == n_classes and b.input_shape == shape
    x, y = b.train[0]
    assert isinstance(y, int) and 0 <= y < n_classes
    assert x.dtype == torch.float32 and tuple(x.shape) == shape
    x, y = b.test[len(b.test) - 1]
    assert tuple(x.shape) == shape and isinstance(y, int)
    assert len(b.mean) == len(b.std) == shape[0]
    assert b.description


def _png_tree(root, splits=("train", "val"), classes=("cat", "dog"), per_class=2, size=(12, 10)):
    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i}.png")


@pytest.fixture
def check_bundle():
    """``check_bundle(bundle, n_classes, shape)``: the bundle's samples, stats and description look right."""
    return _check_bundle


@pytest.fixture
def png_tree():
    """``png_tree(root, splits=, classes=, per_class=, size=)``: random PNGs under ``root/<split>/<class>/``."""
    return _png_tree
