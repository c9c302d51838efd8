import os
import pickle
import shlex

import numpy as np
import pytest
import torch

from kdgraph.data import DataError, build_datasets
from kdgraph.data import cifar, datasets


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


def test_torchvision_cifar10(tmp_path, check_bundle):
    folder = _fake_cifar10(tmp_path)
    b = build_datasets("torchvision:CIFAR10", tmp_path)
    check_bundle(b, 10, (3, 32, 32))
    assert len(b.train) == 30 and len(b.test) == 6 and b.classes[0] == "c0"
    with open(folder / "test_batch", "rb") as fh:
        entry = pickle.load(fh)
    x, y = b.test[2]
    raw = torch.from_numpy(entry["data"][2].reshape(3, 32, 32)).float() / 255
    mean = torch.tensor(datasets.CIFAR10_MEAN).view(3, 1, 1)
    std = torch.tensor(datasets.CIFAR10_STD).view(3, 1, 1)
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


class _RunsShell:
    """Unpickling this with a plain ``pickle.load`` runs a shell command (``os.system``)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_unpickler_refuses_code(tmp_path):
    folder = _fake_cifar10(tmp_path)
    marker = tmp_path / "PWNED"
    with open(folder / "data_batch_1", "wb") as fh:
        fh.write(pickle.dumps(_RunsShell(f"echo hi > {shlex.quote(str(marker))}")))
    with pytest.raises(DataError, match=r"data_batch_1 \(refusing to load \w+\.system .*not a CIFAR python batch"):
        cifar.read_cifar("torchvision:CIFAR10", tmp_path)
    with pytest.raises(DataError, match="refusing to load"):
        build_datasets("torchvision:CIFAR10", tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("change,match", [
    (lambda e: e.pop("data"), "data_batch_2 has no 'data' entry"),
    (lambda e: e.pop("labels"), "data_batch_2 has no 'labels'"),
    (lambda e: e.update(data=e["data"][:, :1000]), r"data_batch_2: 'data' .*6000 values.*\(N, 3072\)"),
    (lambda e: e.update(labels=e["labels"][:-1]), "data_batch_2: 6 images but 5 labels"),
    (lambda e: e.update(labels=[12] * len(e["labels"])), r"data_batch_2: label 12 is outside 0\.\.9"),
])
def test_malformed_cifar_batch_is_a_data_error(tmp_path, change, match):
    folder = _fake_cifar10(tmp_path)
    with open(folder / "data_batch_2", "rb") as fh:
        entry = pickle.load(fh)
    change(entry)
    with open(folder / "data_batch_2", "wb") as fh:
        pickle.dump(entry, fh)
    with pytest.raises(DataError, match=match):
        build_datasets("torchvision:CIFAR10", tmp_path)
