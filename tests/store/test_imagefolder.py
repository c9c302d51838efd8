"""A teacher store over an image folder: imagefolder's crops are drawn from (seed, epoch, image), so view v of an image
is its crop of epoch v, and training from the store takes the online run's steps (float64: within 1e-9)."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from kdgraph.models.zoo import FmnistResNet
from kdgraph.spec import spec_from_dict
from kdgraph.store.manifest import StoreError, read_manifest
from kdgraph.teach import teach
from kdgraph.train import Trainer, train


def _folder(root, per_class=12, classes=("a", "b", "c")):
    """PNGs of several sizes (the crops' boxes depend on them) under root/train/<class>/ and root/val/<class>/."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 3)):
        for k, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                h, w = 18 + 3 * (i % 3), 20 + 2 * (i % 4)
                pixels = rng.integers(0, 256, (h, w, 3)) // 2 + 40 * k  # a class-dependent brightness
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / name / f"{i}.png")


def _spec(root, **sections):
    doc = {
        "name": "folder-store",
        "teacher": {"model": "kdgraph:fmnist_resnet",
                    "kwargs": {"widths": [8, 16, 32], "blocks": [1, 1, 1], "in_chans": 3, "num_classes": 3}},
        "student": {"model": "kdgraph:fmnist_cnn", "kwargs": {"widths": [4, 8, 16], "in_chans": 3, "num_classes": 3}},
        "data": {"dataset": "imagefolder", "root": str(root), "image_size": 16, "batch_size": 8, "num_workers": 0},
        "distill": {"logits": {"temperature": 4.0, "weight": 0.9},
                    "pairs": [{"teacher": "layer3", "student": "block3", "loss": "mse"}]},  # whole maps
        "train": {"epochs": 2, "baseline": False, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
        "runtime": {"seed": 0, "threads": 1, "device": "cpu", "precision": "fp64"},
    }
    for key, value in sections.items():
        doc[key] = {**doc[key], **value}
    return spec_from_dict(doc)


@pytest.mark.parametrize("data", [{}, {"augment": "crop-flip", "mix": "mixup"}], ids=["folder-crops", "crop-mixup"])
def test_an_image_folder_from_a_store_equals_the_online_run_step_by_step(tmp_path, steps, teacher_forwards, data):
    """imagefolder's own random resized crops (and, in the second case, crop-flip and mixup on top of them, the
    partners read from the folder too): teach writes K = epochs views (the crops change every epoch), and training
    from the store gives every step's loss of the online run within 1e-9 in float64, with no teacher forward."""
    _folder(tmp_path / "images")
    steps["run"] = "online"
    online = train(_spec(tmp_path / "images", data=data), write=False, quiet=True)
    result = teach(_spec(tmp_path / "images", data=data), out=tmp_path / "store", quiet=True, shard_images=10)
    assert result.views == 2 and result.images == 36
    assert read_manifest(tmp_path / "store")["teachers"]["teacher"]["taps"]["layer3"]["stored"] == "whole"
    teacher_forwards.clear()
    steps["run"] = "store"
    stored = train(_spec(tmp_path / "images", data=data, teacher={"store": str(tmp_path / "store")}), write=False,
                   quiet=True)
    assert teacher_forwards == []
    assert len(steps["online"]) == len(steps["store"]) == 2 * (36 // 8)
    np.testing.assert_allclose(steps["store"], steps["online"], rtol=0, atol=1e-9)
    assert len(set(np.round(steps["online"], 6))) == len(steps["online"])  # the loss moves
    assert stored.summary["teacher_top1"] == online.summary["teacher_top1"]


def test_every_epoch_sees_the_crops_its_view_was_taught_on(tmp_path, seeded_plan, monkeypatch):
    """A store of 1 view trained for 2 epochs with another runtime.seed: in both epochs each image is the crop the
    teacher saw (its stored logits are the teacher's forward on the batch the student gets), drawn from the store's
    seed; the store checks the folder's files and follows the folder when it moves."""
    _folder(tmp_path / "images")
    torch.manual_seed(1)
    save_file(FmnistResNet(widths=(8, 16, 32), blocks=(1, 1, 1), in_chans=3, num_classes=3).state_dict(),
              str(tmp_path / "teacher.safetensors"))
    weights = {"weights": str(tmp_path / "teacher.safetensors")}
    teach(_spec(tmp_path / "images", teacher=weights), views=1, out=tmp_path / "store", quiet=True)
    spec = _spec(tmp_path / "images", teacher={**weights, "store": str(tmp_path / "store")},
                 runtime={"seed": 3})
    seen = []
    train_batch = Trainer.train_batch
    monkeypatch.setattr(Trainer, "train_batch", lambda self, x, y, index, host: seen.append(
        (x.clone(), index.clone(), host["teachers"]["teacher"]["output"])) or train_batch(self, x, y, index, host))
    train(spec, write=False, quiet=True)
    assert len(seen) == 2 * (36 // 8)
    plan = seeded_plan(spec)
    teacher = plan.graph.teachers["teacher"]
    first = {}
    for x, index, stored in seen:
        with torch.no_grad():
            torch.testing.assert_close(teacher(x.double())["output"], stored, rtol=0, atol=1e-9)
        for i, image in zip(index.tolist(), x):
            assert torch.equal(first.setdefault(i, image), image)  # epoch 1 replays view 0: the same crop
    moved = shutil.copytree(tmp_path / "images", tmp_path / "elsewhere")
    seeded_plan(_spec(moved, teacher={**weights, "store": str(tmp_path / "store")}))  # names are relative
    Image.new("RGB", (20, 20)).save(moved / "train" / "a" / "new.png")
    with pytest.raises(StoreError, match=r"data.images: 37 here, 36 in the store"):
        seeded_plan(_spec(moved, teacher={**weights, "store": str(tmp_path / "store")}))
