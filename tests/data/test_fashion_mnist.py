import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from kdgraph.data import DataError, load_fashion_mnist
from kdgraph.data.fashion_mnist_files import read_idx, write_idx
from kdgraph.data import fashion_mnist_files as fm

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def _write_fmnist(folder: Path, n_train=30, n_test=10, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    sfx = ".gz" if gz else ""
    data = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{split}-images-idx3-ubyte{sfx}", x)
        write_idx(folder / f"{split}-labels-idx1-ubyte{sfx}", y)
        data[split] = (x, y)
    return data


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path, gz):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = write_idx(tmp_path / ("a.idx" + (".gz" if gz else "")), arr)
    raw = p.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == gz
    out = read_idx(p)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, arr)


def test_idx_manual_header_and_other_dtypes(tmp_path):
    # hand-written header: magic 0x00000801 (ubyte, 1 dim), n=3
    p = tmp_path / "labels-idx1-ubyte"
    p.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
    np.testing.assert_array_equal(read_idx(p), [7, 8, 9])
    # gzip detected by magic bytes, not by file name
    q = tmp_path / "plain-name"
    q.write_bytes(gzip.compress(p.read_bytes()))
    np.testing.assert_array_equal(read_idx(q), [7, 8, 9])
    # big-endian int32 / float32 payloads
    for arr in (np.array([[1, -2], [300000, 4]], dtype=np.int32), np.array([1.5, -2.25], dtype=np.float32)):
        r = read_idx(write_idx(tmp_path / f"x{arr.dtype}", arr))
        assert r.dtype == arr.dtype
        np.testing.assert_array_equal(r, arr)


def test_idx_errors(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"PK\x03\x04abcdefgh")
    with pytest.raises(DataError, match="not an idx file"):
        read_idx(bad)
    trunc = tmp_path / "trunc"
    trunc.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
    with pytest.raises(DataError, match="truncated"):
        read_idx(trunc)
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "nope")


@pytest.mark.parametrize("gz", [True, False])
def test_load_from_root(tmp_path, gz):
    data = _write_fmnist(tmp_path, gz=gz)
    tr = load_fashion_mnist(tmp_path, "train")
    images, labels, info = tr
    assert images.dtype == torch.uint8 and images.shape == (30, 28, 28)
    assert labels.dtype == torch.int64
    np.testing.assert_array_equal(images.numpy(), data["train"][0])
    np.testing.assert_array_equal(labels.numpy(), data["train"][1])
    assert info.kind == "root" and info.num_train == 30 and info.num_test == 10
    assert "30 train / 10 test" in info.description
    te = load_fashion_mnist(str(tmp_path), "test", source="full")
    assert te.images.shape == (10, 28, 28)


def test_root_torchvision_layout(tmp_path):
    _write_fmnist(tmp_path / "FashionMNIST" / "raw", gz=False)
    assert load_fashion_mnist(tmp_path, "test").images.shape == (10, 28, 28)


def test_root_missing_file_is_named(tmp_path):
    _write_fmnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    assert load_fashion_mnist(tmp_path, "train").images.shape[0] == 30
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_fashion_mnist(tmp_path, "test")
    with pytest.raises(DataError, match="not a folder"):
        load_fashion_mnist(tmp_path / "missing", "train")


def test_argument_errors(tmp_path):
    with pytest.raises(DataError, match="split"):
        load_fashion_mnist(None, "val")
    with pytest.raises(DataError, match="source"):
        load_fashion_mnist(None, "train", source="web")
    with pytest.raises(DataError, match="embedded"):
        load_fashion_mnist(tmp_path, "train", source="embedded")


def test_embedded_subset_shape_balance_dtype():
    assert fm.EMBEDDED_FILE.stat().st_size < 8 * 1024 * 1024
    assert (fm.EMBEDDED_FILE.parent / "LICENSE-fashion-mnist").is_file()
    for split, n in (("train", 12000), ("test", 2000)):
        images, labels, info = load_fashion_mnist(None, split, source="embedded")
        assert images.shape == (n, 28, 28) and images.dtype == torch.uint8
        assert labels.shape == (n,) and labels.dtype == torch.int64
        assert torch.bincount(labels, minlength=10).tolist() == [n // 10] * 10
        assert info.kind == "embedded"
        assert info.description == "Fashion-MNIST: embedded subset (12,000 train / 2,000 test)"
    # images are real data, not blank: the mean is close to the published 0.2860
    assert abs(images.float().mean().item() / 255 - 0.286) < 0.02


def test_auto_falls_back_to_embedded(monkeypatch, tmp_path):
    monkeypatch.setattr(fm, "DEBIAN_DIR", str(tmp_path / "no-debian"))
    assert load_fashion_mnist(None, "test").source.kind == "embedded"
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(None, "test", source="full")


def test_auto_prefers_system_folder(monkeypatch, tmp_path):
    _write_fmnist(tmp_path)
    monkeypatch.setattr(fm, "DEBIAN_DIR", str(tmp_path))
    split = load_fashion_mnist(None, "train")
    assert split.source.kind == "debian" and split.images.shape[0] == 30
    assert "full set" in split.source.description


@pytest.mark.skipif(not DEBIAN.is_dir(), reason="dataset-fashion-mnist not installed")
def test_debian_full_set():
    tr = load_fashion_mnist(None, "train", source="full")
    te = load_fashion_mnist(None, "test", source="full")
    assert tr.images.shape == (60000, 28, 28) and te.images.shape == (10000, 28, 28)
    assert torch.bincount(tr.labels).tolist() == [6000] * 10
    assert tr.source.description.endswith("(60,000 train / 10,000 test)")
    # the embedded subset is exactly the first 1,200 per class of the full train split
    sub = load_fashion_mnist(None, "train", source="embedded")
    keep = torch.cat([torch.nonzero(tr.labels == c).flatten()[:1200] for c in range(10)]).sort().values
    assert torch.equal(sub.images, tr.images[keep]) and torch.equal(sub.labels, tr.labels[keep])
