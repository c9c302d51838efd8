"""Independent reference for issue #20: self-distillation with auxiliary heads ("Be Your Own Teacher") in plain PyTorch.

Imports nothing from kdgraph. Zhang et al., "Be Your Own Teacher: Improve the Performance of Convolutional Neural
Networks via Self Distillation", ICCV 2019, written out as the paper and its published code describe it:

- student: a CIFAR-style ResNet (3x3 stem, three stages of two BasicBlocks with strides 1/2/2, widths 16/32/64,
  global average pooling, linear classifier; the state-dict layout of kdgraph's ``fmnist_resnet``);
- heads after stage 1 and stage 2, each: an attention gate ``A = sigmoid(upsample(ReLU(BN(pw(dw_s2(F))))))``,
  ``F <- A * F``; stride-2 separable-convolution blocks (depthwise 3x3, pointwise 1x1, BN, ReLU, twice per block) down
  to the deepest stage's 7x7, widening to its 64 channels; global average pooling (``h_i``); a linear classifier
  (``q_i``); and a linear adaptation layer ``W_i`` from ``h_i`` to the deepest feature's width;
- loss: ``CE(q_deep, y) + sum_i [alpha H_T(q_i, sg(q_deep)) + (1 - alpha) CE(q_i, y) + lambda ||W_i h_i - sg(h_deep)||_2]``
  with ``H_T(q, p) = -(1/B) sum_b sum_k softmax(p_b / T)_k log softmax(q_b / T)_k`` (no T^2, as in the published code),
  ``||.||_2`` the Euclidean norm over the whole batch (``torch.dist``), alpha 0.3, lambda 0.03, T 3;
- data: the Fashion-MNIST idx files (``--data full``) or the class-balanced 12,000/2,000 subset kdgraph embeds
  (``--data embedded``, read from its .npz); per image: pad the [0, 1] image by 2 px with black, random 28-px crop,
  horizontal flip with p = 1/2, normalise with mean 0.2860, std 0.3530; batch 128, the last partial batch kept;
- optimizer: SGD, lr 0.1, momentum 0.9, Nesterov, weight decay 5e-4 on every parameter; per-step cosine to 0.

Variants: ``alone`` (the ResNet with CE only), ``byot`` (heads, the loss above), ``deep-supervision`` (the same heads
trained with CE only: alpha 0, lambda 0; the ablation without the distillation terms).

    python3 benchmarks/references/self_distillation.py byot --seed 0 --epochs 30 --data embedded

Prints one JSON line: variant, seed, epochs, the final metrics (``val_top1``; for the heads ``val_top1/layer1``,
``val_top1/layer2``, ``val_top1/deepest``, ``val_top1/ensemble``), the curve (the same metrics after every epoch) and
seconds.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MEAN, STD = 0.2860, 0.3530
DEBIAN = Path("/usr/share/datasets/fashion-mnist")
EMBEDDED = Path(__file__).resolve().parents[2] / "src" / "kdgraph" / "data" / "embedded" / "fashion_mnist_subset.npz"
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
HEADS = ("layer1", "layer2")
VARIANTS = ("alone", "byot", "deep-supervision")


# -- data -------------------------------------------------------------------------------------------------------------
def read_idx(path: Path) -> np.ndarray:
    """An idx file (optionally gzipped): big-endian magic (0, 0, dtype 0x08 = uint8, ndim), then the sizes."""
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def find(root: Path, name: str) -> Path:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"no {name}[.gz] in {root}")


def load_split(root: Path, split: str, data: str = "full") -> tuple[torch.Tensor, torch.Tensor]:
    """``(images float32 (N, 1, 28, 28) in [0, 1], labels int64 (N,))`` from the idx files or the embedded subset."""
    if data == "embedded":
        arrays = np.load(EMBEDDED)
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
    else:
        images, labels = (read_idx(find(root, name)) for name in FILES[split])
    x = torch.from_numpy(images.copy()).float().div(255.0).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def normalise(x01: torch.Tensor) -> torch.Tensor:
    return (x01 - MEAN) / STD


def crop_and_flip(x01: torch.Tensor, tops, lefts, flips, padding: int, fill: float = 0.0) -> torch.Tensor:
    """Pad each image by ``padding`` with ``fill`` (black on [0, 1] images), crop it at (top, left) back to its size,
    flip it where asked."""
    _, _, h, w = x01.shape
    padded = F.pad(x01, (padding, padding, padding, padding), value=fill)
    out = torch.empty_like(x01)
    for i in range(x01.shape[0]):
        crop = padded[i, :, int(tops[i]):int(tops[i]) + h, int(lefts[i]):int(lefts[i]) + w]
        out[i] = crop.flip(-1) if flips[i] else crop
    return out


def augment(x01: torch.Tensor, generator: torch.Generator, padding: int = 2) -> torch.Tensor:
    """RandomCrop(28, padding=2, fill=0) then RandomHorizontalFlip(p=0.5), image by image, on [0, 1] pixels."""
    n = x01.shape[0]
    tops = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    lefts = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    return crop_and_flip(x01, tops, lefts, flips, padding)


# -- models -----------------------------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """3x3 stem, three stages of two BasicBlocks (strides 1/2/2), GAP, fc. ``forward(x, feats=True)`` returns the
    logits, the three stage outputs and the pooled feature (the classifier's input)."""

    def __init__(self, widths=(16, 32, 64), num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages, cin = [], widths[0]
        for i, width in enumerate(widths):
            stages.append(nn.Sequential(BasicBlock(cin, width, 1 if i == 0 else 2), BasicBlock(width, width, 1)))
            cin = width
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x, feats=False):
        f1 = self.layer1(self.stem(x))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        h = f3.mean(dim=(2, 3))
        logits = self.fc(h)
        return (logits, [f1, f2, f3], h) if feats else logits


class SepConv(nn.Module):
    """BYOT's separable convolution block: (dw 3x3 stride s, pw 1x1, BN, ReLU), then (dw 3x3, pw 1x1 to cout, BN, ReLU)."""

    def __init__(self, cin: int, cout: int, stride: int = 2):
        super().__init__()
        self.op = nn.Sequential(
            nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.Conv2d(cin, cin, 1, bias=False),
            nn.BatchNorm2d(cin), nn.ReLU(),
            nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False), nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU())

    def forward(self, x):
        return self.op(x)


class Head(nn.Module):
    """One shallow classifier: attention gate, SepConv blocks down to the deepest stage, GAP, fc, adaptation layer."""

    def __init__(self, channels: int, size: int, deep_channels: int = 64, deep_size: int = 7, num_classes: int = 10):
        super().__init__()
        self.gate = nn.Sequential(nn.Conv2d(channels, channels, 3, 2, 1, groups=channels, bias=False),
                                  nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU())
        blocks, width = [], channels
        while size > deep_size:
            nxt = deep_channels if size // 2 <= deep_size else min(deep_channels, 2 * width)
            blocks.append(SepConv(width, nxt))
            width, size = nxt, (size + 1) // 2
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(deep_channels, num_classes)
        self.adaptation = nn.Linear(deep_channels, deep_channels)

    def forward(self, f):
        attention = torch.sigmoid(F.interpolate(self.gate(f), size=f.shape[-2:], mode="bilinear", align_corners=False))
        h = self.blocks(attention * f).mean(dim=(2, 3))
        return self.fc(h), h


def make_heads(variant: str) -> nn.ModuleList:
    """The heads of ``byot`` and ``deep-supervision`` after stage 1 (16 x 28 x 28) and stage 2 (32 x 14 x 14)."""
    if variant == "alone":
        return nn.ModuleList()
    return nn.ModuleList([Head(16, 28), Head(32, 14)])


# -- losses -----------------------------------------------------------------------------------------------------------
def soft_ce(q, p, temperature: float):
    """H_T(q, p) = -(1/B) sum_b sum_k softmax(p_b / T)_k log softmax(q_b / T)_k."""
    return -(F.softmax(p / temperature, dim=1) * F.log_softmax(q / temperature, dim=1)).sum(dim=1).mean()


def step_loss(variant: str, model, heads, x, y, alpha: float = 0.3, lam: float = 0.03,
              temperature: float = 3.0) -> dict[str, torch.Tensor]:
    """Every term of one step and the weighted ``total``."""
    logits, stages, h_deep = model(x, feats=True)
    terms = {"ce": F.cross_entropy(logits, y)}
    total = terms["ce"]
    if variant == "deep-supervision":
        alpha, lam = 0.0, 0.0
    for name, head, f in zip(HEADS, heads, stages):
        q, h = head(f)
        soft = soft_ce(q, logits.detach(), temperature)
        ce = F.cross_entropy(q, y)
        feature = torch.dist(head.adaptation(h), h_deep.detach())
        terms.update({f"{name}/soft": soft, f"{name}/ce": ce, f"{name}/feature": feature})
        total = total + alpha * soft + (1 - alpha) * ce + lam * feature
    return dict(terms, total=total)


# -- training ---------------------------------------------------------------------------------------------------------
def cosine(steps: int):
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))


def make_optimizer(params, lr: float, steps: int):
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, cosine(steps))


def train_step(variant, model, heads, optimizer, scheduler, x, y) -> dict[str, float]:
    terms = step_loss(variant, model, heads, x, y)
    optimizer.zero_grad(set_to_none=True)
    terms["total"].backward()
    optimizer.step()
    scheduler.step()
    return {k: float(v.detach()) for k, v in terms.items()}


@torch.no_grad()
def evaluate(model, heads, x01, y, batch: int = 1000) -> dict[str, float]:
    """Top-1 of the classifier; with heads also of each head, the deepest classifier and the ensemble (mean logits)."""
    model.eval(), heads.eval()
    correct: dict[str, int] = {}
    for i in range(0, len(y), batch):
        logits, stages, _ = model(normalise(x01[i:i + batch]), feats=True)
        named = {"val_top1": logits}
        if len(heads):
            named.update({f"val_top1/{n}": head(f)[0] for n, head, f in zip(HEADS, heads, stages)})
            named["val_top1/deepest"] = logits
            named["val_top1/ensemble"] = torch.stack([logits, *(head(f)[0] for head, f in zip(heads, stages))]).mean(0)
        for key, value in named.items():
            correct[key] = correct.get(key, 0) + int((value.argmax(1) == y[i:i + batch]).sum())
    model.train(), heads.train()
    return {k: v / len(y) for k, v in correct.items()}


def train(variant: str, seed: int, epochs: int, root: Path, data: str = "full", batch: int = 128,
          lr: float = 0.1) -> dict:
    torch.manual_seed(seed)
    x_train, y_train = load_split(root, "train", data)
    x_test, y_test = load_split(root, "test", data)
    model, heads = ResNet(), make_heads(variant)
    steps_per_epoch = math.ceil(len(y_train) / batch)
    optimizer, scheduler = make_optimizer([*model.parameters(), *heads.parameters()], lr, epochs * steps_per_epoch)
    order_gen = torch.Generator().manual_seed(seed)
    aug_gen = torch.Generator().manual_seed(seed + 1)
    start, curve = time.perf_counter(), []
    for epoch in range(epochs):
        model.train(), heads.train()
        order = torch.randperm(len(y_train), generator=order_gen)
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            x = normalise(augment(x_train[idx], aug_gen))
            train_step(variant, model, heads, optimizer, scheduler, x, y_train[idx])
        curve.append(dict(epoch=epoch + 1, **evaluate(model, heads, x_test, y_test)))
        print(json.dumps(curve[-1]), flush=True)
    return {"variant": variant, "seed": seed, "epochs": epochs, "metrics": {k: v for k, v in curve[-1].items()
                                                                            if k != "epoch"},
            "curve": curve, "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--data", choices=["full", "embedded"], default="embedded")
    parser.add_argument("--root", type=Path, default=DEBIAN)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(train(args.variant, args.seed, args.epochs, args.root, args.data, lr=args.lr)), flush=True)


if __name__ == "__main__":
    main()
