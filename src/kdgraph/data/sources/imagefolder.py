"""``imagefolder``: the ImageNet layout under ``data.root`` (``train/<class>/<image>`` and ``val/`` or ``test/``),
read from files on access with torchvision's transforms (a random resized crop and flip for training)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdgraph.data import DataError
from kdgraph.data.datasets import IMAGENET_MEAN, IMAGENET_STD, DataBundle, Provides
from kdgraph.data.sources.common import SourceOptions, check_num_classes, require_root

__all__ = ["build"]


def _read_image(path: str) -> Any:
    """torchvision's image loader (PIL, RGB), with a file that is no readable image named in a DataError."""
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except (OSError, SyntaxError, ValueError) as exc:  # PIL: UnidentifiedImageError (an OSError), truncated files
        raise DataError(f"imagefolder: {path} cannot be read as an image ({exc}); delete or replace the file.") from None


def build(opts: SourceOptions) -> DataBundle:
    layout = "train/<class>/<image> and val/<class>/<image> (or test/) subfolders (ImageNet layout)"
    root = require_root("imagefolder", opts.root, layout)
    train_transform, eval_transform = opts.train_transform, opts.eval_transform
    train_dir = root / "train"
    eval_dir = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
    if not train_dir.is_dir():
        raise DataError(f"imagefolder: {str(train_dir)!r} does not exist; data.root must contain {layout}.")
    if eval_dir is None:
        raise DataError(f"imagefolder: neither {str(root / 'val')!r} nor {str(root / 'test')!r} exists; "
                        f"data.root must contain {layout}.")
    from torchvision import datasets, transforms as T

    size = 224 if opts.image_size is None else int(opts.image_size)
    resize = int(round(size / 0.875))
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if train_transform is None:
        train_transform = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    if eval_transform is None:
        eval_transform = T.Compose([T.Resize(resize), T.CenterCrop(size), T.ToTensor(), norm])

    def load(folder: Path, tf):
        try:
            return datasets.ImageFolder(str(folder), transform=tf, loader=_read_image)
        except (FileNotFoundError, RuntimeError) as exc:
            raise DataError(f"imagefolder: no images found under {str(folder)!r} ({exc}). Each class needs "
                            "its own subfolder with image files (.jpg, .png, ...).") from exc

    tr, te = load(train_dir, train_transform), load(eval_dir, eval_transform)
    if tr.classes != te.classes:
        only_te = sorted(set(te.classes) - set(tr.classes))
        if only_te:
            raise DataError(f"imagefolder: {eval_dir.name}/ has classes missing from train/: {only_te[:5]}. "
                            "Both splits must use the same class folders.")
        # eval split lacks some classes: remap to train indices so labels agree
        te.class_to_idx = tr.class_to_idx
        te.samples = [(p, tr.class_to_idx[te.classes[t]]) for p, t in te.samples]
        te.imgs, te.targets = te.samples, [t for _, t in te.samples]
        te.classes = tr.classes
    k = len(tr.classes)
    check_num_classes("imagefolder", opts.num_classes, k)
    return DataBundle(
        train=tr,
        test=te,
        num_classes=k,
        input_shape=(3, size, size),
        description=f"imagefolder {root}: {len(tr):,} train / {len(te):,} {eval_dir.name}, {k} classes, {size}px",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        classes=tuple(tr.classes),
        provides=Provides(exact=False, transforms=True, files=True),  # a random crop and flip per image and access
    )
