"""``teacher.cache``: every tapped teacher output computed once per un-augmented training image.

Without augmentation or mixing the teacher would see exactly these images every epoch, so the cache is exact and
removes the teacher's forward from every step after the first pass (``cache: auto``, the default). With
augmentation it is the "fixed teacher" ablation of function matching (Beyer et al., CVPR 2022): the teacher's
targets no longer follow the student's augmented view, which is exactly what the ablation measures. Cached outputs live on the training
device when they fit in ``DEVICE_BUDGET`` bytes, else in host memory. Under torchrun each process computes its
``1/world`` share of the training set and the shares are gathered, so every rank holds the whole cache.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn

from kdgraph.data import DataBundle, make_loader
from kdgraph.errors import SpecError
from kdgraph.session.distributed import LOCAL, DistContext
from kdgraph.session.progress import Reporter
from kdgraph.spec.schema import Spec

__all__ = ["TeacherCache", "HOST_LIMIT", "AUTO_LIMIT", "teachers_to_cache", "cache_is_exact"]

HOST_LIMIT = 8 * 2**30  # bytes: beyond this the cache is refused (it would not fit a laptop's memory)
AUTO_LIMIT = 2**30  # bytes: `cache: auto` caches only below this
DEVICE_BUDGET = 2 * 2**30


def _image_bytes(outputs: dict[str, torch.Tensor]) -> int:
    """Cache bytes of one image's outputs (stored as float32)."""
    return sum(v[0].numel() * 4 for v in outputs.values())


def _input_dtype(teacher: nn.Module) -> torch.dtype:
    """The floating dtype the teacher's weights have (float64 under ``runtime.precision: fp64``), for its inputs."""
    return next((t.dtype for t in (*teacher.parameters(), *teacher.buffers()) if t.is_floating_point()), torch.float32)


def _bytes_per_image(teacher: nn.Module) -> int:
    """Cache bytes of one image's outputs, from the shapes the layer map's probe gave (no forward here)."""
    return sum(math.prod(shape) * 4 for shape in teacher.output_shapes.values())


def cache_is_exact(spec: Spec, data: DataBundle) -> bool:
    """Whether the teacher would see the same images every epoch: no batch augmentation, no mixing, and a source
    whose samples are the same on every access (``data.provides.exact``: imagefolder draws a random crop and flip
    per image on every access)."""
    return spec.data.augment == "none" and spec.data.mix.name == "none" and data.provides.exact


def teachers_to_cache(spec: Spec, teachers: dict[str, nn.Module], data: DataBundle) -> dict[str, nn.Module]:
    """The teachers whose outputs are cached over the training split: ``cache: outputs``, and ``auto`` where caching
    is exact (:func:`cache_is_exact`) and costs at most ``AUTO_LIMIT`` bytes."""
    exact, images = cache_is_exact(spec, data), len(data.train)
    chosen = {}
    for name, teacher in teachers.items():
        mode = spec.teacher_specs[name].cache
        if mode == "outputs" or (mode == "auto" and exact and
                                 _bytes_per_image(teacher) * images <= AUTO_LIMIT):
            chosen[name] = teacher
    return chosen


class TeacherCache:
    """Per teacher name, per tap: a ``(N, ...)`` tensor over the training set in data set order."""

    def __init__(self, spec: Spec, teachers: dict[str, nn.Module], dataset: Any, device: torch.device,
                 channels_last: bool = False, dist: DistContext = LOCAL, reporter: Optional[Reporter] = None):
        self.outputs: dict[str, dict[str, torch.Tensor]] = {}
        shard, _ = dist.eval_shard(dataset)  # this rank's share (all of it in one process)
        loader = make_loader(shard, spec.data.eval_batch_size or 2 * spec.data.batch_size, train=False, seed=0,
                             drop_last=False, num_workers=spec.data.num_workers)
        reporter = reporter or Reporter(quiet=True)
        for name, teacher in teachers.items():
            chunks: dict[str, list[torch.Tensor]] = {}
            dtype = _input_dtype(teacher)
            label = "teacher cache" + (f" {name}" if len(teachers) > 1 else "")
            with torch.no_grad(), reporter.phase_bar(label, len(loader)) as bar:
                for i, (x, *_) in enumerate(loader):
                    x = x.to(device, dtype=dtype if x.is_floating_point() else None)
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    out = teacher(x)
                    if i == 0:  # the first batch tells the size of the whole cache
                        self._check_size(spec, name, _image_bytes(out), len(dataset))
                    for tap, value in out.items():
                        chunks.setdefault(tap, []).append((value if value.dtype == torch.float64 else value.float()).cpu())
                    bar.advance()
            self.outputs[name] = {tap: dist.gather_shards(torch.cat(parts), len(dataset))
                                  for tap, parts in chunks.items()}
        size = sum(t.numel() * t.element_size() for taps in self.outputs.values() for t in taps.values())
        self.device = device if size <= DEVICE_BUDGET else torch.device("cpu")
        self.outputs = {n: {k: v.to(self.device) for k, v in taps.items()} for n, taps in self.outputs.items()}

    @staticmethod
    def _check_size(spec: Spec, name: str, per_image: int, n: int) -> None:
        """Refuse, after the first batch, a cache that would not fit in host memory."""
        if per_image * n > HOST_LIMIT:
            key, path = spec.teacher_key(name)
            raise SpecError(f"caching teacher {name!r} would take {per_image * n / 2**30:.1f} GiB for {n} images "
                            f"(limit {HOST_LIMIT / 2**30:.0f} GiB); tap smaller layers or set cache: none",
                            key=f"{key}.cache", line=spec.line_of(*path))

    def lookup(self, index: torch.Tensor, device: torch.device) -> dict[str, dict[str, torch.Tensor]]:
        """The cached outputs of the images ``index`` (data set positions), on ``device``."""
        index = index.to(self.device)
        return {name: {tap: value.index_select(0, index).to(device, non_blocking=True) for tap, value in taps.items()}
                for name, taps in self.outputs.items()}
