"""Images per second of kdgraph's image-folder pipeline against torchvision's ``ImageFolder`` + ``DataLoader``, with
the same number of workers, the same batch and the same training transforms (random resized crop to S, flip,
normalise), on a generated folder of JPEGs. The two are run side by side, alternating, in one process, so the
machine's load affects both alike; the ratio is kdgraph / torchvision.

    python3 benchmarks/data_throughput.py                       # 5,000 images of 256x256, 224 px, auto workers
    python3 benchmarks/data_throughput.py --images 2000 --workers 1 --rounds 3

kdgraph's side is what a user gets without touching the spec: ``data.num_workers: auto`` (or ``--workers``), its
seeded loader, persistent workers, torchvision.io decoding and uint8 resizing.
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

import numpy as np  # noqa: E402
import torch  # noqa: E402


def make_folder(root: Path, images: int, side: int, classes: int = 10) -> Path:
    """``root/train/class_k/i.jpg`` (and a small val/): smooth random colour fields, JPEG quality 90."""
    from PIL import Image

    if (root / "train").is_dir() and sum(1 for _ in (root / "train").rglob("*.jpg")) == images:
        return root
    rng = np.random.default_rng(0)
    for split, n in (("train", images), ("val", classes)):
        for i in range(n):
            folder = root / split / f"class_{i % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            low = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            image = Image.fromarray(low).resize((side, side), Image.BILINEAR)
            noise = rng.integers(-20, 21, (side, side, 3))
            image = Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8))
            image.save(folder / f"{i}.jpg", quality=90)
    return root


def torchvision_loader(root: Path, size: int, batch: int, workers: int):
    from torchvision import datasets, transforms as T

    tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    data = datasets.ImageFolder(str(root / "train"), transform=tf)
    return torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                                       persistent_workers=workers > 0)


def kdgraph_loader(root: Path, size: int, batch: int, workers):
    from kdgraph.data import WithIndex, build_datasets, make_loader

    bundle = build_datasets("imagefolder", root, image_size=size)
    return make_loader(WithIndex(bundle.train), batch, train=True, seed=0, drop_last=True, num_workers=workers)


def images_per_second(loader, batches: int) -> float:
    it = iter(loader)
    next(it)  # workers started, first batch (not timed)
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        x = next(it)[0]
        seen += len(x)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", default="auto", help="loader processes for both, or auto (kdgraph's default)")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/kdgraph-data-throughput"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    from kdgraph.data.loader import auto_workers

    workers = auto_workers() if args.workers == "auto" else int(args.workers)
    root = make_folder(args.folder, args.images, args.side)
    print(f"{args.images} JPEGs of {args.side}x{args.side}, crops of {args.size}, batch {args.batch}, {workers} "
          f"worker(s) each ({'auto' if args.workers == 'auto' else 'given'}), {os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.2f}")
    loaders = {"torchvision": torchvision_loader(root, args.size, args.batch, workers),
               "kdgraph": kdgraph_loader(root, args.size, args.batch, args.workers)}
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    for r in range(args.rounds):
        for name, loader in (loaders.items() if r % 2 == 0 else reversed(loaders.items())):
            rates[name].append(images_per_second(loader, args.batches))
        print(f"round {r + 1}: " + ", ".join(f"{n} {rates[n][-1]:.0f} img/s" for n in loaders))
    med = {n: statistics.median(v) for n, v in rates.items()}
    print(f"median: torchvision {med['torchvision']:.0f} img/s, kdgraph {med['kdgraph']:.0f} img/s, ratio "
          f"{med['kdgraph'] / med['torchvision']:.2f}x (load {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
