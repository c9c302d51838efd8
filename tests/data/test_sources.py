import sys
import types

import numpy as np
import pytest
import torch

from kdgraph.data import DATASET_NAMES, DataError, TensorImageDataset, build_datasets
from kdgraph.data.fashion_mnist_files import write_idx
from kdgraph.data import fashion_mnist_files as fm
from kdgraph.data import datasets


# ---------------------------------------------------------------- fashion-mnist
def test_fashion_mnist_embedded(check_bundle):
    b = build_datasets("fashion-mnist", source="embedded")
    check_bundle(b, 10, (1, 28, 28))
    assert len(b.train) == 12000 and len(b.test) == 2000
    assert b.description == "Fashion-MNIST: embedded subset (12,000 train / 2,000 test)"
    assert b.mean == (0.2860,) and b.std == (0.3530,)
    assert isinstance(b.train, TensorImageDataset) and b.train.supports_batching
    # stored once as normalised float; equals (u8/255 - mean)/std
    raw = fm.load_fashion_mnist(None, "train", source="embedded").images
    x, y = b.train.get_batch(torch.tensor([0, 5]))
    torch.testing.assert_close(x[:, 0], (raw[[0, 5]].float() / 255 - 0.2860) / 0.3530)
    assert b.train.images.dtype == torch.float32


def test_fashion_mnist_root_and_resize(tmp_path, check_bundle):
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("t10k", 10)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    b = build_datasets("Fashion_MNIST", tmp_path, image_size=32)
    check_bundle(b, 10, (1, 32, 32))
    assert len(b.train) == 20 and "20 train / 10 test" in b.description
    x, _ = b.train.get_batch(torch.arange(4))
    assert x.shape == (4, 1, 32, 32)
    with pytest.raises(DataError, match="10 classes"):
        build_datasets("fashion-mnist", tmp_path, num_classes=5)


# ---------------------------------------------------------------- synthetic
def test_synthetic_deterministic_and_learnable(check_bundle):
    b = build_datasets("synthetic", image_size=8, num_classes=4, synthetic_size=200, channels=2, seed=3)
    check_bundle(b, 4, (2, 8, 8))
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


def test_synthetic_up_to_32_px_is_drawn_at_full_size():
    """Prototypes (4x4 noise upsampled, scaled to unit std) plus 0.75 noise, over 1.25: nothing is resized."""
    b = build_datasets("synthetic", image_size=16, num_classes=4, synthetic_size=200, channels=2, seed=3)
    g = torch.Generator().manual_seed(3)
    protos = torch.nn.functional.interpolate(torch.randn(4, 2, 4, 4, generator=g), size=(16, 16), mode="bilinear")
    protos = protos / protos.flatten(1).std(dim=1).view(4, 1, 1, 1)
    y = (torch.arange(200) % 4)[torch.randperm(200, generator=g)]
    x = (protos[y] + 0.75 * torch.randn(200, 2, 16, 16, generator=g)) / 1.25
    assert torch.equal(b.train.labels, y) and torch.equal(b.train.images, x)
    assert torch.equal(b.train.get_batch(torch.arange(5))[0], x[:5])


def test_synthetic_large_images_are_drawn_at_32_px_and_resized_on_access():
    """specs/examples' 1000 classes at 224 px: 12 MB drawn in milliseconds instead of 1.2 GB in seconds."""
    big = build_datasets("synthetic", image_size=224, num_classes=1000, synthetic_size=64, channels=3, seed=0)
    assert big.input_shape == (3, 224, 224) and big.test.sample_shape == (3, 224, 224)
    assert big.train.images.shape == (64, 3, 32, 32) and big.test.images.shape == (1000, 3, 32, 32)
    small = build_datasets("synthetic", image_size=32, num_classes=1000, synthetic_size=64, channels=3, seed=0)
    assert torch.equal(big.test.images, small.test.images)  # the same draw ...
    x, y = big.test.get_batch(torch.arange(8))
    resized = torch.nn.functional.interpolate(small.test.images[:8], size=(224, 224), mode="bilinear", antialias=True)
    assert x.shape == (8, 3, 224, 224) and torch.equal(x, resized)  # ... resized on access
    assert torch.equal(y, small.test.labels[:8])
    # still learnable: the nearest class mean (estimated on train) classifies the test split
    b = build_datasets("synthetic", image_size=64, num_classes=4, synthetic_size=200, channels=2, seed=3)
    (xtr, ytr), (xte, yte) = b.train.get_batch(torch.arange(200)), b.test.get_batch(torch.arange(40))
    means = torch.stack([xtr.flatten(1)[ytr == k].mean(0) for k in range(4)])
    assert (torch.cdist(xte.flatten(1), means).argmin(1) == yte).float().mean() > 0.9


def test_synthetic_defaults(check_bundle):
    b = build_datasets("synthetic", synthetic_size=20)
    check_bundle(b, 10, (3, 32, 32))
    with pytest.raises(DataError):
        build_datasets("synthetic", num_classes=1)


# ---------------------------------------------------------------- digits
def test_digits_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DataError, match="scikit-learn"):
        build_datasets("digits")


def test_digits_with_fake_sklearn(monkeypatch, check_bundle):
    rng = np.random.default_rng(0)
    n = 50
    fake = types.ModuleType("sklearn.datasets")
    fake.load_digits = lambda: types.SimpleNamespace(
        images=rng.integers(0, 17, (n, 8, 8)).astype(np.float64), target=np.arange(n) % 10
    )
    monkeypatch.setitem(sys.modules, "sklearn", types.ModuleType("sklearn"))
    monkeypatch.setitem(sys.modules, "sklearn.datasets", fake)
    b = build_datasets("digits")
    check_bundle(b, 10, (1, 8, 8))
    assert len(b.train) == 40 and len(b.test) == 10
    assert abs(b.train.images.mean().item()) < 1e-5
    labels = torch.cat([b.train.labels, b.test.labels]).sort().values
    assert torch.equal(labels, (torch.arange(n) % 10).sort().values)


# ---------------------------------------------------------------- imagefolder
def test_imagefolder(tmp_path, check_bundle, png_tree):
    png_tree(tmp_path)
    b = build_datasets("imagefolder", tmp_path, image_size=8)
    check_bundle(b, 2, (3, 8, 8))
    assert b.classes == ("cat", "dog") and len(b.train) == 4 and len(b.test) == 4
    assert b.mean == datasets.IMAGENET_MEAN
    assert sorted(b.test[i][1] for i in range(4)) == [0, 0, 1, 1]


def test_imagefolder_test_split_and_custom_transforms(tmp_path, png_tree):
    png_tree(tmp_path, splits=("train", "test"))
    from torchvision import transforms as T

    tf = T.Compose([T.Resize((6, 6)), T.ToTensor()])
    b = build_datasets("imagefolder", tmp_path, image_size=6, train_transform=tf, eval_transform=tf)
    assert tuple(b.train[0][0].shape) == (3, 6, 6) and "test" in b.description
    assert not b.provides.seeded and not b.provides.replayable  # Python transforms draw from the global generator


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


def test_imagefolder_eval_split_missing_a_class(tmp_path, png_tree):
    png_tree(tmp_path, splits=("train",), classes=("a", "b", "c"))
    png_tree(tmp_path, splits=("val",), classes=("b", "c"))
    b = build_datasets("imagefolder", tmp_path, image_size=4)
    assert b.num_classes == 3
    assert sorted(b.test[i][1] for i in range(len(b.test))) == [1, 1, 2, 2]


def test_imagefolder_unreadable_image_names_the_file(tmp_path, png_tree):
    png_tree(tmp_path)
    bad = tmp_path / "train" / "dog" / "broken.png"
    bad.write_text("not a png")
    b = build_datasets("imagefolder", tmp_path, image_size=4)
    index = [p for p, _ in b.train.samples].index(str(bad))
    with pytest.raises(DataError, match="broken.png.*cannot be read as an image"):
        b.train[index]


# ---------------------------------------------------------------- torchvision:*
@pytest.mark.parametrize("name,sub", [("torchvision:MNIST", "MNIST"), ("torchvision:FashionMNIST", "FashionMNIST")])
def test_torchvision_mnist_like(tmp_path, name, sub, check_bundle):
    raw = tmp_path / sub / "raw"
    rng = np.random.default_rng(1)
    for split, n in (("train", 12), ("t10k", 5)):
        write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(raw / f"{split}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    b = build_datasets(name, tmp_path)
    check_bundle(b, 10, (1, 28, 28))
    assert len(b.train) == 12 and len(b.test) == 5


def test_torchvision_mnist_missing(tmp_path):
    with pytest.raises(DataError, match="never downloads") as err:
        build_datasets("torchvision:MNIST", tmp_path)
    assert "download=True" not in str(err.value)  # torchvision's own advice would contradict it


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
    with pytest.raises(DataError, match="only applies to fashion-mnist; synthetic takes its data from a seeded gen"):
        build_datasets("synthetic", source="full")
    with pytest.raises(DataError, match="digits takes its data from scikit-learn's load_digits"):
        build_datasets("digits", source="embedded")
    with pytest.raises(DataError, match="image_size"):
        build_datasets("synthetic", image_size=0)


# ---------------------------------------------------------------- the data contract
def test_every_source_declares_what_it_provides(tmp_path, png_tree):
    from kdgraph.data import Provides
    from kdgraph.data.loader import supports_batching
    from kdgraph.data.sources import SOURCES

    assert DATASET_NAMES == tuple(SOURCES)
    memory = build_datasets("synthetic", image_size=8, synthetic_size=20, num_classes=2)
    assert memory.provides == Provides(indexable=True, exact=True, transforms=False, files=False)
    assert build_datasets("fashion-mnist", source="embedded").provides == memory.provides
    png_tree(tmp_path)
    folder = build_datasets("imagefolder", tmp_path, image_size=8)
    assert folder.provides == Provides(indexable=True, exact=False, transforms=True, files=True, seeded=True)
    assert folder.provides.replayable and memory.provides.replayable
    flipped = build_datasets("synthetic", image_size=8, synthetic_size=20, num_classes=2,
                             train_transform=lambda x: x.flip(-1))
    assert not flipped.provides.exact and flipped.provides.transforms
    for bundle in (memory, folder, flipped):  # the declaration agrees with what the loader finds
        assert bundle.provides.transforms == (not supports_batching(bundle.train))


def test_a_bundle_that_says_indexable_must_be(tmp_path):
    from kdgraph.data import DataBundle, Provides

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield torch.zeros(1, 2, 2), 0

    with pytest.raises(DataError, match="no length or no indexing"):
        DataBundle(Stream(), Stream(), 2, (1, 2, 2), "stream", (0.0,), (1.0,))
    bundle = DataBundle(Stream(), Stream(), 2, (1, 2, 2), "stream", (0.0,), (1.0,),
                        provides=Provides(indexable=False, exact=False))
    assert not bundle.provides.indexable


def test_imagefolder_same_batches_with_0_and_2_workers_and_after_a_skip(tmp_path, png_tree):
    from kdgraph.data import WithIndex, make_loader

    png_tree(tmp_path, per_class=6, size=(20, 16))
    b = build_datasets("imagefolder", tmp_path, image_size=8, seed=3)

    def epoch(workers, e, skip=0):
        loader = make_loader(WithIndex(b.train), 4, train=True, seed=3, drop_last=True, num_workers=workers)
        loader.set_epoch(e)
        loader.skip(skip)
        return list(loader)

    zero, two = epoch(0, 1), epoch(2, 1)
    assert len(zero) == 3
    for (x0, y0, i0), (x2, y2, i2) in zip(zero, two):
        assert torch.equal(x0, x2) and torch.equal(y0, y2) and torch.equal(i0, i2)
    resumed = epoch(2, 1, skip=1)
    assert all(torch.equal(a[0], c[0]) for a, c in zip(zero[1:], resumed))
    other = epoch(0, 2)  # a new crop per image and epoch
    first = {int(i): x for x, _, idx in zero for i, x in zip(idx, x)}
    again = {int(i): x for x, _, idx in other for i, x in zip(idx, x)}
    assert any(not torch.equal(first[i], again[i]) for i in first)


def test_imagefolder_replayed_views_are_the_crops_of_epoch_mod_k_from_the_stores_seed(tmp_path, png_tree):
    """A store of K views drawn from seed s replays image i in epoch e as its crop of epoch e mod K from seed s (the
    data set's own seed is another); a plain index, as a mixing partner is read, is epoch 0's crop from s. fetch
    with an epoch gives what the loader gives in that epoch."""
    from kdgraph.data import ReplayedViews, WithIndex, make_loader, take
    from kdgraph.data.loader import fetch

    png_tree(tmp_path, per_class=4, size=(30, 22))
    b = build_datasets("imagefolder", tmp_path, image_size=8, seed=1)
    other = build_datasets("imagefolder", tmp_path, image_size=8, seed=5)
    train = take(b.train, 6)
    replayed = ReplayedViews(train, 3, 5)
    for i in range(6):
        for e in range(5):
            assert torch.equal(replayed[(i, e)][0], other.train[(i, e % 3)][0])
        assert torch.equal(replayed[i][0], other.train[(i, 0)][0])
    assert any(not torch.equal(b.train[(i, 1)][0], other.train[(i, 1)][0]) for i in range(6))  # the seed matters
    loader = make_loader(WithIndex(replayed), 2, train=True, seed=0, drop_last=True)
    loader.set_epoch(4)
    for x, _, index in loader:
        assert torch.equal(x, fetch(other.train, index, epoch=1)[0])
    assert torch.equal(fetch(train, torch.arange(6), epoch=2)[0], torch.stack([b.train[(i, 2)][0] for i in range(6)]))
    assert torch.equal(fetch(train, torch.arange(6))[0], torch.stack([b.train[i][0] for i in range(6)]))


def test_imagefolder_decodes_like_pil_and_normalises_for_the_student(tmp_path, png_tree):
    from torchvision import transforms as T

    png_tree(tmp_path, size=(16, 16))
    b = build_datasets("imagefolder", tmp_path, image_size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert b.mean == (0.5, 0.5, 0.5)
    path = b.test.samples[0][0]
    from PIL import Image
    # 16 px -> resize 18 (16 / 0.875) -> centre crop 16: compare the decoded pixels only, before any resize
    from kdgraph.data.sources.imagefolder import decode
    assert torch.equal(decode(path), T.functional.pil_to_tensor(Image.open(path).convert("RGB")))
    x, _ = b.test[0]
    assert x.min() >= -1 and x.max() <= 1  # (p - 0.5) / 0.5 of pixels in [0, 1]


def test_num_workers_auto_only_for_data_read_per_sample(tmp_path, png_tree, monkeypatch):
    from kdgraph.data import make_loader
    from kdgraph.data.loader import TensorBatchLoader, auto_workers

    png_tree(tmp_path)
    folder = build_datasets("imagefolder", tmp_path, image_size=8)
    memory = build_datasets("synthetic", image_size=8)
    assert isinstance(make_loader(memory.train, 4, train=True, seed=0, drop_last=True, num_workers="auto"),
                      TensorBatchLoader)
    loader = make_loader(folder.train, 2, train=True, seed=0, drop_last=True, num_workers="auto")
    assert loader.num_workers == auto_workers() >= 1 and loader.persistent_workers
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    assert auto_workers() == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert auto_workers() == 3
