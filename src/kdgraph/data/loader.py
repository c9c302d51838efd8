"""Seeded, resumable data loaders.

The sample order of epoch ``e`` depends only on ``(seed, e)``, never on what was iterated
before, so a run can resume exactly: ``loader.set_epoch(e); loader.skip(k)`` continues at
batch ``k`` of epoch ``e``.

* :class:`TensorBatchLoader` - fast path for tensor-backed datasets: yields index-sliced
  batches directly (no per-sample ``__getitem__`` + collate).
* :class:`SeededDataLoader` - a ``torch.utils.data.DataLoader`` with the same ordering
  semantics, for any map-style dataset (e.g. ImageFolder).

Both use :func:`epoch_indices`, so for a tensor-backed dataset they produce identical batches.
With ``shard=(rank, world)`` (data-parallel training) ``batch_size`` is the global batch: every
process takes its ``rank``-th slice of each global batch of the same permutation (:func:`shard_order`).
Each ``iter(loader)`` uses the current epoch and then advances it by one; call
``set_epoch(e)`` to choose the epoch explicitly. ``skip(n)`` applies to the next iteration
only.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from . import DataError

__all__ = ["epoch_indices", "shard_order", "EpochSampler", "TensorBatchLoader", "SeededDataLoader", "WithIndex",
           "make_loader", "auto_workers", "fetch"]


def auto_workers() -> int:
    """``data.num_workers: auto`` for data read per sample: the cores this process may use, shared among the
    processes torchrun started on this node (``LOCAL_WORLD_SIZE``), one left to the training process, at least 1
    and at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_process = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, min(8, per_process - 1))

_MASK64 = (1 << 64) - 1


def _epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed mixed from ``(seed, epoch)`` (SplitMix-quality via numpy SeedSequence)."""
    state = np.random.SeedSequence([int(seed) & _MASK64, int(epoch) & _MASK64]).generate_state(2, np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & ((1 << 63) - 1)


def epoch_indices(n: int, *, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """Sample order for one epoch: a permutation depending only on (seed, epoch), or arange."""
    if not shuffle:
        return torch.arange(n)
    g = torch.Generator()
    g.manual_seed(_epoch_seed(seed, epoch))
    return torch.randperm(n, generator=g)


def shard_order(order: torch.Tensor, batch_size: int, rank: int, world: int) -> torch.Tensor:
    """Process ``rank``'s share of ``order``: slice ``rank`` of ``world`` equal slices of every full batch of
    ``batch_size`` (a trailing partial batch is dropped). The shares of all ranks are disjoint."""
    per, full = batch_size // world, len(order) // batch_size
    return order[:full * batch_size].view(full, world, per)[:, rank].reshape(-1)


def _check_shard(shard: tuple[int, int], batch_size: int, drop_last: bool) -> tuple[int, int]:
    rank, world = int(shard[0]), int(shard[1])
    if world < 1 or not 0 <= rank < world:
        raise DataError(f"shard must be (rank, world) with 0 <= rank < world, got {shard!r}.")
    if world > 1 and (batch_size % world or not drop_last):
        raise DataError(f"a sharded loader needs drop_last=True and a batch size divisible by the {world} "
                        f"processes, got batch_size={batch_size}, drop_last={drop_last}.")
    return rank, world


def _num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else (n + batch_size - 1) // batch_size


class _EpochState:
    """Epoch counter + one-shot skip shared by both loaders."""

    seed: int
    shuffle: bool
    epoch: int
    _skip: int

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch`` for the next iteration (order depends only on (seed, epoch))."""
        if epoch < 0:
            raise DataError(f"epoch must be >= 0, got {epoch}.")
        self.epoch = int(epoch)

    def skip(self, n_batches: int) -> None:
        """Skip the first ``n_batches`` batches of the next iteration (mid-epoch resume)."""
        if n_batches < 0:
            raise DataError(f"skip() needs a number of batches >= 0, got {n_batches}.")
        self._skip = int(n_batches)

    def _begin_epoch(self) -> tuple[int, int]:
        epoch, skip = self.epoch, self._skip
        self.epoch, self._skip = epoch + 1, 0
        return epoch, skip


class EpochSampler(_EpochState, Sampler[int]):
    """Index sampler whose order for epoch e depends only on (seed, e).

    ``skip(k)`` drops the first ``k`` batches of the next epoch. With ``shard=(rank, world)``,
    ``batch_size`` is the global batch and only this rank's slices of it are yielded.
    """

    def __init__(self, n: int, *, seed: int, shuffle: bool, batch_size: int = 1,
                 shard: tuple[int, int] = (0, 1), keyed: bool = False) -> None:
        self.keyed = bool(keyed)  # yield (index, epoch): a seeded data set draws its per-sample randomness from them
        self.n = int(n)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.rank, self.world = _check_shard(shard, int(batch_size), True)
        self.global_batch = int(batch_size)
        self.batch_size = int(batch_size) // self.world
        self.epoch = 0
        self._skip = 0

    def __iter__(self) -> Iterator[int]:
        epoch, skip = self._begin_epoch()
        idx = epoch_indices(self.n, seed=self.seed, epoch=epoch, shuffle=self.shuffle)
        if self.world > 1:
            idx = shard_order(idx, self.global_batch, self.rank, self.world)
        idx = idx[skip * self.batch_size:].tolist()
        return iter([(i, epoch) for i in idx] if self.keyed else idx)

    def __len__(self) -> int:
        return self.n if self.world == 1 else self.n // self.global_batch * self.batch_size


def _check_common(dataset: Any, batch_size: int) -> int:
    if batch_size is None or int(batch_size) <= 0:
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}.")
    try:
        n = len(dataset)
    except TypeError as exc:
        raise DataError(f"the dataset ({type(dataset).__name__}) has no length; kdgraph loaders "
                        "need a map-style dataset.") from exc
    if n == 0:
        raise DataError(f"the dataset ({type(dataset).__name__}) is empty; check the data root and split.")
    return n


def supports_batching(dataset: Any) -> bool:
    """True when ``dataset`` can be sliced by an index tensor (no per-sample transform)."""
    if isinstance(dataset, TensorDataset):
        return True
    return bool(getattr(dataset, "supports_batching", False)) and hasattr(dataset, "get_batch")


def fetch(dataset: Any, idx: torch.Tensor, epoch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and labels at positions ``idx`` (any order, repeats allowed) as one batch ``(x, y)``: sliced by
    index where the data set allows it, else read sample by sample and stacked (mixing partners, the teacher store).
    ``epoch``: a seeded data set gives its draws of that epoch (what the training loader gives in it; imagefolder's
    crops), not those of a plain index."""
    idx = torch.as_tensor(idx, dtype=torch.int64).cpu()
    if isinstance(dataset, TensorDataset):
        return tuple(t.index_select(0, idx) for t in dataset.tensors[:2])  # type: ignore[return-value]
    if supports_batching(dataset):
        x, y, *_ = dataset.get_batch(idx)
        return x, y
    keyed = epoch is not None and getattr(dataset, "seeded", False)
    samples = [dataset[(int(i), int(epoch)) if keyed else int(i)] for i in idx]
    return torch.stack([torch.as_tensor(s[0]) for s in samples]), torch.as_tensor([int(s[1]) for s in samples])


class WithIndex(Dataset):
    """A data set whose samples also carry their index: ``(x, y, i)``; batches keep the fast path when they can."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.supports_batching = supports_batching(dataset)
        self.seeded = bool(getattr(dataset, "seeded", False))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> tuple[Any, ...]:
        return (*self.dataset[key], key[0] if isinstance(key, tuple) else key)

    def get_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ds = self.dataset
        batch = tuple(t.index_select(0, idx) for t in ds.tensors) if isinstance(ds, TensorDataset) else ds.get_batch(idx)
        return (*batch, idx)


class TensorBatchLoader(_EpochState):
    """Iterable over index-sliced batches of a tensor-backed dataset.

    Works with :class:`kdgraph.data.TensorImageDataset` (anything with ``get_batch(idx)`` and
    ``supports_batching``) and ``torch.utils.data.TensorDataset``. ``shard=(rank, world)``: see the module doc.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        drop_last: bool,
        pin_memory: bool = False,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        n = _check_common(dataset, batch_size)
        self.rank, self.world = _check_shard(shard, int(batch_size), drop_last)
        if not supports_batching(dataset):
            raise DataError(f"TensorBatchLoader needs a tensor-backed dataset without per-sample "
                            f"transforms; got {type(dataset).__name__}. Use make_loader() instead.")
        self.dataset = dataset
        self.n = n
        self.global_batch = int(batch_size)
        self.batch_size = int(batch_size) // self.world
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.pin_memory = bool(pin_memory) and torch.cuda.is_available()
        self.epoch = 0
        self._skip = 0

    def __len__(self) -> int:
        return _num_batches(self.n, self.global_batch, self.drop_last)

    def _get(self, idx: torch.Tensor):
        ds = self.dataset
        if isinstance(ds, TensorDataset):
            return tuple(t.index_select(0, idx) for t in ds.tensors)
        return ds.get_batch(idx)

    def __iter__(self) -> Iterator[Any]:
        epoch, skip = self._begin_epoch()
        order = epoch_indices(self.n, seed=self.seed, epoch=epoch, shuffle=self.shuffle)
        if self.world > 1:
            order = shard_order(order, self.global_batch, self.rank, self.world)
        for b in range(skip, len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            batch = self._get(idx)
            if self.pin_memory:
                batch = tuple(t.pin_memory() for t in batch)
            yield batch


class SeededDataLoader(DataLoader):
    """``DataLoader`` whose order for epoch e depends only on (seed, e); supports ``skip``.

    Worker seeds are also derived from (seed, epoch) through the loader's generator.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        drop_last: bool,
        num_workers: int = 0,
        pin_memory: bool = False,
        shard: tuple[int, int] = (0, 1),
        **kwargs: Any,
    ) -> None:
        n = _check_common(dataset, batch_size)
        _check_shard(shard, int(batch_size), drop_last)
        sampler = EpochSampler(n, seed=seed, shuffle=shuffle, batch_size=int(batch_size), shard=shard,
                               keyed=bool(getattr(dataset, "seeded", False)))
        generator = torch.Generator()
        generator.manual_seed(_epoch_seed(seed, 0) ^ 0x5EED)
        super().__init__(
            dataset,
            batch_size=sampler.batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=num_workers,
            pin_memory=pin_memory and torch.cuda.is_available(),
            generator=generator,
            **kwargs,
        )
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.epoch_sampler = sampler

    @property
    def epoch(self) -> int:
        return self.epoch_sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch_sampler.set_epoch(epoch)

    def skip(self, n_batches: int) -> None:
        self.epoch_sampler.skip(n_batches)

    def __iter__(self):
        # worker base seeds are drawn from self.generator: make them a function of (seed, epoch)
        self.generator.manual_seed(_epoch_seed(self.seed, self.epoch_sampler.epoch) ^ 0x5EED)
        return _unwrap_worker_errors(super().__iter__())


def _unwrap_worker_errors(batches: Iterator[Any]) -> Iterator[Any]:
    """``batches``, with a DataError raised in a worker re-raised with its own message: the DataLoader re-raises it
    as ``DataError("Caught DataError in DataLoader worker process N.\\nOriginal Traceback ...")``."""
    try:
        yield from batches
    except DataError as err:
        marker = f"\n{DataError.__module__}.{DataError.__qualname__}: "
        text = str(err)
        if not text.startswith("Caught DataError in DataLoader worker") or marker not in text:
            raise
        raise DataError(text.split(marker, 1)[1].rstrip()) from None


def make_loader(
    dataset: Any,
    batch_size: int,
    *,
    train: bool,
    seed: int,
    drop_last: bool,
    num_workers: Union[int, str] = 0,
    pin_memory: bool = False,
    fast: bool = True,
    shard: tuple[int, int] = (0, 1),
) -> TensorBatchLoader | SeededDataLoader:
    """Build a reproducible loader: shuffled when ``train``, sequential otherwise.

    Tensor-backed datasets (and ``fast=True``) get a :class:`TensorBatchLoader`; everything
    else a :class:`SeededDataLoader`. Both have ``set_epoch(e)``, ``skip(n)``, ``__len__`` and the
    same order for the same ``(seed, epoch)``. ``shard=(rank, world)``: ``batch_size`` is the global
    batch, this process gets its slice of each one; ``len`` and ``skip`` count global batches.
    ``num_workers="auto"``: none for tensor-backed data (sliced in batches), :func:`auto_workers` for data read per
    sample; a training loader keeps its workers from epoch to epoch (``persistent_workers``).
    """
    if fast and supports_batching(dataset):
        return TensorBatchLoader(
            dataset, batch_size, shuffle=train, seed=seed, drop_last=drop_last, pin_memory=pin_memory, shard=shard
        )
    workers = auto_workers() if num_workers == "auto" else int(num_workers)
    return SeededDataLoader(
        dataset,
        batch_size,
        shuffle=train,
        seed=seed,
        drop_last=drop_last,
        num_workers=workers,
        pin_memory=pin_memory,
        shard=shard,
        persistent_workers=train and workers > 0,
    )
