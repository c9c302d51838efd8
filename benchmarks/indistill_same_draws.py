"""InDistill, kdgraph against its reference from the same random draws: the same initial student and the same batch
order, the real configuration (embedded subset, batch 128, float32, one thread).

Written to trace a disagreement of the fidelity table (issue #20: the long curriculum's top-1, kdgraph 0.87 below the
reference over six seeds) to the computation or to the draws. ``--init reference`` starts both sides from the
reference's ``Student()`` built under ``torch.manual_seed(1000 + seed)`` (kdgraph trains its own zoo module loaded with
those weights); ``--init kdgraph --sides reference`` runs the reference from the student a regular kdgraph run of the
seed builds. Both sides take kdgraph's batch order (``epoch_indices``).

    python3 benchmarks/indistill_same_draws.py indistill-long --seeds 0 1 2 --init reference
    python3 benchmarks/indistill_same_draws.py indistill-long --seeds 0 1 2 --init kdgraph --sides reference

Prints a JSON line per seed: each side's final val_top1 and val_map.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "benchmarks" / "references"), str(ROOT / "src")]

import fidelity  # noqa: E402
import indistill as ref  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from kdgraph.data.loader import epoch_indices  # noqa: E402
from kdgraph.models.zoo import FmnistCNN  # noqa: E402
from kdgraph.plan import resolve_plan  # noqa: E402
from kdgraph.runtime import seed_everything  # noqa: E402
from kdgraph.spec import load_spec  # noqa: E402
from kdgraph.train import train  # noqa: E402


def initial_student(spec, seed: int, init: str) -> ref.Student:
    if init == "reference":
        torch.manual_seed(1000 + seed)
        return ref.Student()
    student = ref.Student()
    seed_everything(seed)  # what a regular kdgraph run of the seed builds
    state = {k.removeprefix("graph_module."): v.detach().clone()
             for k, v in resolve_plan(spec).graph.student.state_dict().items()}
    missing, unexpected = student.load_state_dict(state, strict=False)
    assert all("num_batches" in k for k in [*missing, *unexpected]), (missing, unexpected)
    return student


def reference_run(student, variant: str, seed: int, epochs: int) -> dict:
    x, y = ref.load_split(ROOT, "train", "embedded")
    x_test, y_test = ref.load_split(ROOT, "test", "embedded")
    teacher = ref.Teacher()
    teacher.load_state_dict(load_file(str(fidelity.TEACHER)))
    teacher.eval().requires_grad_(False)
    kept, batch = ref.pruned_channels(teacher), 128
    steps = len(y) // batch
    optimizer, scheduler = ref.make_optimizer(student.parameters(), 0.05, epochs * steps)
    stages = ref.stages_for(variant, epochs)
    for epoch in range(epochs):
        order = epoch_indices(len(y), seed=seed, epoch=epoch, shuffle=True)
        for i in range(steps):
            idx = order[i * batch:(i + 1) * batch]
            ref.train_step(ref.active_at(stages, epoch), student, teacher, torch.nn.Identity(), kept, optimizer,
                           scheduler, x[idx], y[idx])
    return ref.evaluate(student, x, y, x_test, y_test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=list(fidelity.INDISTILL.variants))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--init", choices=["reference", "kdgraph"], default="reference")
    parser.add_argument("--sides", nargs="+", choices=["kdgraph", "reference"], default=["kdgraph", "reference"])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "same_draws")
    args = parser.parse_args()
    torch.set_num_threads(1)
    family = fidelity.INDISTILL
    for seed in args.seeds:
        overrides = [*family.kdgraph_overrides, *family.variants[args.variant].overrides, f"runtime.seed={seed}",
                     *fidelity.epoch_overrides(family, args.variant, args.epochs), "runtime.threads=1",
                     f"output={args.work / f'{args.variant}-s{seed}'}"]
        spec = load_spec(family.spec, overrides)
        student, row, start = initial_student(spec, seed, args.init), {}, time.perf_counter()
        if "kdgraph" in args.sides:
            zoo = FmnistCNN()
            zoo.load_state_dict(student.state_dict())
            last = train(spec, student=zoo, quiet=True, overwrite=True).metrics[-1]
            row["kdgraph"] = {k: last[k] for k in ("val_top1", "val_map")}
        if "reference" in args.sides:
            row["reference"] = reference_run(student, args.variant, seed, args.epochs)
        print(json.dumps({"variant": args.variant, "seed": seed, "init": args.init, **row,
                          "seconds": round(time.perf_counter() - start)}), flush=True)


if __name__ == "__main__":
    main()
