"""Data set types: ``DataBundle`` (what ``build_datasets`` returns) with ``Provides`` (what its splits promise),
``TensorImageDataset`` (a whole split held as one tensor and served by index or by batch), ``take`` (the first n
samples), ``select`` (any samples by position), ``ReplayedViews`` (a seeded data set as a teacher store replays it)
and the per-data-set normalisation constants.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset
from torch.utils.data import Subset as _TorchSubset

from . import DataError

__all__ = ["DataBundle", "Provides", "TensorImageDataset", "ReplayedViews", "take", "select", "renormalised"]

# ------------------------------------------------------------- normalisation (mean, std)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Provides:
    """What a source's splits promise. Training asks this instead of assuming it or probing the data sets:

    - ``indexable``: map-style, samples by position, with a length. The seeded loader's order, resuming mid-epoch,
      data-parallel shards, evaluation shards and the teacher cache all need it (``resolve_plan`` refuses a source
      without it); every built-in source is.
    - ``exact``: every access of a sample gives the same tensor, so a teacher's outputs can be cached exactly
      (``teacher.cache: auto``). False where a random per-sample transform runs.
    - ``seeded``: not exact, but the random per-sample transform is drawn from ``(seed, epoch, index)`` alone (the
      loader passes ``(index, epoch)`` keys), so epoch ``e``'s sample is the same on every access: a teacher store
      can replay it (imagefolder's crops; :class:`ReplayedViews`). A transform from Python is not.
    - ``transforms``: a per-sample transform runs on access (imagefolder's crops, a ``train_transform`` from Python),
      so batches are collated by a DataLoader instead of sliced from one tensor.
    - ``files``: samples are read from files on access; ``data.num_workers`` loader processes help.
    """

    indexable: bool = True
    exact: bool = True
    transforms: bool = False
    files: bool = False
    seeded: bool = False

    @property
    def replayable(self) -> bool:
        """Whether a teacher store can replay what the teacher saw of every sample (``exact`` or ``seeded``)."""
        return self.exact or self.seeded

    @classmethod
    def in_memory(cls, transforms: bool = False) -> "Provides":
        """A split held in memory; a per-sample transform (not known to be deterministic) makes it inexact."""
        return cls(exact=not transforms, transforms=transforms)


@dataclass
class DataBundle:
    """The train/test data sets of one source, with what a model and a report need to know about them, and what
    the splits provide (:class:`Provides`)."""

    train: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]
    description: str
    mean: tuple
    std: tuple
    classes: tuple[str, ...] = field(default_factory=tuple)
    provides: Provides = field(default_factory=Provides)
    own_mean: tuple = ()
    """The data set's own statistics (default: ``mean``/``std``). The splits are normalised with ``mean``/``std``,
    which ``student.input`` may set otherwise; a teacher whose expected input is not known is fed these."""
    own_std: tuple = ()

    def __post_init__(self) -> None:
        self.own_mean, self.own_std = tuple(self.own_mean or self.mean), tuple(self.own_std or self.std)
        if self.provides.indexable:
            for split, ds in (("train", self.train), ("test", self.test)):
                if not (hasattr(ds, "__len__") and hasattr(ds, "__getitem__")):
                    raise DataError(f"the {split} split ({type(ds).__name__}) has no length or no indexing, but the "
                                    "bundle says it is indexable; give it __len__ and __getitem__, or set "
                                    "provides.indexable false")


class TensorImageDataset(Dataset):
    """In-memory image data set served by index.

    ``images`` is ``(N, C, H, W)``: either float (already normalised) or uint8 (scaled to
    [0, 1] and normalised with ``mean``/``std`` on access, which keeps memory 4x lower).
    ``size`` resizes (bilinear, antialiased) on access when it differs from the stored size.
    ``transform`` (optional) is applied per sample to the normalised float tensor; with one,
    the data set no longer supports the batched fast path.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        mean: tuple | None = None,
        std: tuple | None = None,
        size: int | tuple[int, int] | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if images.dim() != 4:
            raise DataError(f"TensorImageDataset expects images (N, C, H, W), got {tuple(images.shape)}.")
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise DataError(f"TensorImageDataset: {images.shape[0]} images but labels of shape "
                            f"{tuple(labels.shape)}.")
        self.images = images.contiguous()
        self.labels = labels.to(torch.int64)
        self.transform = transform
        c = images.shape[1]
        if images.dtype == torch.uint8:
            mean = tuple(mean) if mean is not None else (0.0,) * c
            std = tuple(std) if std is not None else (1.0,) * c
            self._scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(1, c, 1, 1)
            self._shift = torch.tensor([m / s for m, s in zip(mean, std)]).view(1, c, 1, 1)
        elif torch.is_floating_point(images):
            self._scale = self._shift = None
        else:
            raise DataError(f"TensorImageDataset: images must be uint8 or float, got {images.dtype}.")
        if isinstance(size, int):
            size = (size, size)
        self.size = None if size is None or tuple(size) == tuple(images.shape[2:]) else tuple(size)

    @property
    def supports_batching(self) -> bool:
        return self.transform is None

    @property
    def targets(self) -> torch.Tensor:
        return self.labels

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return (c, *self.size) if self.size else (c, h, w)

    def __len__(self) -> int:
        return self.images.shape[0]

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self._scale is not None:
            x = x.float() * self._scale - self._shift
        else:
            x = x.float()
        if self.size is not None:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return x

    def get_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x float (B, C, H, W), y int64 (B,))`` for an index tensor (no per-sample transform)."""
        idx = torch.as_tensor(idx, dtype=torch.int64)
        # index_select is much faster than advanced indexing on CPU
        x = self._prepare(self.images.index_select(0, idx))
        y = self.labels.index_select(0, idx)
        if self.transform is not None:
            x = torch.stack([self.transform(s) for s in x])
        return x, y

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self._prepare(self.images[i].unsqueeze(0))[0]
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[i])


class Subset(_TorchSubset):
    """``torch.utils.data.Subset`` that passes the ``(index, epoch[, seed])`` keys of a seeded data set through (the
    position mapped to the underlying index)."""

    @property
    def seeded(self) -> bool:
        return bool(getattr(self.dataset, "seeded", False))

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, tuple):
            return self.dataset[(self.indices[key[0]], *key[1:])]
        return self.dataset[self.indices[key]]

    def __getitems__(self, keys: list) -> list:
        return [self[key] for key in keys]


class ReplayedViews(Dataset):
    """A seeded data set (``Provides.seeded``) read as a teacher store of ``views`` views, drawn from ``seed``, replays
    it: in epoch ``e`` sample ``i`` is its draw of epoch ``e mod views`` from the store's seed, the pixels ``kdgraph
    teach`` showed the teachers as view ``e mod views`` (whatever ``runtime.seed`` the run has). A plain index (a
    mixing partner) reads epoch 0's draw from the store's seed, as ``teach`` read it."""

    seeded = True

    def __init__(self, dataset: Dataset, views: int, seed: int) -> None:
        self.dataset, self.views, self.seed = dataset, int(views), int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> Any:
        index, epoch = key[:2] if isinstance(key, tuple) else (key, 0)
        return self.dataset[(index, epoch % self.views, self.seed)]


def take(dataset: Dataset, n: int) -> Dataset:
    """The first ``n`` samples of ``dataset`` (all of it when shorter).

    A :class:`TensorImageDataset` stays tensor-backed (a view sharing storage, so the batched
    fast path still applies); any other dataset becomes a ``torch.utils.data.Subset``.
    """
    if n is None or int(n) <= 0:
        raise DataError(f"a subset size must be a positive integer, got {n!r}.")
    n = int(n)
    if n >= len(dataset):
        return dataset
    if isinstance(dataset, TensorImageDataset):
        out = copy.copy(dataset)
        out.images, out.labels = dataset.images[:n], dataset.labels[:n]
        return out
    return Subset(dataset, range(n))


def _normalised_float(images_u8: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    """uint8 (N, C, H, W) -> normalised float32, computed once."""
    c = images_u8.shape[1]
    m = torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1)
    return (images_u8.float().div_(255.0) - m).div_(s)



def renormalised(dataset: TensorImageDataset, mean_from: tuple, std_from: tuple, mean: tuple,
                 std: tuple) -> TensorImageDataset:
    """``dataset`` normalised with ``(mean, std)`` instead of ``(mean_from, std_from)``: stored floats converted once
    (``x·s_from/s + (m_from − m)/s``), uint8 images given the new constants (normalised on access)."""
    out = copy.copy(dataset)
    c = dataset.images.shape[1]
    if len(mean) != c or len(std) != c:
        raise DataError(f"the data has {c} channel(s) but the normalisation asked for has {len(mean)} mean and "
                        f"{len(std)} std values; give one per channel")
    if dataset._scale is None:
        scale = torch.tensor([a / b for a, b in zip(std_from, std)], dtype=torch.float64).view(1, c, 1, 1)
        shift = torch.tensor([(a - m) / s for a, m, s in zip(mean_from, mean, std)], dtype=torch.float64)
        out.images = (dataset.images.double() * scale + shift.view(1, c, 1, 1)).to(dataset.images.dtype)
    else:
        out._scale = torch.tensor([1.0 / (255.0 * v) for v in std]).view(1, c, 1, 1)
        out._shift = torch.tensor([m / v for m, v in zip(mean, std)]).view(1, c, 1, 1)
    return out


def select(dataset: Dataset, idx: torch.Tensor) -> Dataset:
    """The samples at positions ``idx`` of ``dataset``; tensor-backed data sets stay tensor-backed (sliced by batch)."""
    if isinstance(dataset, TensorImageDataset):
        out = copy.copy(dataset)
        out.images, out.labels = dataset.images[idx], dataset.labels[idx]
        return out
    if isinstance(dataset, TensorDataset):
        return TensorDataset(*(t[idx] for t in dataset.tensors))
    return Subset(dataset, idx.tolist())
