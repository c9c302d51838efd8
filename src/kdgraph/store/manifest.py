"""A store on disk: ``manifest.json`` and ``shards/vVVVV-SSSSSSSS.safetensors``, each written atomically.

The manifest says what the store is (its fingerprint: teachers, weights, data, augmentation, views, what is stored
per record) and, once complete, lists every shard with its size and sha256. A shard holds the records of view V for
the images ``[S, S + shard_images)``. Nothing in it depends on the machine, the time or the number of processes, so
two runs of ``kdgraph teach`` on the same spec write the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from kdgraph.errors import KdgraphError
from kdgraph.files import atomic_write_bytes, atomic_write_text

__all__ = ["FORMAT", "VERSION", "MANIFEST", "StoreError", "shard_name", "read_manifest", "write_manifest",
           "write_tensors", "write_shard", "read_shard", "existing_shard", "differences", "is_store", "describe", "human_size"]

FORMAT, VERSION = "kdgraph teacher store", 1
MANIFEST = "manifest.json"


class StoreError(KdgraphError):
    """A teacher store that cannot be written, read or used with this spec (message: what differs or is wrong)."""


def human_size(n: float) -> str:
    """``1.5 GiB``, ``820.0 KiB``, ``312 bytes``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{int(n)} bytes"


def shard_name(view: int, start: int) -> str:
    return f"shards/v{view:04d}-{start:08d}.safetensors"


def is_store(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of the store at ``path``; a missing or unreadable one is a :class:`StoreError` naming it."""
    file = Path(path) / MANIFEST
    if not file.is_file():
        where = "does not exist" if not Path(path).exists() else "holds no manifest.json"
        raise StoreError(f"{str(path)!r} {where}, so it is no teacher store; write one with: kdgraph teach SPEC "
                         f"--out {path}")
    try:
        manifest = json.loads(file.read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"format is {manifest.get('format')!r}, not {FORMAT!r}")
    except (OSError, ValueError) as err:
        raise StoreError(f"{str(file)!r} is unreadable ({err}); write the store again with kdgraph teach") from None
    if manifest.get("version") != VERSION:
        raise StoreError(f"{str(path)!r} is a store of format version {manifest.get('version')}, this kdgraph reads "
                         f"version {VERSION}; write it again with kdgraph teach")
    return manifest


def write_manifest(path: str | Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(Path(path) / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def write_tensors(path: str | Path, name: str, tensors: dict[str, torch.Tensor], about: str) -> dict[str, Any]:
    """Write a safetensors file of the store atomically; returns its entry (file, bytes, sha256) for the manifest,
    which :func:`read_shard` checks."""
    # one metadata key: safetensors writes a metadata map in no fixed order, and a store's bytes must not vary
    data = save_bytes({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata={"kdgraph": about})
    atomic_write_bytes(Path(path) / name, data)
    return {"file": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def write_shard(path: str | Path, view: int, start: int, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Write one shard atomically; returns its manifest entry (file, view, images, bytes, sha256)."""
    n = len(next(iter(tensors.values())))
    entry = write_tensors(path, shard_name(view, start), tensors,
                          f"teacher store shard: view {view}, images {start} to {start + n - 1}")
    return {"file": entry["file"], "view": view, "start": start, "stop": start + n, "bytes": entry["bytes"],
            "sha256": entry["sha256"]}


def read_shard(path: str | Path, entry: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A shard's tensors, after its size and sha256 were checked against its manifest entry."""
    file = Path(path) / entry["file"]
    try:
        data = file.read_bytes()
    except OSError as err:
        raise StoreError(f"shard {str(file)!r} of the teacher store cannot be read ({err.strerror or err}); write "
                         "the store again with kdgraph teach") from None
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != entry["bytes"] or digest != entry["sha256"]:
        what = (f"is {len(data):,} bytes, the manifest says {entry['bytes']:,}" if len(data) != entry["bytes"]
                else f"has sha256 {digest[:16]}…, the manifest says {entry['sha256'][:16]}…")
        raise StoreError(f"shard {str(file)!r} of the teacher store is damaged: it {what} (truncated or altered "
                         "since kdgraph teach wrote it); run the kdgraph teach command that wrote the store again: it "
                         "checks every shard and rewrites the damaged ones")
    return load_bytes(data)


def existing_shard(path: str | Path, view: int, start: int, stop: int, names: set[str],
                   expected: Optional[dict[str, Any]] = None) -> Optional[dict[str, Any]]:
    """The manifest entry of a shard an earlier ``teach`` left, or None: it is written again. With the entry a
    complete manifest lists (``expected``) the shard must have its sha256; without one (a stopped ``teach``) it must
    load and hold this store's records for these images (shards are written atomically: one that exists is whole,
    unless it was damaged since)."""
    file = Path(path) / shard_name(view, start)
    try:
        data = file.read_bytes()
        if expected is not None:
            return expected if hashlib.sha256(data).hexdigest() == expected["sha256"] else None
        tensors = load_bytes(data)
    except Exception:  # noqa: BLE001 - any shard that does not load is simply written again
        return None
    if set(tensors) != names or any(len(t) != stop - start for t in tensors.values()):
        return None
    return {"file": shard_name(view, start), "view": view, "start": start, "stop": stop, "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def differences(want: Any, have: Any, where: str = "") -> list[str]:
    """``key: want vs have`` for every leaf where two JSON documents differ."""
    if isinstance(want, dict) and isinstance(have, dict):
        out = []
        for key in sorted(set(want) | set(have), key=str):
            sub = f"{where}.{key}" if where else str(key)
            if key not in have:
                out.append(f"{sub} missing from the store")
            elif key not in want:
                out.append(f"{sub} in the store but not in this spec")
            else:
                out += differences(want[key], have[key], sub)
        return out
    return [] if want == have else [f"{where}: {_short(want)} here, {_short(have)} in the store"]


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def describe(path: str | Path, manifest: Optional[dict[str, Any]] = None) -> list[str]:
    """``kdgraph inspect STORE``: what the store holds, one line per item."""
    m = manifest or read_manifest(path)
    aug, data, about = m["augmentation"], m["data"], m.get("about", {})
    options = ", ".join(f"{k} {v}" for k, v in aug.items() if k.startswith("crop_"))
    mix = aug["mix"]["name"] + (f" (alpha {aug['mix']['alpha']:g})" if aug["mix"]["name"] != "none" else "")
    dataset = f" ({about['dataset']})" if "dataset" in about else ""
    state = "complete" if m.get("complete") else "incomplete: run its kdgraph teach again"
    lines = [f"teacher store {path} ({state})",
             f"  views: {m['views']} per image ({m['role']} views, seed {m['seed']}, draws {aug['draws']})",
             f"  augmentation: {aug['augment']}{f' ({options})' if options else ''}; mix: {mix}",
             f"  data: {data['images']:,} training images {'x'.join(map(str, data['shape']))}, {data['classes']} "
             f"classes{dataset}, sha256 {data['sha256'][:16]}..."]
    for name, t in m["teachers"].items():
        top1 = about.get("test_top1", {}).get(name)
        kwargs = f" {t['kwargs']}" if t["kwargs"] else ""
        score = f", test top-1 {top1:.2%}" if top1 is not None else ""
        conversion = f", input {t['input']}" if t.get("input") else ""
        conversion += f", precision {t['precision']}" if t.get("precision", "auto") != "auto" else ""
        lines.append(f"  teacher {name!r}: {t['model']}{kwargs}, weights sha256 {t['weights_sha256'][:16]}...{score}"
                     f"{conversion}")
        logits = t["logits"]
        if logits is not None and logits["top_k"] is None:
            lines.append(f"    logits: all {logits['classes']}")
        elif logits is not None:
            lines.append(f"    logits: top {logits['top_k']} of {logits['classes']} (float16; the others share one "
                         "logit, the log-mean-exp of theirs)")
        for tap, info in t["taps"].items():
            held = f"pooled ({info['pool']}) to {info['record_shape'][0]}" if info["stored"] == "pooled" else "whole"
            lines.append(f"    {tap}: {info['layout']} {'x'.join(map(str, info['shape']))}, {held}")
    size = sum(e["bytes"] for e in m["shards"])
    lines.append(f"  records: {m['bytes_per_view']:,} bytes per image and view; {human_size(size)} in "
                 f"{len(m['shards'])} shard(s) of up to {m['shard_images']:,} images; teacher precision {m['precision']}")
    return lines
