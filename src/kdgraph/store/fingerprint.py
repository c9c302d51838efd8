"""What a teacher store must agree on with a spec, computed from the resolved plan: the teachers (reference, kwargs,
a hash of their weights), the training set (a hash of what the teacher sees), the augmentation policy, and what the
spec's terms read from each teacher (its logits, and each tapped layer pooled or whole)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.data import TensorDataset

from kdgraph.data.datasets import Subset, TensorImageDataset
from kdgraph.data.loader import fetch
from kdgraph.data.sources.imagefolder import CROPS, FolderImages
from kdgraph.data.views import crop_padding
from kdgraph.graph import TermKind
from kdgraph.spec.schema import DataSpec, Spec

__all__ = ["DRAWS", "TEACHER_KEYS", "TapNeed", "TeacherNeeds", "weights_sha256", "teacher_identity",
           "data_fingerprint", "augmentation_policy", "teacher_needs"]

DRAWS = "splitmix64-v1"
"""The per-image draws of ``kdgraph.data.draws`` (recorded, so that a later change of them is caught)."""


def _update(h: Any, tensor: torch.Tensor) -> None:
    t = tensor.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def weights_sha256(model: nn.Module) -> str:
    """sha256 of a model's state dict: names, shapes and values, floating tensors as float32 (so a teacher converted
    to float64 for ``runtime.precision: fp64`` hashes as the one it came from)."""
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode())
        _update(h, value.float() if value.is_floating_point() else value)
    return h.hexdigest()


TEACHER_KEYS = ("model", "kwargs", "weights_sha256", "input", "precision")
"""What identifies a teacher's outputs in a store (:func:`teacher_identity`)."""


def teacher_identity(tspec: Any, model: nn.Module) -> dict[str, Any]:
    """What decides a teacher's outputs on a given view: its reference and kwargs, a hash of its weights, the input
    conversion the spec declares (``input``: mean, std, size, interpolation) and its ``precision``."""
    return {"model": tspec.model, "kwargs": tspec.kwargs, "weights_sha256": weights_sha256(model),
            "input": None if tspec.input is None else tspec.input.model_dump(mode="json"),
            "precision": tspec.precision}


def _folder(dataset: Any) -> Optional[tuple[FolderImages, list[int]]]:
    """An image folder (or a cut of one) and the positions of its samples, else None."""
    if isinstance(dataset, FolderImages):
        return dataset, list(range(len(dataset)))
    if isinstance(dataset, Subset) and isinstance(dataset.dataset, FolderImages):
        return dataset.dataset, list(dataset.indices)
    return None


def _folder_files(h: Any, folder: FolderImages, indices: list[int]) -> None:
    """An image folder by its files (each one's name under the split's folder, size in bytes and class) and what
    makes its pixels (size, crops, normalisation): read, not decoded, so checking a store costs a directory walk."""
    h.update(f"{CROPS} size={folder.size} train={folder.train} classes={folder.classes!r}".encode())
    for t in (folder.mean, folder.scale):
        _update(h, t)
    for i in indices:
        path, label = folder.samples[i]
        name = os.path.relpath(path, folder.root) if folder.root is not None else os.path.basename(path)
        h.update(f"{name.replace(os.sep, '/')}\0{os.path.getsize(path)}\0{label}\n".encode())


def data_fingerprint(dataset: Any, chunk: int = 4096) -> dict[str, Any]:
    """The size and a sha256 of a split as the teacher sees it: for an in-memory split its stored images (with the
    normalisation and resizing applied on access) and labels; for an image folder its files' names, sizes and classes
    and how they become pixels (a file rewritten in place at the same size is not noticed); for any other the images
    and labels read in order."""
    h = hashlib.sha256()
    n = len(dataset)
    folder = _folder(dataset)
    if folder is not None:
        _folder_files(h, *folder)
    elif isinstance(dataset, TensorImageDataset) and dataset.transform is None:
        for t in (dataset.images, dataset.labels, *(v for v in (dataset._scale, dataset._shift) if v is not None)):
            _update(h, t)
        h.update(repr(dataset.size).encode())
    elif isinstance(dataset, TensorDataset):
        for t in dataset.tensors[:2]:
            _update(h, t)
    else:
        for start in range(0, n, chunk):
            for t in fetch(dataset, torch.arange(start, min(n, start + chunk))):
                _update(h, t)
    return {"images": n, "sha256": h.hexdigest()}


def augmentation_policy(data: DataSpec, image_shape: tuple[int, ...]) -> dict[str, Any]:
    """The keys that decide a view's pixels (``data.augment`` and its options resolved, ``data.mix``,
    ``data.views``) and the draws' version."""
    policy: dict[str, Any] = {"augment": data.augment, "views": data.views, "draws": DRAWS,
                              "mix": {"name": data.mix.name, "alpha": data.mix.alpha} if data.mix.name != "none"
                              else {"name": "none"}}
    if data.augment == "crop-flip":
        policy.update(crop_padding=crop_padding(data, image_shape[-1]), crop_fill=data.crop_fill)
    elif data.augment == "resized-crop-flip":
        policy.update(crop_scale=list(data.crop_scale))
    return policy


@dataclass(frozen=True)
class TapNeed:
    """What the spec's pairs read from one teacher layer: ``pool`` (the teacher-side adapters' first module, the
    same for every pair of the layer) when they all pool it, else None (the whole output)."""

    tap: str
    layout: str
    shape: tuple[int, ...]
    pool: Optional[str]
    pairs: tuple[str, ...]  # "distill.pairs[i] (label)" of each pair reading it, for messages


@dataclass(frozen=True)
class TeacherNeeds:
    """What the spec's terms read from one teacher: its logits (and how many classes), and tapped layers."""

    name: str
    logits: Optional[int]
    taps: dict[str, TapNeed]


def _pool_of(adapter: nn.Module) -> Optional[str]:
    """``gap`` / ``cls`` for an adapter whose first step pools, else None."""
    first = next(iter(adapter.named_children()), None) if isinstance(adapter, nn.Sequential) else None
    if first is None or first[0] != "pool":
        return None
    return "cls" if type(first[1]).__name__ == "ClsToken" else "gap"


def teacher_needs(spec: Spec, graph: nn.Module, teacher_maps: dict[str, Any]) -> dict[str, TeacherNeeds]:
    """Per teacher the graph runs, what its terms read (from ``graph.terms`` and the teacher-side adapters)."""
    out: dict[str, TeacherNeeds] = {}
    for name in graph.teachers:
        logits = None
        taps: dict[str, TapNeed] = {}
        for term in graph.terms:
            if term.teacher_name != name:
                continue
            if term.kind is TermKind.LOGITS:
                logits = teacher_maps[name].logit_count
            elif term.kind is TermKind.PAIR:
                info = teacher_maps[name][term.teacher_tap]
                pool = None if info.layout == "vector" else _pool_of(graph.teacher_adapters[term.adapter])
                where = f"distill.pairs[{term.index}] ({term.label})"
                seen = taps.get(term.teacher_tap)
                if seen is not None and seen.pool != pool:
                    pool = None  # pooled two ways, or pooled and whole: only the whole output serves both
                taps[term.teacher_tap] = TapNeed(term.teacher_tap, info.layout, tuple(info.shape), pool,
                                                 (seen.pairs if seen else ()) + (where,))
        out[name] = TeacherNeeds(name, logits, taps)
    return out
