"""``imagefolder``: the ImageNet layout under ``data.root`` (``train/<class>/<image>`` and ``val/`` or ``test/``), read
from files on access: :class:`FolderImages` decodes JPEG, PNG, WebP and GIF with ``torchvision.io`` (other formats with
PIL), crops and resizes the uint8 tensor and normalises it for the student.

Training draws a random resized crop and a flip per image from ``(seed, epoch, index)`` alone, never from a global
generator: the loader hands each sample its epoch with its index (``seeded``), so the batches are the same with 0,
2 or 8 loader processes and after resuming, and an image's crop differs from epoch to epoch. For the same reason a
teacher store can replay epoch ``e``'s crops exactly (``Provides.seeded``, ``datasets.ReplayedViews``)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from kdgraph.data import DataError
from kdgraph.data.datasets import IMAGENET_MEAN, IMAGENET_STD, DataBundle, Provides
from kdgraph.data.sources.common import SourceOptions, check_num_classes, require_root

__all__ = ["build", "FolderImages", "decode", "CROPS"]

_TORCHVISION_IO = (".jpg", ".jpeg", ".png", ".webp", ".gif")
# torchvision 0.29 announces that its decoders move to TorchCodec; they are still torchvision's fastest path here
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)


def _read_image(path: str) -> Any:
    """torchvision's image loader (PIL, RGB), with a file that is no readable image named in a DataError."""
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except (OSError, SyntaxError, ValueError) as exc:  # PIL: UnidentifiedImageError (an OSError), truncated files
        raise DataError(f"imagefolder: {path} cannot be read as an image ({exc}); delete or replace the file.") from None


def decode(path: str) -> torch.Tensor:
    """The image at ``path`` as uint8 RGB ``(3, H, W)``: ``torchvision.io`` for JPEG/PNG/WebP/GIF, PIL otherwise."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    if path.lower().endswith(_TORCHVISION_IO):
        try:
            image = decode_image(read_file(path), mode=ImageReadMode.RGB)
            return image[0] if image.dim() == 4 else image  # an animated GIF: its first frame
        except (RuntimeError, ValueError) as exc:
            raise DataError(f"imagefolder: {path} cannot be read as an image ({str(exc).splitlines()[0]}); delete "
                            "or replace the file.") from None
    from torchvision.transforms.functional import pil_to_tensor

    return pil_to_tensor(_read_image(path))


CROPS = "torchvision-rrc-flip-seedsequence-v1"
"""The training crops' algorithm and draws (``crop_box`` from a generator seeded by ``_sample_seed``): a teacher store
records it, so that a later change of either is caught."""


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    state = np.random.SeedSequence([int(seed) & (2**64 - 1), int(epoch), int(index)]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def crop_box(height: int, width: int, g: torch.Generator, scale: tuple[float, float] = (0.08, 1.0),
             ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params`` drawn from ``g``: ``(top, left, h, w)``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(3, generator=g, dtype=torch.float64).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=g))
            left = int(torch.randint(0, width - w + 1, (1,), generator=g))
            return top, left, h, w
    in_ratio = width / height  # fallback: the central crop
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class FolderImages(Dataset):
    """Image files with class labels, served as ``(float (3, S, S) normalised, label)``.

    ``train``: torchvision's ``RandomResizedCrop(S)`` + ``RandomHorizontalFlip()``, each drawn from
    ``(seed, epoch, index)``; otherwise ``Resize(round(S / 0.875))`` (shorter side) + ``CenterCrop(S)``. Resizing
    runs on the uint8 tensor (bilinear, antialiased). A key is an index, ``(index, epoch)`` (``seeded``: the
    kdgraph loaders pass the epoch with the index, so worker processes need no shared state) or ``(index, epoch,
    seed)`` (a teacher store's seed instead of the data set's: ``ReplayedViews``). ``root``: the split's folder, which
    the file names in a store's fingerprint are relative to."""

    seeded = True

    def __init__(self, samples: list[tuple[str, int]], classes: list[str], size: int, train: bool, seed: int = 0,
                 mean: tuple = IMAGENET_MEAN, std: tuple = IMAGENET_STD, root: Optional[Path] = None):
        self.samples, self.classes, self.size, self.train, self.seed = samples, classes, int(size), train, int(seed)
        self.root = root
        self.targets = [t for _, t in samples]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) * 255.0
        self.scale = 1.0 / (torch.tensor(std, dtype=torch.float32).view(-1, 1, 1) * 255.0)

    def __len__(self) -> int:
        return len(self.samples)

    def pixels(self, key: Any) -> tuple[torch.Tensor, int]:
        """The uint8 ``(3, S, S)`` crop of sample ``key`` (index, ``(index, epoch)`` or ``(index, epoch, seed)``) and
        its label."""
        from torchvision.transforms.v2 import functional as F

        index, epoch, seed = (*key, self.seed)[:3] if isinstance(key, tuple) else (key, 0, self.seed)
        path, label = self.samples[index]
        image = decode(path)
        s = self.size
        if self.train:
            g = torch.Generator().manual_seed(_sample_seed(seed, epoch, index))
            top, left, h, w = crop_box(image.shape[-2], image.shape[-1], g)
            image = F.resize(image[:, top:top + h, left:left + w], [s, s], antialias=True)
            if torch.rand(1, generator=g).item() < 0.5:
                image = image.flip(-1)
        else:
            image = F.center_crop(F.resize(image, [int(round(s / 0.875))], antialias=True), [s, s])
        return image.contiguous(), label

    def __getitem__(self, key: Any) -> tuple[torch.Tensor, int]:
        image, label = self.pixels(key)
        return (image.float() - self.mean) * self.scale, label


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
    mean, std = opts.mean or IMAGENET_MEAN, opts.std or IMAGENET_STD
    if len(mean) != 3 or len(std) != 3:
        raise DataError(f"imagefolder gives RGB images, but the normalisation asked for has {len(mean)} mean and "
                        f"{len(std)} std values; give three of each")

    def load(folder: Path, tf):
        try:
            return datasets.ImageFolder(str(folder), transform=tf, loader=_read_image)
        except (FileNotFoundError, RuntimeError) as exc:
            raise DataError(f"imagefolder: no images found under {str(folder)!r} ({exc}). Each class needs "
                            "its own subfolder with image files (.jpg, .png, ...).") from exc

    norm = T.Normalize(mean, std)
    resize = int(round(size / 0.875))
    if train_transform is None and eval_transform is None:  # kdgraph's own pipeline: torchvision.io, seeded crops
        tr, te = load(train_dir, None), load(eval_dir, None)
    else:  # transforms from Python read PIL images: torchvision's ImageFolder as it is
        train_transform = train_transform or T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(),
                                                        T.ToTensor(), norm])
        eval_transform = eval_transform or T.Compose([T.Resize(resize), T.CenterCrop(size), T.ToTensor(), norm])
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
    own = train_transform is None and eval_transform is None
    if own:
        tr = FolderImages(tr.samples, tr.classes, size, True, opts.seed, mean, std, root=train_dir)
        te = FolderImages(te.samples, te.classes, size, False, opts.seed, mean, std, root=eval_dir)
    k = len(tr.classes)
    check_num_classes("imagefolder", opts.num_classes, k)
    return DataBundle(
        train=tr,
        test=te,
        num_classes=k,
        input_shape=(3, size, size),
        description=f"imagefolder {root}: {len(tr):,} train / {len(te):,} {eval_dir.name}, {k} classes, {size}px",
        mean=tuple(mean),
        std=tuple(std),
        classes=tuple(tr.classes),
        # a new crop and flip per image and epoch: drawn from (seed, epoch, index) by kdgraph's own pipeline, from the
        # global generator by transforms from Python
        provides=Provides(exact=False, transforms=True, files=True, seeded=own),
        own_mean=IMAGENET_MEAN,  # a folder of photographs: ImageNet's statistics unless the student asks otherwise
        own_std=IMAGENET_STD,
    )
