import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TIMM_OFFLINE", "1")


# --- tiny Hugging Face vision models, built from a config inside the test (no network) ---------------------------
import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

PROCESSOR = {"image_processor_type": "ViTImageProcessor", "do_normalize": True, "do_resize": True,
             "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2,
             "size": {"height": 32, "width": 32}}


def tiny_vit(num_labels: int = 10, image_size: int = 32, seed: int = 0):
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    image_size=image_size, patch_size=8, num_labels=num_labels)
    return ViTForImageClassification(cfg).eval()


def save_folder(model, folder: Path, processor: dict | None = PROCESSOR) -> Path:
    model.save_pretrained(folder)
    if processor is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


def save_to_cache(model, repo_id: str, cache: Path, processor: dict | None = PROCESSOR) -> Path:
    """``cache/models--ORG--NAME/{refs/main, snapshots/REV/...}``, as the hub client writes it."""
    revision = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    tmp = cache / "tmp-save"
    save_folder(model, tmp, processor)
    snapshot.mkdir(parents=True, exist_ok=True)
    for f in tmp.iterdir():
        shutil.copy(f, snapshot / f.name)
    shutil.rmtree(tmp)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


@pytest.fixture
def tiny_hf(tmp_path, monkeypatch):
    """``acme/tiny-vit`` (a 2-layer ViT, 32 px, 10 classes, mean/std 0.5) in a fresh Hugging Face cache that
    ``HF_HUB_CACHE`` points at; returns the model as built."""
    pytest.importorskip("transformers", reason="the hf: model source needs transformers (pip install 'kdgraph[hf]')")
    model = tiny_vit()
    save_to_cache(model, "acme/tiny-vit", tmp_path / "hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return model


# --- Fashion-MNIST idx files (the first images of the embedded subset), as the full set's readers expect -----------
def write_fmnist_subset(root: Path, train: int, test: int) -> Path:
    """The first ``train`` training and ``test`` test images of the embedded subset as idx files in ``root``: the files
    both kdgraph and a reference read."""
    import numpy as np

    from kdgraph.data import load_fashion_mnist
    from kdgraph.data.fashion_mnist_files import write_idx

    for split, prefix, n in (("train", "train", train), ("test", "t10k", test)):
        data = load_fashion_mnist(split=split, source="embedded")
        write_idx(root / f"{prefix}-images-idx3-ubyte", data.images[:n].numpy())
        write_idx(root / f"{prefix}-labels-idx1-ubyte", data.labels[:n].numpy().astype(np.uint8))
    return root


@pytest.fixture(scope="session")
def fmnist_subset():
    """``fmnist_subset(root, train, test)``: :func:`write_fmnist_subset`."""
    return write_fmnist_subset
