"""Training from a teacher store (``teacher.store: PATH``): the store checked against the spec when the plan resolves,
then per batch the numbers of each image's view and the teachers' outputs, read from the view in memory.

In epoch ``e`` the trainer asks for view ``e mod K``. A view's shards are read (and their sha256 checked) in a
background thread while the view before it trains, when two views fit in memory (else when it is first asked for);
at most two views are held.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import torch

from kdgraph.data import DataBundle
from kdgraph.data.views import ViewParams
from kdgraph.errors import plural
from kdgraph.graph.distill_graph import DistillGraph
from kdgraph.spec.schema import Spec
from kdgraph.store.fingerprint import (TEACHER_KEYS, TeacherNeeds, augmentation_policy, data_fingerprint,
                                       teacher_identity, teacher_needs)
from kdgraph.store.manifest import StoreError, differences, human_size, read_manifest, read_shard
from kdgraph.store.records import decode_logits, decode_params, decode_tap
from kdgraph.trace.layer_map import LayerMap

__all__ = ["TeacherStore", "open_store", "not_replayable", "HOST_LIMIT"]

HOST_LIMIT = 8 * 2**30  # bytes of one view in memory (as the teacher cache's limit)


def not_replayable(dataset: str) -> str:
    """Why a data source without ``Provides.replayable`` cannot have a store, and what to do instead."""
    return (f"data set {dataset!r} gives another image on every access (a random per-sample transform that is not "
            "drawn from (seed, epoch, image), such as a train_transform from Python), so no store can replay what its "
            "teacher saw; leave the transform out and augment with data.augment (imagefolder's own crops replay "
            "too), or train online without a store")


class TeacherStore:
    """An opened, checked store: ``views`` (K), ``seed`` (of its views), ``teachers`` (the names it serves here), and
    per batch :meth:`params` and :meth:`outputs`."""

    def __init__(self, path: str | Path, manifest: dict[str, Any], needs: dict[str, TeacherNeeds]):
        self.path, self.manifest, self.needs = Path(path), manifest, needs
        self.views: int = manifest["views"]
        self.seed: int = manifest["seed"]
        self.teachers = tuple(needs)
        self._view: Optional[int] = None
        self._records: dict[str, torch.Tensor] = {}
        self._pending: dict[int, Future] = {}
        self._reader: Optional[ThreadPoolExecutor] = None
        # the next view is read while this one trains when two views fit in memory
        self._ahead = self.views > 1 and 2 * manifest["bytes_per_view"] * manifest["data"]["images"] <= HOST_LIMIT

    def describe(self, epochs: int) -> str:
        """One line for the run's announcement: what the store serves and how its views map to the epochs."""
        repeat = (f"epoch e replays view e ({plural(self.views, 'view')} for {plural(epochs, 'epoch')})"
                  if epochs <= self.views else
                  "every epoch replays its one view" if self.views == 1 else
                  f"epoch e replays view e mod {self.views}, so views repeat after {self.views} epochs")
        return (f"teacher.store {self.path}: {', '.join(self.teachers)} from the store, no teacher forward; {repeat} "
                f"(seed {self.seed})")

    def _read(self, view: int) -> dict[str, torch.Tensor]:
        """The records of ``view`` over the whole training set, its shards read and their sha256 checked."""
        entries = sorted((e for e in self.manifest["shards"] if e["view"] == view), key=lambda e: e["start"])
        parts = [read_shard(self.path, e) for e in entries]
        return {name: torch.cat([p[name] for p in parts]) if len(parts) > 1 else parts[0][name] for name in parts[0]}

    def prefetch(self, view: int) -> None:
        """Start reading ``view`` in a background thread (file reads, hashing and copies release the GIL), so that
        the epoch that needs it does not wait; a no-op where two views do not fit in memory."""
        view %= self.views
        if view == self._view or view in self._pending or not (self._ahead or self._view is None):
            return
        if self._reader is None:
            self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kdgraph-store")
        self._pending[view] = self._reader.submit(self._read, view)

    def _at(self, view: int) -> dict[str, torch.Tensor]:
        """The records of ``view``: read when first asked for (or taken from :meth:`prefetch`), then the next view
        is read ahead. At most two views are held: this one and the next."""
        if self._view != view:
            self._records = {}  # the previous view goes first
            pending = self._pending.pop(view, None)
            self._records = pending.result() if pending is not None else self._read(view)
            self._view = view
            self.prefetch(view + 1)
        return self._records

    def params(self, index: torch.Tensor, view: int) -> ViewParams:
        """The stored numbers of view ``view`` of the images ``index`` (CPU), with each partner's own crop."""
        records = self._at(view)
        index = index.cpu()
        params = decode_params({k: v.index_select(0, index) for k, v in records.items() if k.startswith("view/")})
        if params.partner is not None and "view/crop" in records:
            params.partner_crop = decode_params({"view/crop": records["view/crop"].index_select(0, params.partner)}).crop
        return params

    def outputs(self, index: torch.Tensor, view: int, channels_last: bool = False) -> dict[str, dict[str, torch.Tensor]]:
        """Each served teacher's outputs for the images ``index`` in view ``view``, as its forward would return them
        to the graph (logits ``output``, and each tapped layer; maps channels-last where the teacher would run so,
        which keeps the student's backward in one memory format)."""
        records = self._at(view)
        index = index.cpu()
        out: dict[str, dict[str, torch.Tensor]] = {}
        for name, need in self.needs.items():
            prefix = f"t/{name}/"
            rows = {k: v.index_select(0, index) for k, v in records.items() if k.startswith(prefix)}
            taps = {}
            if need.logits is not None:
                taps["output"] = decode_logits(name, rows, need.logits)
            stored = self.manifest["teachers"][name]["taps"]
            for tap in need.taps:
                value = decode_tap(rows[f"{prefix}tap/{tap}"], stored[tap]["layout"], stored[tap]["stored"] == "pooled")
                taps[tap] = value.contiguous(memory_format=torch.channels_last) if channels_last and value.dim() == 4 \
                    else value
            out[name] = taps
        return out

    def test_logits(self, data: DataBundle) -> dict[str, torch.Tensor]:
        """The served teachers' logits on the test split in order, as ``teach`` computed them, where the test split
        is the same (else none: those teachers are run to evaluate); the file's sha256 is checked."""
        about = self.manifest.get("about", {})
        if "test_logits" not in about or about.get("test") != data_fingerprint(data.test):
            return {}
        tensors = read_shard(self.path, about["test_logits"])
        return {n: tensors[f"t/{n}"] for n in self.teachers if f"t/{n}" in tensors}

    def known_top1(self, data: DataBundle, teachers: int) -> dict[str, float]:
        """The test top-1 ``teach`` measured for the teachers it serves, as summary keys of a run with ``teachers``
        teachers (``teacher_top1``, or ``teacher_top1/NAME``), where the test split is the same."""
        about = self.manifest.get("about", {})
        if not about.get("test_top1") or about.get("test") != data_fingerprint(data.test):
            return {}
        return {("teacher_top1" if teachers == 1 else f"teacher_top1/{n}"): v for n, v in about["test_top1"].items()
                if n in self.teachers}


def _tap_problems(name: str, need: TeacherNeeds, stored: dict[str, Any]) -> list[str]:
    """What the spec's terms read from teacher ``name`` that its store does not hold, each naming the pairs."""
    problems = []
    logits = stored.get("logits")
    if need.logits is not None and logits is None:
        problems.append(f"distill.logits reads teacher {name!r}'s logits, which the store does not hold")
    elif need.logits is not None and logits["classes"] != need.logits:
        problems.append(f"teacher {name!r} has {need.logits} logits here, {logits['classes']} in the store")
    for tap, want in need.taps.items():
        have = stored["taps"].get(tap)
        pairs = ", ".join(want.pairs)
        if have is None:
            problems.append(f"{pairs} read teacher {name!r}'s layer {tap!r}, which the store does not hold (it holds "
                            f"{', '.join(stored['taps']) or 'no layers'})")
        elif have["stored"] == "pooled" and want.pool != have["pool"]:
            got = f"pooled ({have['pool']})"
            need_text = "the whole output" if want.pool is None else f"it pooled by {want.pool}"
            problems.append(f"{pairs} compare {need_text} of teacher {name!r}'s {tap!r}, the store holds it {got}; "
                            "set pool: gap on the pair, or write the store for this spec with kdgraph teach (it "
                            "stores the whole maps such a pair reads)")
    return problems


def open_store(spec: Spec, data: DataBundle, graph: DistillGraph, teacher_maps: dict[str, LayerMap],
               teachers: dict[str, torch.nn.Module]) -> Optional[TeacherStore]:
    """The store the spec's teachers name (``teacher.store``), checked against the resolved plan; None without one.

    Refused, with a message naming what differs: another teacher, other weights or kwargs, another training set,
    another augmentation policy, layers or logits it does not hold (naming the pairs), or an incomplete store."""
    served = [name for name, t in spec.teacher_specs.items() if t.store is not None]
    if not served:
        return None
    key, kpath = spec.teacher_key(served[0])
    key, line = f"{key}.store", spec.line_of(*kpath, "store")
    path = spec.teacher_specs[served[0]].store

    def fail(message: str) -> StoreError:
        return StoreError(message, key=key, line=line)

    try:
        manifest = read_manifest(path)
    except StoreError as err:
        raise fail(err.message) from None
    if not manifest.get("complete"):
        raise fail(f"the store {path!r} is incomplete (kdgraph teach stopped before it finished); run the same "
                   "kdgraph teach command again to complete it")
    if not data.provides.replayable:
        raise fail(not_replayable(spec.data.dataset))
    needs = teacher_needs(spec, graph, teacher_maps)
    want = {"data": {"shape": list(data.input_shape), "classes": data.num_classes, **data_fingerprint(data.train)},
            "augmentation": augmentation_policy(spec.data, data.input_shape),
            "teachers": {}}
    have = {"data": manifest["data"], "augmentation": manifest["augmentation"], "teachers": {}}
    problems = []
    for name in served:
        tspec = spec.teacher_specs[name]
        stored = manifest["teachers"].get(name)
        if stored is None:
            problems.append(f"teacher {name!r} is not in the store (it holds {', '.join(manifest['teachers'])})")
            continue
        want["teachers"][name] = teacher_identity(tspec, teachers[name])
        have["teachers"][name] = {k: stored.get(k) for k in TEACHER_KEYS}
        if name in needs:
            problems += _tap_problems(name, needs[name], stored)
    problems = differences(want, have) + problems
    if problems:
        raise fail(f"the store {path!r} does not fit this spec: {'; '.join(problems)}. Write a store for this spec "
                   f"with: kdgraph teach SPEC --out {path}")
    for entry in manifest["shards"]:  # missing or truncated shards now; altered bytes when a view is read (sha256)
        file = Path(path) / entry["file"]
        size = file.stat().st_size if file.is_file() else None
        if size != entry["bytes"]:
            what = "is missing" if size is None else f"is {size:,} bytes, the manifest says {entry['bytes']:,}"
            raise fail(f"shard {str(file)!r} of the store {what}; run the kdgraph teach command that wrote the store "
                       "again: it checks every shard and rewrites the damaged ones")
    per_view = manifest["bytes_per_view"] * manifest["data"]["images"]
    if per_view > HOST_LIMIT:
        raise fail(f"one view of the store takes {human_size(per_view)} in memory (limit "
                   f"{human_size(HOST_LIMIT)}); write it again with pooled layers (pool: gap on the pairs, no "
                   "--full-maps), or tap smaller layers")
    return TeacherStore(path, manifest, {name: needs[name] for name in served if name in needs})
