"""``kdgraph teach``: run every teacher over K views of the training set and write a store (docs/store.md).

View ``v`` of image ``i`` is the one an online run shows in epoch ``v`` (``kdgraph.data.views``: a function of the
seed, the view and the image alone; an image folder's crops too, drawn from the seed, the epoch and the image). Per
image and view the store keeps the view's numbers and the outputs the spec's terms read: the logits (all, or the top
k) and each tapped layer as its pairs read it, pooled or whole (every layer whole with ``full_maps``;
``kdgraph.store.record_layout``). The work is cut into shards of ``shard_images`` images of one view, each computed in
batches of fixed size from its first image and written atomically, so that:

- a ``teach`` that was stopped continues where it stopped (every complete shard is kept) and ends with the same
  bytes as one that was not;
- under torchrun each process writes every W-th shard, and the store equals a 1-process one (with the same threads
  per process: float results may depend on them).
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from kdgraph.align.layout import ClsToken, GlobalAvgPool
from kdgraph.data.loader import fetch
from kdgraph.data.views import SHARED, TEACHER, ViewMaker
from kdgraph.eval.evaluate import logits_in_order
from kdgraph.session.distributed import DistContext
from kdgraph.session.session import Session
from kdgraph.spec.schema import Spec
from kdgraph.store.fingerprint import (TeacherNeeds, augmentation_policy, data_fingerprint, teacher_identity,
                                       teacher_needs)
from kdgraph.store.manifest import (FORMAT, MANIFEST, VERSION, StoreError, differences, existing_shard, human_size,
                                    read_manifest, read_shard, write_manifest, write_shard, write_tensors)
from kdgraph.store.record_layout import MAX_BYTES, bytes_per_view, check_needs, check_size, record_layout, size_line
from kdgraph.store.records import encode_logits, encode_params, encode_tap
from kdgraph.store.replay import not_replayable

__all__ = ["TeachResult", "check_request", "write_store", "default_store", "MAX_BYTES", "SHARD_BYTES"]

SHARD_BYTES = 64 * 2**20  # default shard size: about this many bytes


@dataclass
class TeachResult:
    """What ``teach`` did: the store, its size, what was computed now (``images`` image-views in ``seconds``) and
    what an earlier, interrupted run had already written (``kept``)."""

    path: Path
    views: int
    images: int
    bytes: int
    bytes_per_view: int
    computed: int
    kept: int
    seconds: float
    manifest: dict[str, Any] = field(repr=False)

    @property
    def images_per_s(self) -> float:
        """Image-views computed per second by this process (views made, teachers run, records written)."""
        return self.computed / self.seconds if self.seconds > 0 else 0.0


def default_store(spec: Spec) -> str:
    """Where ``teach`` writes without ``--out``: the spec's ``teacher.store``, else ``stores/NAME``."""
    named = [t.store for t in spec.teacher_specs.values() if t.store is not None]
    return named[0] if named else f"stores/{spec.name}"


# -- what is stored ------------------------------------------------------------------------------------------------
def _teacher_entries(spec: Spec, plan: Any, needs: dict[str, TeacherNeeds], layout: dict[str, dict[str, Any]],
                     top_k: Optional[int], full_maps: bool) -> dict[str, Any]:
    out = {}
    for name, need in needs.items():
        tspec = spec.teacher_specs[name]
        taps = {}
        for tap, t in need.taps.items():
            pooled = t.pool is not None and not full_maps
            taps[tap] = {"layout": t.layout, "shape": list(t.shape), "stored": "pooled" if pooled else "whole",
                         "pool": t.pool if pooled else None,
                         "record_shape": layout[f"t/{name}/tap/{tap}"]["shape"]}
        out[name] = {**teacher_identity(tspec, plan.teachers[name]),
                     "logits": None if need.logits is None else {"classes": need.logits, "top_k": top_k},
                     "taps": taps}
    return out


def _compared(manifest: dict[str, Any]) -> dict[str, Any]:
    """The part of a manifest two runs of ``teach`` must agree on to write one store together."""
    return {k: v for k, v in manifest.items() if k not in ("shards", "complete", "about")}


TEST_LOGITS = "test_logits.safetensors"


def _test_split(path: Path, plan: Any, needs: dict[str, TeacherNeeds], previous: Optional[dict[str, Any]], rt: Any,
                dist: DistContext) -> dict[str, Any]:
    """The manifest's ``about`` entries of the test split: its fingerprint, and for every served teacher that
    classifies the data its logits on the test images (``test_logits.safetensors``: training evaluates the agreement
    metrics from them without running the teacher) and its top-1. Kept from an earlier ``teach`` of the same test
    split whose file is intact."""
    test = data_fingerprint(plan.data.test)
    about = (previous or {}).get("about", {})
    if about.get("test") == test and "test_logits" in about:
        try:
            read_shard(path, about["test_logits"])
            return {k: about[k] for k in ("test", "test_top1", "test_logits")}
        except StoreError:
            pass  # damaged: computed again
    classifiers = {n: c for n, c in plan.teacher_classifiers().items() if n in needs}
    if not classifiers:
        return {"test": test, "test_top1": {}}
    about = None
    if dist.is_main:  # in one process, in the batches of one process: the same bytes under any process count
        logits = {n: logits_in_order(c.to(rt.device), plan.data.test, plan.spec, rt) for n, c in classifiers.items()}
        labels = fetch(plan.data.test, torch.arange(len(plan.data.test)))[1]
        about = {"test": test, "test_top1": {n: float((v.argmax(1) == labels).double().mean()) for n, v in logits.items()},
                 "test_logits": write_tensors(path, TEST_LOGITS, {f"t/{n}": v for n, v in logits.items()},
                                              "teacher store: the teachers' logits on the test split, in order")}
    return dist.broadcast(about)


# -- the run -------------------------------------------------------------------------------------------------------
def _prepare_out(path: Path, manifest: dict[str, Any], dist: DistContext) -> Optional[dict[str, Any]]:
    """Check ``path`` (every rank, the same verdict): a fresh folder, or a store of the same spec (returns its
    manifest: complete, or to be continued). Rank 0 then removes temporary files a killed run left and writes the
    manifest of the unfinished store."""
    previous = None
    if path.exists() and not path.is_dir():
        raise StoreError(f"--out {str(path)!r} is a file; give a folder for the store")
    if path.is_dir() and any(path.iterdir()):
        if not (path / MANIFEST).is_file():
            raise StoreError(f"--out {str(path)!r} is a folder that holds no teacher store; choose another --out")
        previous = read_manifest(path)
        diff = differences(_compared(manifest), _compared(previous))
        if diff:
            raise StoreError(f"--out {str(path)!r} holds a store written for something else ({'; '.join(diff[:6])}"
                             f"{'; ...' if len(diff) > 6 else ''}); choose another --out, or delete it to write this "
                             "spec's store there")
    dist.barrier()
    if dist.is_main and not (previous or {}).get("complete"):
        for stale in (*path.glob(".*.tmp"), *path.glob("shards/.*.tmp")):  # an atomic write cut short by a kill
            stale.unlink(missing_ok=True)
        if previous is None:
            write_manifest(path, manifest)
    dist.barrier()
    return previous


def _pool_module(pool: Optional[str]) -> Optional[nn.Module]:
    return None if pool is None else ClsToken() if pool == "cls" else GlobalAvgPool()


def _shard(plan: Any, maker: ViewMaker, needs: dict[str, TeacherNeeds], rt: Any, view: int, role: int, start: int,
           stop: int, batch: int, top_k: Optional[int], full_maps: bool, bar: Any) -> dict[str, torch.Tensor]:
    """The records of view ``view`` for the images ``[start, stop)``, in batches of ``batch`` from ``start``."""
    parts: dict[str, list[torch.Tensor]] = {}
    train = plan.data.train
    pools = {(n, tap): None if full_maps else _pool_module(t.pool) for n, need in needs.items()
             for tap, t in need.taps.items()}
    for first in range(start, stop, batch):
        index = torch.arange(first, min(stop, first + batch))
        x, _ = fetch(train, index, epoch=view)  # a seeded data set's draws of epoch `view` (imagefolder's crops)
        pixels, params = maker.make(x.to(rt.device), index, view, role)
        record = encode_params(params, len(train))
        with torch.no_grad(), rt.autocast():
            inputs = rt.inputs(pixels)
            for name, need in needs.items():
                out = plan.graph.teachers[name](inputs)
                if need.logits is not None:
                    record.update(encode_logits(name, out["output"], top_k))
                for tap in need.taps:
                    pool = pools[(name, tap)]
                    record.update(encode_tap(name, tap, pool(out[tap]) if pool is not None else out[tap]))
        for key, value in record.items():
            parts.setdefault(key, []).append(value.cpu())
        bar.advance(len(index))
    return {key: torch.cat(values) for key, values in parts.items()}


def _gather(entries: list[dict[str, Any]], dist: DistContext) -> list[dict[str, Any]]:
    if dist.world == 1 or not torch.distributed.is_initialized():
        return entries
    every: list[Any] = [None] * dist.world
    torch.distributed.all_gather_object(every, entries)
    return [e for part in every for e in part]


def check_request(spec: Spec, views: Optional[int]) -> None:
    """What ``teach`` refuses before it resolves a plan: ``--views`` below 1, a spec without an external teacher."""
    if views is not None and int(views) < 1:
        raise StoreError(f"--views {views} must be at least 1", key="--views")
    if spec.teacher == "self" or not spec.teacher_specs:
        raise StoreError("a teacher store holds an external teacher's outputs; this spec has none "
                         "(teacher: self or no teacher)", key="teacher", line=spec.line_of("teacher"))


def write_store(plan: Any, session: Session, *, views: Optional[int] = None, out: Optional[str | Path] = None,
                top_k: Optional[int] = None, full_maps: bool = False, shard_images: Optional[int] = None,
                max_bytes: int = MAX_BYTES) -> TeachResult:
    """Write the teacher store of a resolved plan (a ``kdgraph.plan.Plan`` resolved without reading a store) to
    ``out``, or continue one that was stopped; under torchrun each process writes its share. The entry that starts
    the session and resolves the plan is :func:`kdgraph.teach.teach`, which documents the options."""
    spec, dist, reporter = plan.spec, session.dist, session.reporter
    for warning in plan.warnings:
        reporter.warn(warning)
    data = plan.data
    if not data.provides.replayable:
        raise StoreError(not_replayable(spec.data.dataset), key="data.dataset", line=spec.line_of("data", "dataset"))
    varies = spec.data.augment != "none" or spec.data.mix.name != "none" or not data.provides.exact
    k_views = int(views) if views is not None else spec.train.epochs if varies else 1
    needs = teacher_needs(spec, plan.graph, plan.teacher_maps)
    needs = {n: need for n, need in needs.items() if need.logits is not None or need.taps}
    check_needs(needs, top_k)
    if top_k is not None and not any(need.logits is not None for need in needs.values()):
        reporter.warn("--top-k has no effect: no term reads a teacher's logits")
        top_k = None
    rt = session.runtime(plan.runtime)
    n = len(data.train)
    layout = record_layout(spec, needs, top_k, full_maps, n, 8 if rt.precision == "fp64" else 4)
    per_view = bytes_per_view(layout)
    path = Path(out if out is not None else default_store(spec))
    reporter.info(size_line(layout, n, k_views))  # before any check or work: what the store will take
    check_size(layout, n, k_views, path, max_bytes, full_maps)
    shard_images = shard_images or max(1, min(n, SHARD_BYTES // max(1, per_view)))
    batch = spec.data.eval_batch_size or 2 * spec.data.batch_size
    role = TEACHER if spec.data.views == "independent" else SHARED
    manifest = {
        "format": FORMAT, "version": VERSION, "views": k_views, "seed": spec.runtime.seed,
        "role": "teacher" if role == TEACHER else "shared",
        "augmentation": augmentation_policy(spec.data, data.input_shape),
        "data": {"shape": list(data.input_shape), "classes": data.num_classes, **data_fingerprint(data.train)},
        "teachers": _teacher_entries(spec, plan, needs, layout, top_k, full_maps),
        "precision": rt.precision, "records": layout, "bytes_per_view": per_view,
        "shard_images": shard_images, "batch": batch, "complete": False, "shards": [],
        "about": {"spec": spec.name, "dataset": spec.data.dataset,
                  "weights": {name: spec.teacher_specs[name].weights for name in needs}},
    }
    if k_views > 1 and not varies:
        reporter.warn(f"no data.augment and no data.mix: the {k_views} views of an image are all the same image; "
                      "--views 1 stores the same (or use teacher.cache: auto, which needs no store)")
    previous = _prepare_out(path, manifest, dist)
    listed = {(e["view"], e["start"]): e for e in (previous or {}).get("shards", [])}
    graph = plan.graph.to(rt.device)
    if rt.channels_last:
        graph.to(memory_format=torch.channels_last)
    maker = ViewMaker(spec.data, num_classes=data.num_classes, seed=spec.runtime.seed, dataset=data.train,
                      image_shape=data.input_shape, norm=(data.mean, data.std))
    shards = [(v, s, min(n, s + shard_images)) for v in range(k_views) for s in range(0, n, shard_images)]
    mine = shards[dist.rank::dist.world]
    names = set(layout)
    one = "" if varies or views is not None else "; one view: nothing is augmented"
    reporter.info(f"teach {spec.name}: {', '.join(needs)} over {k_views} view(s) of {n:,} images → {path} "
                  f"({len(shards)} shard(s)){one}")
    entries, computed, kept = [], 0, 0
    start_time = time.perf_counter()
    # a shard is written (serialised, hashed, fsynced) in a thread while the next one is computed
    with reporter.epoch_bar("teach", sum(stop - s for _, s, stop in mine)) as bar, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="kdgraph-teach") as writer:
        writing: Optional[Future] = None
        for view, first, stop in mine:
            entry = (existing_shard(path, view, first, stop, names, listed.get((view, first)) if listed else None)
                     if previous is not None else None)
            if entry is None:
                records = _shard(plan, maker, needs, rt, view, role, first, stop, batch, top_k, full_maps, bar)
                if writing is not None:
                    entries.append(writing.result())
                writing = writer.submit(write_shard, path, view, first, records)
                computed += stop - first
            else:
                kept += stop - first
                bar.advance(stop - first)
                entries.append(entry)
        if writing is not None:
            entries.append(writing.result())
    seconds = time.perf_counter() - start_time
    entries = sorted(_gather(entries, dist), key=lambda e: (e["view"], e["start"]))
    manifest["about"].update(_test_split(path, plan, needs, previous, rt, dist))
    manifest.update(shards=entries, complete=True)
    if dist.is_main:
        write_manifest(path, manifest)
    dist.barrier()
    result = _result(path, manifest, computed, kept, seconds)
    if kept and not computed:
        reporter.info(f"  {path}: the store was complete, every shard checked; nothing to do")
        return result
    if kept:
        reporter.info(f"  continued a stopped teach: {kept:,} image-views were already written")
    reporter.info(f"  {computed:,} image-views in {seconds:.1f} s ({result.images_per_s:,.0f} per second"
                  f"{' in this process' if dist.world > 1 else ''}); store {human_size(result.bytes)}, "
                  f"{per_view:,} bytes per image and view")
    return result


def _result(path: Path, manifest: dict[str, Any], computed: int, kept: int, seconds: float) -> TeachResult:
    size = sum(e["bytes"] for e in manifest["shards"]) + (path / MANIFEST).stat().st_size
    return TeachResult(path=path, views=manifest["views"], images=manifest["data"]["images"], bytes=size,
                       bytes_per_view=manifest["bytes_per_view"], computed=computed, kept=kept, seconds=seconds,
                       manifest=manifest)
