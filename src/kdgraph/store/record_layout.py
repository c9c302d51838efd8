"""What a store's records hold and what the store will take, decided before ``kdgraph teach`` runs a teacher.

A record holds what the spec's terms read (:func:`record_layout`): each tapped layer pooled where every pair reading
it pools it (``pool: gap``, a loss that needs vectors), whole where a pair compares the whole map (an ``mse`` on
maps), or whole everywhere with ``full_maps``. ``teach`` prints :func:`size_line` and then refuses, before any work,
a store above ``--max-size`` (:func:`parse_size`), one whose single view would not fit in memory when training from
it, and one that the free disk cannot hold (:func:`check_size`).
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path
from typing import Any, Optional

from kdgraph.spec.schema import Spec
from kdgraph.store.fingerprint import TeacherNeeds
from kdgraph.store.manifest import StoreError, human_size
from kdgraph.store.replay import HOST_LIMIT

__all__ = ["MAX_BYTES", "record_layout", "bytes_per_view", "check_needs", "size_line", "check_size", "parse_size"]

MAX_BYTES = 32 * 2**30  # --max-size's default: a store above it is refused before any work
_SIZES = {"int16": 2, "int32": 4, "int64": 8, "float16": 2, "float32": 4, "float64": 8}


def record_layout(spec: Spec, needs: dict[str, TeacherNeeds], top_k: Optional[int], full_maps: bool, n_data: int,
                  float_bytes: int) -> dict[str, dict[str, Any]]:
    """Every tensor of a record: its dtype and per-image shape (what the size check and the manifest read)."""
    out: dict[str, dict[str, Any]] = {}
    data = spec.data
    if data.augment == "crop-flip":
        out["view/crop"] = {"dtype": "int16", "shape": [3]}
    elif data.augment == "resized-crop-flip":
        out["view/crop"] = {"dtype": "float64", "shape": [5]}
    if data.mix.name != "none":
        out["view/partner"] = {"dtype": "int32" if n_data < 2**31 else "int64", "shape": []}
        out["view/ratio"] = {"dtype": "float64", "shape": []}
        if data.mix.name == "cutmix":
            out["view/box"] = {"dtype": "int16", "shape": [4]}
    real = "float64" if float_bytes == 8 else "float32"
    for name, need in needs.items():
        if need.logits is not None:
            if top_k is None:
                out[f"t/{name}/logits"] = {"dtype": real, "shape": [need.logits]}
            else:
                out[f"t/{name}/topk_values"] = {"dtype": "float16", "shape": [top_k]}
                out[f"t/{name}/topk_indices"] = {"dtype": "int16" if need.logits <= 2**15 else "int32",
                                                 "shape": [top_k]}
                out[f"t/{name}/topk_rest"] = {"dtype": "float16", "shape": []}
        for tap, t in need.taps.items():
            pooled = t.pool is not None and not full_maps
            shape = [t.shape[0] if t.layout == "map" else t.shape[-1]] if pooled else list(t.shape)
            out[f"t/{name}/tap/{tap}"] = {"dtype": real, "shape": shape}
    return out


def _bytes(entry: dict[str, Any]) -> int:
    return _SIZES[entry["dtype"]] * math.prod(entry["shape"])


def bytes_per_view(layout: dict[str, dict[str, Any]]) -> int:
    return sum(_bytes(r) for r in layout.values())


def check_needs(needs: dict[str, TeacherNeeds], top_k: Optional[int]) -> None:
    """Refuse, before any work, a spec whose terms read no teacher, and a top-k that is not below the number of
    classes."""
    if not needs:
        raise StoreError("no term of this spec reads a teacher (no distill.logits, no distill.pairs), so there is "
                         "nothing to store", key="distill")
    if top_k is not None:
        for name, need in needs.items():
            if need.logits is not None and not 0 < top_k < need.logits:
                raise StoreError(f"--top-k {top_k} must lie between 1 and {need.logits - 1}: teacher {name!r} has "
                                 f"{need.logits} logits (leave --top-k out to store all of them)", key="--top-k")


def size_line(layout: dict[str, dict[str, Any]], images: int, views: int) -> str:
    """``store: 60,000 images × 1 view × (layer3 64×7×7 float32 + 10 logits float32) = 12,584 bytes per image and
    view ≈ 720.2 MiB``: what ``teach`` prints before any work."""
    teachers = {key.split("/")[1] for key in layout if key.startswith("t/")}
    parts, numbers = [], 0
    for key, entry in layout.items():
        if key.startswith("view/"):
            numbers += _bytes(entry)
            continue
        _, name, kind, *rest = key.split("/")
        who = f"{name}." if len(teachers) > 1 else ""
        if kind == "logits":
            parts.append(f"{who}{entry['shape'][0]} logits {entry['dtype']}")
        elif kind == "topk_values":
            parts.append(f"{who}top-{entry['shape'][0]} logits float16")
        elif kind == "tap":
            parts.append(f"{who}{'/'.join(rest)} {'×'.join(map(str, entry['shape']))} {entry['dtype']}")
    if numbers:
        parts.append(f"{numbers} bytes of view numbers")
    per_view = bytes_per_view(layout)
    return (f"store: {images:,} images × {views} view{'s' if views != 1 else ''} × ({' + '.join(parts)}) = "
            f"{per_view:,} bytes per image and view ≈ {human_size(per_view * images * views)}")


def check_size(layout: dict[str, dict[str, Any]], images: int, views: int, path: Path, max_bytes: int,
               full_maps: bool) -> None:
    """Refuse, before any work: a store above ``max_bytes`` (``--max-size``), a view larger than training holds in
    memory (``HOST_LIMIT``), a store the free disk at ``path`` cannot hold (counting shards already written there)."""
    per_view = bytes_per_view(layout)
    total = per_view * images * views
    estimate = (f"{human_size(total)} ({images:,} images × {views} view{'s' if views != 1 else ''} × "
                f"{per_view:,} bytes per image and view)")
    whole = any(key.startswith("t/") and "/tap/" in key and len(entry["shape"]) > 1 for key, entry in layout.items())
    smaller = "tap fewer layers"
    if whole:
        smaller = ("leave out --full-maps (each layer is then stored as its pairs read it)" if full_maps else
                   "pool the layers the pairs read (pool: gap)")
    if images * per_view > HOST_LIMIT:
        raise StoreError(f"one view of the store would take {human_size(images * per_view)}, and training from a "
                         f"store holds a whole view in memory (limit {human_size(HOST_LIMIT)}); {smaller}, tap "
                         "smaller layers, or cut the training set (data.train_subset)",
                         key="--full-maps" if full_maps else "distill.pairs")
    if total > max_bytes:
        raise StoreError(f"the store would take {estimate}, above --max-size {human_size(max_bytes)}; raise "
                         f"--max-size (--max-size {math.ceil(total / 2**30)}GiB), store fewer --views, or {smaller}",
                         key="--max-size")
    probe = path if path.exists() else next((p for p in path.parents if p.exists()), Path("."))
    written = sum(f.stat().st_size for f in path.glob("shards/*.safetensors")) if path.is_dir() else 0
    free = shutil.disk_usage(probe).free
    if total - written > free:
        raise StoreError(f"the store would take {estimate} but {str(probe)!r} has {human_size(free)} free; choose "
                         f"another --out, fewer --views, or {smaller}", key="--out")


_UNITS = {"": 1, "b": 1, "k": 2**10, "kib": 2**10, "kb": 10**3, "m": 2**20, "mib": 2**20, "mb": 10**6,
          "g": 2**30, "gib": 2**30, "gb": 10**9, "t": 2**40, "tib": 2**40, "tb": 10**12}


def parse_size(text: str) -> int:
    """``--max-size``: bytes from ``20GB`` (10⁹), ``32GiB`` or ``32G`` (2³⁰), ``500MiB``, ``1.5TB``, ``123456``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS or float(match.group(1)) <= 0:
        raise StoreError(f"--max-size {text!r} is no size; give a positive number with a unit, like 20GB, 32GiB or "
                         "500MiB", key="--max-size")
    return int(float(match.group(1)) * _UNITS[unit])
