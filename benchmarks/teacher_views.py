"""What a teacher makes of kdgraph's crop-flip views: black padding (pixel space, as torchvision) against the
mid-grey padding kdgraph used before issue #21 (0 of the normalised batch), at the same offsets and flips.

    python3 benchmarks/teacher_views.py --weights src/kdgraph/models/weights/fmnist_resnet.safetensors

Prints, for each padding colour, the teacher's top-1 on the augmented views of the first N training images and the
mean entropy of its softened distribution at temperature T (flatter targets = higher entropy).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kdgraph.data import crop_flip, crop_flip_params, load_fashion_mnist  # noqa: E402
from kdgraph.data.datasets import FASHION_MNIST_MEAN, FASHION_MNIST_STD  # noqa: E402
from kdgraph.models import build_model  # noqa: E402
from kdgraph.data.views import normalised_fill  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="builtin", help="teacher weights (default: the shipped zoo weights)")
    parser.add_argument("--model", default="kdgraph:fmnist_resnet")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--padding", type=int, default=2)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    teacher = build_model(args.model, {}, args.weights).eval()
    data = load_fashion_mnist(split="train")
    mean, std = FASHION_MNIST_MEAN[0], FASHION_MNIST_STD[0]
    x = (data.images[:args.images].float().div(255).unsqueeze(1) - mean) / std
    y = data.labels[:args.images]
    oy, ox, flips = crop_flip_params(len(x), args.padding, torch.Generator().manual_seed(args.seed))
    print(f"{args.model} ({args.weights}) on crop-flip views of the first {len(x):,} training images "
          f"({data.source.description}), padding {args.padding} px:")
    print(f"| padding | teacher top-1 (%) | entropy at T = {args.temperature:g} (nats) |")
    print("| --- | --- | --- |")
    for name, fill in (("black (pixel 0, as torchvision)", normalised_fill(0.0, ((mean,), (std,)))),
                       ("mid-grey (0 after normalising, before #21)", (0.0,))):
        views = crop_flip(x, oy, ox, flips, args.padding, fill)
        with torch.no_grad():
            logits = torch.cat([teacher(views[i:i + 512]) for i in range(0, len(views), 512)])
        top1 = float((logits.argmax(1) == y).float().mean())
        p = torch.softmax(logits / args.temperature, dim=1)
        entropy = float(-(p * p.clamp_min(1e-12).log()).sum(1).mean())
        print(f"| {name} | {100 * top1:.2f} | {entropy:.3f} |")


if __name__ == "__main__":
    main()
