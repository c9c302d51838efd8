import pickle
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from kdgraph.data import DATASET_NAMES, DataBundle, DataError, TensorImageDataset, build_datasets, take, write_idx
from kdgraph.data import fashion_mnist as fm
from kdgraph.data import sources


def _check_bundle(b: DataBundle, n_classes, shape):
    assert b.num_classes == n_classes and b.input_shape == shape
    x, y = b.train[0]
    assert isinstance(y, int) and 0 <= y < n_classes
    assert x.dtype == torch.float32 and tuple(x.shape) == shape
    x, y = b.test[len(b.test) - 1]
    assert tuple(x.shape) == shape and isinstance(y, int)
    assert len(b.mean) == len(b.std) == shape[0]
    assert b.description


# ---------------------------------------------------------------- fashion-mnist
def test_fashion_mnist_embedded():
    b = build_datasets("fashion-mnist", source="embedded")
    _check_bundle(b, 10, (1, 28, 28))
    assert len(b.train) == 12000 and len(b.test) == 2000
    assert b.description == "Fashion-MNIST: embedded subset (12,000 train / 2,000 test)"
    assert b.mean == (0.2860,) and b.std == (0.3530,)
    assert isinstance(b.train, TensorImageDataset) and b.train.supports_batching
    # stored once as normalised float; equals (u8/255 - mean)/std
    raw = fm.load_fashion_mnist(None, "train", source="embedded").images
    x, y = b.train.get_batch(torch.tensor([0, 5]))
    torch.testing.assert_close(x[:, 0], (raw[[0, 5]].float() / 255 - 0.2860) / 0.3530)
    assert b.train.images.dtype == torch.float32


def test_fashion_mnist_root_and_resize(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("t10k", 10)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    b = build_datasets("Fashion_MNIST", tmp_path, image_size=32)
    _check_bundle(b, 10, (1, 32, 32))
    assert len(b.train) == 20 and "20 train / 10 test" in b.description
    x, _ = b.train.get_batch(torch.arange(4))
    assert x.shape == (4, 1, 32, 32)
    with pytest.raises(DataError, match="10 classes"):
        build_datasets("fashion-mnist", tmp_path, num_classes=5)


# ---------------------------------------------------------------- synthetic
def test_synthetic_deterministic_and_learnable():
    b = build_datasets("synthetic", image_size=8, num_classes=4, synthetic_size=200, channels=2, seed=3)
    _check_bundle(b, 4, (2, 8, 8))
    assert len(b.train) == 200 and len(b.test) == 40
    assert torch.bincount(b.train.labels).tolist() == [50] * 4
    again = build_datasets("synthetic", image_size=8, num_classes=4, synthetic_size=200, channels=2, seed=3)
    assert torch.equal(b.train.images, again.train.images) and torch.equal(b.test.labels, again.test.labels)
    other = build_datasets("synthetic", image_size=8, num_classes=4, synthetic_size=200, channels=2, seed=4)
    assert not torch.equal(b.train.images, other.train.images)
    # learnable: nearest class mean (estimated on train) classifies the test split well
    xtr, ytr = b.train.images.flatten(1), b.train.labels
    means = torch.stack([xtr[ytr == k].mean(0) for k in range(4)])
    pred = torch.cdist(b.test.images.flatten(1), means).argmin(1)
    assert (pred == b.test.labels).float().mean() > 0.9
    assert abs(b.train.images.mean().item()) < 0.3 and 0.6 < b.train.images.std().item() < 1.4


def test_synthetic_defaults():
    b = build_datasets("synthetic", synthetic_size=20)
    _check_bundle(b, 10, (3, 32, 32))
    with pytest.raises(DataError):
        build_datasets("synthetic", num_classes=1)


# ---------------------------------------------------------------- digits
def test_digits_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DataError, match="scikit-learn"):
        build_datasets("digits")


def test_digits_with_fake_sklearn(monkeypatch):
    rng = np.random.default_rng(0)
    n = 50
    fake = types.ModuleType("sklearn.datasets")
    fake.load_digits = lambda: types.SimpleNamespace(
        images=rng.integers(0, 17, (n, 8, 8)).astype(np.float64), target=np.arange(n) % 10
    )
    monkeypatch.setitem(sys.modules, "sklearn", types.ModuleType("sklearn"))
    monkeypatch.setitem(sys.modules, "sklearn.datasets", fake)
    b = build_datasets("digits")
    _check_bundle(b, 10, (1, 8, 8))
    assert len(b.train) == 40 and len(b.test) == 10
    assert abs(b.train.images.mean().item()) < 1e-5
    labels = torch.cat([b.train.labels, b.test.labels]).sort().values
    assert torch.equal(labels, (torch.arange(n) % 10).sort().values)


# ---------------------------------------------------------------- imagefolder
def _png_tree(root, splits=("train", "val"), classes=("cat", "dog"), per_class=2, size=(12, 10)):
    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i}.png")


def test_imagefolder(tmp_path):
    _png_tree(tmp_path)
    b = build_datasets("imagefolder", tmp_path, image_size=8)
    _check_bundle(b, 2, (3, 8, 8))
    assert b.classes == ("cat", "dog") and len(b.train) == 4 and len(b.test) == 4
    assert b.mean == sources.IMAGENET_MEAN
    assert sorted(b.test[i][1] for i in range(4)) == [0, 0, 1, 1]


def test_imagefolder_test_split_and_custom_transforms(tmp_path):
    _png_tree(tmp_path, splits=("train", "test"))
    from torchvision import transforms as T

    tf = T.Compose([T.Resize((6, 6)), T.ToTensor()])
    b = build_datasets("imagefolder", tmp_path, image_size=6, train_transform=tf, eval_transform=tf)
    assert tuple(b.train[0][0].shape) == (3, 6, 6) and "test" in b.description


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match="data.root"):
        build_datasets("imagefolder")
    with pytest.raises(DataError, match="not an existing folder"):
        build_datasets("imagefolder", tmp_path / "nope")
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="val"):
        build_datasets("imagefolder", tmp_path)
    (tmp_path / "val" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        build_datasets("imagefolder", tmp_path)


def test_imagefolder_eval_split_missing_a_class(tmp_path):
    _png_tree(tmp_path, splits=("train",), classes=("a", "b", "c"))
    _png_tree(tmp_path, splits=("val",), classes=("b", "c"))
    b = build_datasets("imagefolder", tmp_path, image_size=4)
    assert b.num_classes == 3
    assert sorted(b.test[i][1] for i in range(len(b.test))) == [1, 1, 2, 2]


# ---------------------------------------------------------------- torchvision:*
def _fake_cifar10(root, n=6):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, n))}
        with open(folder / name, "wb") as fh:
            pickle.dump(entry, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, fh)
    return folder


def test_torchvision_cifar10(tmp_path):
    folder = _fake_cifar10(tmp_path)
    b = build_datasets("torchvision:CIFAR10", tmp_path)
    _check_bundle(b, 10, (3, 32, 32))
    assert len(b.train) == 30 and len(b.test) == 6 and b.classes[0] == "c0"
    with open(folder / "test_batch", "rb") as fh:
        entry = pickle.load(fh)
    x, y = b.test[2]
    raw = torch.from_numpy(entry["data"][2].reshape(3, 32, 32)).float() / 255
    mean = torch.tensor(sources.CIFAR10_MEAN).view(3, 1, 1)
    std = torch.tensor(sources.CIFAR10_STD).view(3, 1, 1)
    torch.testing.assert_close(x, (raw - mean) / std)
    assert y == int(entry["labels"][2])
    assert b.train.images.dtype == torch.uint8  # kept compact, normalised on access


def test_torchvision_cifar_missing(tmp_path):
    with pytest.raises(DataError, match="never downloads"):
        build_datasets("torchvision:CIFAR10", tmp_path)
    with pytest.raises(DataError, match="cifar-100-python"):
        build_datasets("torchvision:cifar100", tmp_path)
    with pytest.raises(DataError, match="data.root"):
        build_datasets("torchvision:CIFAR10")


@pytest.mark.parametrize("name,sub", [("torchvision:MNIST", "MNIST"), ("torchvision:FashionMNIST", "FashionMNIST")])
def test_torchvision_mnist_like(tmp_path, name, sub):
    raw = tmp_path / sub / "raw"
    rng = np.random.default_rng(1)
    for split, n in (("train", 12), ("t10k", 5)):
        write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(raw / f"{split}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    b = build_datasets(name, tmp_path)
    _check_bundle(b, 10, (1, 28, 28))
    assert len(b.train) == 12 and len(b.test) == 5


def test_torchvision_mnist_missing(tmp_path):
    with pytest.raises(DataError, match="never downloads"):
        build_datasets("torchvision:MNIST", tmp_path)


# ---------------------------------------------------------------- names & options
def test_unknown_name_lists_valid_and_nearest():
    with pytest.raises(DataError) as err:
        build_datasets("fashon-mnist")
    msg = str(err.value)
    assert "fashion-mnist" in msg and "Did you mean" in msg
    for n in DATASET_NAMES:
        assert n in msg
    with pytest.raises(DataError, match="Valid names"):
        build_datasets("cifar10")


def test_source_only_for_fashion_mnist():
    with pytest.raises(DataError, match="only applies to fashion-mnist"):
        build_datasets("synthetic", source="full")
    with pytest.raises(DataError, match="image_size"):
        build_datasets("synthetic", image_size=0)


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


def test_take_on_file_backed(tmp_path):
    _png_tree(tmp_path)
    b = build_datasets("imagefolder", tmp_path, image_size=4)
    sub = take(b.train, 3)
    assert len(sub) == 3 and sub[2][1] == b.train[2][1]
