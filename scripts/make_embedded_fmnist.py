#!/usr/bin/env python3
"""Write kdgraph/data/embedded/fashion_mnist_subset.npz.

A deterministic, class-balanced Fashion-MNIST subset: the first 1,200 images of each class
from the train split (12,000) and the first 200 of each class from t10k (2,000), in their
original order. Keys: x_train (uint8 N×28×28), y_train (uint8), x_test, y_test.

Source: Debian's dataset-fashion-mnist package (MIT licence, Zalando Research), or
--src DIR holding the four idx files (gz or raw).

    python3 scripts/make_embedded_fmnist.py [--src /usr/share/datasets/fashion-mnist]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from kdgraph.data.fashion_mnist_files import DEBIAN_DIR, EMBEDDED_FILE, FILES, read_idx  # noqa: E402

PER_CLASS = {"train": 1200, "test": 200}
MAX_BYTES = 8 * 1024 * 1024


def _path(src: Path, name: str) -> Path:
    for cand in (src / (name + ".gz"), src / name):
        if cand.is_file():
            return cand
    raise SystemExit(f"missing {name}(.gz) under {src}; install dataset-fashion-mnist or pass --src")


def balanced_subset(images: np.ndarray, labels: np.ndarray, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    keep = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)[:per_class]
        if len(idx) < per_class:
            raise SystemExit(f"class {c} has only {len(idx)} images, need {per_class}")
        keep.append(idx)
    order = np.sort(np.concatenate(keep))  # keep the original order of the split
    return images[order].astype(np.uint8), labels[order].astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=Path(DEBIAN_DIR))
    ap.add_argument("--out", type=Path, default=EMBEDDED_FILE)
    args = ap.parse_args(argv)

    arrays = {}
    for split, (img_name, lab_name) in FILES.items():
        images = read_idx(_path(args.src, img_name))
        labels = read_idx(_path(args.src, lab_name))
        x, y = balanced_subset(images, labels, PER_CLASS[split])
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
        print(f"{split}: {x.shape} {x.dtype}, per class {np.bincount(y, minlength=10).tolist()}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({size:,} bytes)")
    if size >= MAX_BYTES:
        print(f"error: {args.out} is {size:,} bytes, over the 8 MB budget", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
