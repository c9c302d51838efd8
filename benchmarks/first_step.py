"""Time to first step: resolving a spec (what ``kdgraph validate`` does), against building its bare models.

Issue #14 asks that resolving ``specs/examples/resnet50_resnet18.yaml`` (data, models, layer maps, pairs, the
folded teacher: everything before the first training step) cost at most ~1.5 s beyond imports. The yardstick is
the part nobody can remove: ``timm.create_model`` of the same two models. In one process it times, interleaved
so that both see the same load,

- ``create``:  ``timm.create_model`` of the spec's teacher and student (random init);
- ``resolve``: ``load_spec`` + ``kdgraph.plan_plan`` of the spec (builds the same two models).

One untimed round first takes the lazy imports out of the numbers. It prints the median, min and max seconds of
each, the ratio of the medians and the median of the per-round ratios, with the load average before and after.
Run: ``python3 benchmarks/first_step.py [--spec FILE] [--repeats 7] [--threads N]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import timm  # noqa: E402
import torch  # noqa: E402

from kdgraph.spec import load_spec  # noqa: E402
from kdgraph.plan import resolve_plan  # noqa: E402


def timm_names(spec_path: str) -> list[str]:
    """The spec's models, which must all be ``timm:`` references without kwargs (the yardstick builds them bare)."""
    spec = load_spec(spec_path)
    models = [spec.student, *spec.teacher_specs.values()]
    if any(not m.model.startswith("timm:") or m.kwargs for m in models):
        raise SystemExit(f"{spec_path}: every model must be a timm: reference without kwargs")
    return [m.model.removeprefix("timm:") for m in models]


def create(names: list[str]) -> float:
    start = time.perf_counter()
    for name in names:
        timm.create_model(name, pretrained=False)
    return time.perf_counter() - start


def resolve(spec_path: str) -> float:
    start = time.perf_counter()
    resolve_plan(load_spec(spec_path))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "specs" / "examples" / "resnet50_resnet18.yaml"))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = timm_names(args.spec)
    load_before = os.getloadavg()[0]
    create(names), resolve(args.spec)  # warm-up: lazy imports, first allocations
    times: dict[str, list[float]] = {"create": [], "resolve": []}
    for i in range(args.repeats):
        order = ("create", "resolve") if i % 2 == 0 else ("resolve", "create")
        for what in order:
            times[what].append(create(names) if what == "create" else resolve(args.spec))
    load_after = os.getloadavg()[0]

    median = {what: statistics.median(ts) for what, ts in times.items()}
    paired = statistics.median(r / c for r, c in zip(times["resolve"], times["create"]))
    print(f"{Path(args.spec).name}: {' + '.join(names)}; torch {torch.__version__}, {torch.get_num_threads()} threads,"
          f" {args.repeats} repeats, load average {load_before:.1f} -> {load_after:.1f}")
    print("| what | median s | min s | max s |")
    print("| --- | --- | --- | --- |")
    labels = {"create": "timm.create_model (both)", "resolve": "load_spec + resolve_plan"}
    for what, ts in times.items():
        print(f"| {labels[what]} | {median[what]:.3f} | {min(ts):.3f} | {max(ts):.3f} |")
    print(f"resolve / create: {median['resolve'] / median['create']:.2f} (medians), {paired:.2f} (median of rounds)")


if __name__ == "__main__":
    main()
