import pytest
import torch

from kdgraph.data import DataError, TensorImageDataset, build_datasets, take


def test_tensor_transform_disables_fast_path():
    b = build_datasets("synthetic", synthetic_size=10, image_size=4, train_transform=lambda t: t * 0)
    assert not b.train.supports_batching and b.test.supports_batching
    assert torch.count_nonzero(b.train[0][0]) == 0


def test_take_first_n():
    b = build_datasets("synthetic", synthetic_size=30, image_size=4)
    sub = take(b.train, 7)
    assert isinstance(sub, TensorImageDataset) and sub.supports_batching and len(sub) == 7
    assert torch.equal(sub.images, b.train.images[:7]) and len(b.train) == 30
    assert take(b.train, 100) is b.train
    with pytest.raises(DataError):
        take(b.train, 0)


def test_take_on_file_backed(tmp_path, png_tree):
    png_tree(tmp_path)
    b = build_datasets("imagefolder", tmp_path, image_size=4)
    sub = take(b.train, 3)
    assert len(sub) == 3 and sub[2][1] == b.train[2][1]
