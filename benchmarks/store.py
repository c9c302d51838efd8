"""The teacher store (issue #17): what it costs and what it keeps, side by side in one run.

    python3 benchmarks/store.py cost [--images 12800] [--epochs 1] [--rounds 2] [--threads 2] [--logits-only]
    python3 benchmarks/store.py accuracy [--seeds 0 1 2] [--out docs/results/store.md]

``cost``: the quickstart pair with ``resized-crop-flip`` and mixup on the first N training images, three runs in one
process: the student alone (same augmentation and mixing), KD from a store of K = epochs views (whole layer3 maps
and all logits: ``--full-maps``), and online KD (the teacher runs every step); ``--logits-only`` adds the same two KD
runs without the pair. Their steps are interleaved one by one (on a shared machine the load drifts by the second),
each step timed as ``Trainer.epoch`` runs it: the next batch of ``Trainer.batches`` (the loader, the views' numbers,
the store's records, the mixing partners) and ``Trainer.train_batch`` (the views, forward, backward, update). An
epoch's time is the sum of its steps (no evaluation). Before that, ``teach`` against the teacher's bare forward,
interleaved by rounds: ``teach --full-maps`` writing a store (the first round's store is the one KD reads), then
kdgraph's frozen teacher alone on the very views ``teach`` shows it, rendered beforehand, in batches of teach's size
and memory format.

``accuracy``: the same distillation on the full Fashion-MNIST (when installed), 3 epochs: online, from one store of 3
views written once (seed 0) with all logits, and from one with the top 5 of 10 logits; every seed trains from the
same store ("teach once, distil many"), the student alone for scale. Mean ± std top-1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from kdgraph.data.loader import fetch  # noqa: E402
from kdgraph.plan import resolve_plan  # noqa: E402
from kdgraph.runtime import seed_everything  # noqa: E402
from kdgraph.spec import load_spec  # noqa: E402
from kdgraph.teach import teach  # noqa: E402
from kdgraph.train import Trainer, train  # noqa: E402
from kdgraph.train.prefetch import prefetch  # noqa: E402
from kdgraph.data.views import ViewMaker  # noqa: E402

QUICKSTART = ROOT / "specs" / "quickstart.yaml"
AUGMENTED = ["data.augment=resized-crop-flip", "data.mix=mixup", "train.baseline=false"]
ALONE = ["teacher=null", "distill.logits=null", "distill.pairs=[]"]
LOGITS_ONLY = ["distill.pairs=[]"]


def load() -> str:
    """The load average over 1, 5 and 15 minutes."""
    return " / ".join(f"{v:.1f}" for v in os.getloadavg())


def spec(*overrides: str):
    return load_spec(QUICKSTART, [*AUGMENTED, *overrides])


def bare_forward(common: list[str], views: int) -> float:
    """Image-views per second of kdgraph's frozen teacher alone on the very views ``teach`` shows it (rendered
    beforehand, untimed), in batches of teach's size, in its memory format: the teacher's bare throughput."""
    s = spec(*common)
    seed_everything(s.runtime.seed)
    plan = resolve_plan(s, read_store=False)
    rt, data = plan.runtime, plan.data
    teacher = plan.graph.teachers["teacher"].to(rt.device)
    if rt.channels_last:
        teacher.to(memory_format=torch.channels_last)
    batch = s.data.eval_batch_size or 2 * s.data.batch_size
    maker = ViewMaker(s.data, num_classes=data.num_classes, seed=s.runtime.seed, dataset=data.train,
                      image_shape=data.input_shape, norm=(data.mean, data.std))
    n = len(data.train)
    ready = []
    for view in range(views):
        for first in range(0, n, batch):
            index = torch.arange(first, min(n, first + batch))
            ready.append(rt.inputs(maker.make(fetch(data.train, index)[0], index, view)[0]))
    with torch.no_grad(), rt.autocast():
        teacher(ready[0])  # warm
        start = time.perf_counter()
        for x in ready:
            teacher(x)
    return n * views / (time.perf_counter() - start)


class Stepper:
    """One run's training a step at a time, as ``Trainer.epoch`` runs it: the next batch of ``Trainer.batches``
    through the prefetcher, then ``Trainer.train_batch``."""

    def __init__(self, overrides: list[str]):
        s = spec(*overrides)
        seed_everything(s.runtime.seed)
        self.trainer = Trainer(resolve_plan(s))
        self.trainer.cache_teachers()  # as train() does before the first epoch (a store starts reading view 0)
        self.batches = iter(())

    def start(self, epoch: int) -> None:
        t = self.trainer
        t.enter_epoch(epoch)
        t.graph.train()
        t.loader.set_epoch(epoch)
        self.batches = iter(prefetch(t.batches(epoch), t.rt.device))

    def step(self) -> None:
        self.trainer.train_batch(*next(self.batches))


def cost(args: argparse.Namespace) -> None:
    common = [f"data.train_subset={args.images}", "data.test_subset=256", f"train.epochs={args.epochs}",
              f"runtime.threads={args.threads}", "runtime.device=cpu", "eval.every=1000"]
    torch.set_num_threads(args.threads)
    print(f"load before: {load()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="kdgraph-store-bench-"))
    teach_rates, bare = [], []
    for r in range(args.rounds):  # teach and the bare forward, interleaved; the first store is the one KD reads
        result = teach(spec(*common), out=work / f"pair{r}", quiet=True, full_maps=True)
        teach_rates.append(result.images_per_s)
        if r == 0:
            sizes = {"pair": (result.bytes, result.bytes_per_view)}
        bare.append(bare_forward(common, args.epochs))
        print(f"round {r + 1}: teach {teach_rates[-1]:.0f}/s, bare forward {bare[-1]:.0f}/s (load {load()})",
              flush=True)
    variants = {
        "student alone (same augmentation and mixup)": [*common, *ALONE],
        "KD from the store (pair + logits, whole maps)": [*common, f"teacher.store={work / 'pair0'}"],
        "online KD (pair + logits)": common,
    }
    if args.logits_only:
        result = teach(spec(*common, *LOGITS_ONLY), out=work / "logits", quiet=True)
        sizes["logits"] = (result.bytes, result.bytes_per_view)
        variants["KD from the store (logits only)"] = [*common, *LOGITS_ONLY, f"teacher.store={work / 'logits'}"]
        variants["online KD (logits only)"] = [*common, *LOGITS_ONLY]
    steppers = {name: Stepper(overrides) for name, overrides in variants.items()}
    steps = len(next(iter(steppers.values())).trainer.loader)
    epoch_s: dict[str, list[float]] = {name: [] for name in variants}
    for epoch in range(args.epochs):  # every step of every variant, interleaved step by step (load drifts)
        totals = dict.fromkeys(variants, 0.0)
        for stepper in steppers.values():
            stepper.start(epoch)
        for i in range(steps):
            names = list(variants)[i % len(variants):] + list(variants)[:i % len(variants)]
            for name in names:
                start = time.perf_counter()
                steppers[name].step()
                totals[name] += time.perf_counter() - start
        for name, total in totals.items():
            epoch_s[name].append(total)
        print(f"epoch {epoch + 1}: " + ", ".join(f"{n.split(' (')[0]} {v:.2f} s" for n, v in totals.items())
              + f" (load {load()})", flush=True)
    alone = epoch_s["student alone (same augmentation and mixup)"]
    lines = [f"| epoch ({args.images:,} images, batch 128, {args.threads} thread(s), steps interleaved) | "
             f"seconds per epoch ({args.epochs} epoch(s)) | × student alone |", "| --- | --- | --- |"]
    for name, values in epoch_s.items():
        ratios = [v / a for v, a in zip(values, alone)]
        spread = f" [{min(ratios):.2f}, {max(ratios):.2f}]" if len(ratios) > 1 else ""
        lines.append(f"| {name} | {', '.join(f'{v:.2f}' for v in values)} | {statistics.median(ratios):.2f}{spread} |")
    pairs = [t / b for t, b in zip(teach_rates, bare)]
    lines += ["", "| teach against the teacher's bare forward (rounds interleaved) | image-views/s, median |",
              "| --- | --- |",
              f"| `teach --full-maps` (views made, teacher run, records written) | {statistics.median(teach_rates):,.0f} |",
              f"| kdgraph's frozen teacher alone on the same views, ready batches | {statistics.median(bare):,.0f} |",
              f"| ratio, per round: median [min, max] | {statistics.median(pairs):.2f} [{min(pairs):.2f}, "
              f"{max(pairs):.2f}] |", "",
              "Stores: " + ", ".join(f"{name} {b / 2**20:.1f} MiB ({per:,} bytes per image and view)"
                                     for name, (b, per) in sizes.items())
              + f". Load average (1/5/15 min) after: {load()}."]
    print("\n".join(lines))
    subprocess.run(["rm", "-rf", str(work)], check=False)


def accuracy(args: argparse.Namespace) -> None:
    work = Path(args.stores)
    common = [f"train.epochs={args.epochs}", f"runtime.threads={args.threads}"]
    stores = {"all": work / "quickstart-aug-all", "top5": work / "quickstart-aug-top5"}
    for name, path in stores.items():
        start = time.perf_counter()
        result = teach(spec(*common, "runtime.seed=0"), out=path, full_maps=True, quiet=True,
                       top_k=5 if name == "top5" else None)
        print(f"teach {name}: {result.computed:,} image-views in {time.perf_counter() - start:.0f} s, "
              f"{result.bytes / 2**30:.2f} GiB", flush=True)
    variants = {
        "student alone, same augmentation and mixup": ALONE,
        "online KD (teacher every step)": [],
        "KD from the store, all logits": [f"teacher.store={stores['all']}"],
        "KD from the store, top-5 of 10 logits (float16)": [f"teacher.store={stores['top5']}"],
    }
    table = ["| run | top-1 (%) mean ± std | per seed | wall s per run (mean) |", "| --- | --- | --- | --- |"]
    source = ""
    for label, extra in variants.items():
        scores, walls = [], []
        for seed in args.seeds:
            start = time.perf_counter()
            result = train(spec(*common, *extra, f"runtime.seed={seed}"), write=False, quiet=True)
            walls.append(time.perf_counter() - start)
            scores.append(result.summary["student_top1"])
            source = result.summary["data"]
            print(f"{label} seed {seed}: {scores[-1]:.4f} ({walls[-1]:.0f} s, load {load()})", flush=True)
        std = statistics.stdev(scores) if len(scores) > 1 else 0.0
        table.append(f"| {label} | {100 * statistics.mean(scores):.2f} ± {100 * std:.2f} | "
                     f"{', '.join(f'{100 * s:.2f}' for s in scores)} | {statistics.mean(walls):.0f} |")
    command = (f"python3 benchmarks/store.py accuracy --seeds {' '.join(map(str, args.seeds))} --epochs {args.epochs} "
               f"--threads {args.threads}")
    text = "\n".join([f"Data: {source}; seeds {', '.join(map(str, args.seeds))}; {args.epochs} epochs; stores of "
                      f"{args.epochs} views written once with seed 0 (every seed trains from them).", "", *table, "",
                      f"Command: `{command}`", ""])
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    c = sub.add_parser("cost")
    c.add_argument("--images", type=int, default=12800)
    c.add_argument("--epochs", type=int, default=1)
    c.add_argument("--rounds", type=int, default=2)
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--logits-only", action="store_true", help="also the KD runs without the pair")
    a = sub.add_parser("accuracy")
    a.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a.add_argument("--epochs", type=int, default=3)
    a.add_argument("--threads", type=int, default=2)
    a.add_argument("--stores", default="stores/bench")
    a.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    cost(args) if args.what == "cost" else accuracy(args)


if __name__ == "__main__":
    main()
