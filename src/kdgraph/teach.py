"""``teach(spec)``: the entry of ``kdgraph teach``, as ``train(spec)`` is of ``kdgraph train``. It starts the
:class:`~kdgraph.session.session.Session`, resolves the plan (without reading a store: it is about to write one) and
hands both to the store's writer (:func:`kdgraph.store.writer.write_store`). It lives above ``kdgraph.plan`` so that
the store, which the plan opens, never imports the plan."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from kdgraph.graph.lookup import Teachers
from kdgraph.plan import resolve_plan
from kdgraph.session.progress import Reporter
from kdgraph.session.session import Session
from kdgraph.spec.schema import Spec
from kdgraph.store.writer import MAX_BYTES, TeachResult, check_request, default_store, write_store

__all__ = ["TeachResult", "teach", "default_store"]


def teach(spec: Spec, *, views: Optional[int] = None, out: Optional[str | Path] = None, top_k: Optional[int] = None,
          full_maps: bool = False, shard_images: Optional[int] = None, max_bytes: int = MAX_BYTES,
          quiet: bool = False, reporter: Optional[Reporter] = None, teacher: Teachers = None) -> TeachResult:
    """Write the teacher store of ``spec`` (``views`` K) to ``out`` (default :func:`default_store`), or continue one
    that was stopped; under torchrun each process writes its share.

    ``views`` defaults to ``train.epochs``, or 1 where every epoch shows the same images (no ``data.augment``, no
    ``data.mix``, data that is exact). A record holds each layer the pairs read as they read it: pooled where they pool
    it, whole where a pair compares whole maps; ``full_maps``: every tapped layer whole. ``top_k``: store the k
    largest logits in float16 (``kdgraph.store.records``) instead of all of them; ``shard_images``: images per shard
    (default: about 64 MiB per shard); ``max_bytes`` (``--max-size``): refuse a larger store before any work.
    ``teacher``: live teacher modules (Python)."""
    session = Session.start(spec, quiet=quiet, reporter=reporter)  # before the plan: its models' weights are seeded
    check_request(spec, views)
    plan = resolve_plan(spec, teacher=teacher, read_store=False)
    return write_store(plan, session, views=views, out=out, top_k=top_k, full_maps=full_maps,
                       shard_images=shard_images, max_bytes=max_bytes)
