"""Independent reference for issue #21: knowledge distillation on full Fashion-MNIST in plain PyTorch.

Imports nothing from kdgraph. Everything is written out the way a practitioner writes it, so that kdgraph's specs
(benchmarks/references/specs/fmnist_*.yaml) can be checked against it seed for seed:

- data: the idx files of Debian's dataset-fashion-mnist (or --root), [0, 1] pixels;
- augmentation: per image, zero-pad the [0, 1] image by 2 px, random 28-px crop, horizontal flip with p = 1/2, then
  normalise with mean 0.2860, std 0.3530 (torchvision's RandomCrop(28, padding=2) + RandomHorizontalFlip + Normalize);
- optimizer: SGD, lr 0.05, momentum 0.9, Nesterov, weight decay 5e-4 on every parameter
  (``torch.optim.SGD(params, weight_decay=...)``); per-step cosine from lr to 0; batch 128, the last partial batch kept;
- variants (the teacher frozen, in eval mode):
  ``alone``      CE;
  ``kd``         0.1 CE + 0.9 T^2 KL(p_t || p_s), T = 4 (Hinton et al. 2015);
  ``fitnet``     the KD above + MSE(1x1 conv(student block3), teacher layer3) (Romero et al. 2015);
  ``projector``  CE + KL at T = 1 + 2 log sum |BN(W GAP(block3)) - BN(GAP(layer3))|^4, BN without affine, batch
                 statistics, eps 1e-4 (Miles & Mikolajczyk, AAAI 2024);
  ``projector-nonorm``  the projector recipe without the BatchNorms: 2 log sum |W GAP(block3) - GAP(layer3)|^4;
  ``projector-l2``      the projector recipe with the squared L2 distance (mean over the batch and the features)
                 instead of the log-sum: 2 mean (BN(W GAP(block3)) - BN(GAP(layer3)))^2 (the paper's loss ablation);
  ``teacher``    trains the teacher itself with CE (lr 0.1) and saves it as safetensors.

    python3 benchmarks/references/fmnist_kd.py kd --teacher src/kdgraph/models/weights/fmnist_resnet.safetensors \
        --seed 0 --epochs 6
    python3 benchmarks/references/fmnist_kd.py teacher --epochs 15 --save runs/fidelity/teacher.safetensors

Prints one JSON line per run: variant, seed, epochs, final test top-1 (also as ``metrics: {val_top1}``), seconds.
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
from safetensors.torch import load_file, save_file

MEAN, STD = 0.2860, 0.3530
DEBIAN = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
VARIANTS = ("teacher", "alone", "kd", "fitnet", "projector", "projector-nonorm", "projector-l2")


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


def load_split(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images float32 (N, 1, 28, 28) in [0, 1], labels int64 (N,))``."""
    images, labels = (read_idx(find(root, name)) for name in FILES[split])
    x = torch.from_numpy(images.copy()).float().div(255.0).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def normalise(x01: torch.Tensor) -> torch.Tensor:
    return (x01 - MEAN) / STD


def augment(x01: torch.Tensor, generator: torch.Generator, padding: int = 2) -> torch.Tensor:
    """RandomCrop(28, padding=2, fill=0) then RandomHorizontalFlip(p=0.5), image by image, on [0, 1] pixels."""
    n = x01.shape[0]
    tops = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    lefts = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    return crop_and_flip(x01, tops, lefts, flips, padding)


def crop_and_flip(x01: torch.Tensor, tops, lefts, flips, padding: int) -> torch.Tensor:
    """Zero-pad each [0, 1] image by ``padding``, crop it at (top, left) back to its size, flip it where asked."""
    _, _, h, w = x01.shape
    padded = F.pad(x01, (padding, padding, padding, padding), value=0.0)
    out = torch.empty_like(x01)
    for i in range(x01.shape[0]):
        crop = padded[i, :, int(tops[i]):int(tops[i]) + h, int(lefts[i]):int(lefts[i]) + w]
        out[i] = crop.flip(-1) if flips[i] else crop
    return out


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


class Teacher(nn.Module):
    """A CIFAR-style ResNet: 3x3 stem, three stages of two BasicBlocks (strides 1/2/2), GAP, fc.

    Widths 16/32/64 have the state-dict layout of kdgraph's zoo teacher, so its shipped safetensors load here; the
    issue's teacher was 32/64/128 (``--teacher-widths 32 64 128``), four times the compute."""

    def __init__(self, widths=(16, 32, 64), num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks, cin = [], widths[0]
        for i, width in enumerate(widths):
            blocks.append(nn.Sequential(BasicBlock(cin, width, 1 if i == 0 else 2), BasicBlock(width, width, 1)))
            cin = width
        self.layer1, self.layer2, self.layer3 = blocks
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x, feats=False):
        f = self.layer3(self.layer2(self.layer1(self.stem(x))))
        logits = self.fc(f.mean(dim=(2, 3)))
        return (logits, f) if feats else logits


class Student(nn.Module):
    """Three conv-BN-ReLU blocks (16/32/64 channels, 2x2 max-pool after the first two), GAP, fc."""

    def __init__(self, widths=(16, 32, 64), num_classes: int = 10):
        super().__init__()
        layers, cin = [], 1
        for i, width in enumerate(widths):
            block = [nn.Conv2d(cin, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            if i < len(widths) - 1:
                block.append(nn.MaxPool2d(2))
            layers.append(nn.Sequential(*block))
            cin = width
        self.block1, self.block2, self.block3 = layers
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x, feats=False):
        f = self.block3(self.block2(self.block1(x)))
        logits = self.fc(f.mean(dim=(2, 3)))
        return (logits, f) if feats else logits


# -- losses -----------------------------------------------------------------------------------------------------------
def kd_kl(student_logits, teacher_logits, temperature: float):
    """T^2 KL(softmax(t / T) || softmax(s / T)), mean over the batch."""
    log_ps = F.log_softmax(student_logits / temperature, dim=1)
    log_pt = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True) * temperature ** 2


def batch_norm(z):
    """BatchNorm without affine parameters, always with the batch's statistics (biased variance), eps 1e-4."""
    return F.batch_norm(z, None, None, training=True, eps=1e-4)


def log_sum(zs, zt, alpha: float = 4.0):
    return torch.log((zs - zt).abs().pow(alpha).sum())


def make_adapter(variant: str, student_width: int = 64, teacher_width: int = 64) -> nn.Module:
    """What the student side adds for each variant: FitNet's 1x1 conv, the projector's linear map, or nothing."""
    if variant == "fitnet":
        return nn.Conv2d(student_width, teacher_width, 1, bias=False)
    if variant.startswith("projector"):
        return nn.Linear(student_width, teacher_width)
    return nn.Identity()


def step_loss(variant: str, student, adapter, teacher, x, y) -> dict[str, torch.Tensor]:
    """Every term of one step, unweighted, and the weighted ``total`` (what backward sees)."""
    logits, fs = student(x, feats=True)
    terms = {"ce": F.cross_entropy(logits, y)}
    if variant in ("alone", "teacher"):
        return dict(terms, total=terms["ce"])
    with torch.no_grad():
        t_logits, ft = teacher(x, feats=True)
    if variant.startswith("projector"):
        terms["logits"] = kd_kl(logits, t_logits, 1.0)
        zs, zt = adapter(fs.mean(dim=(2, 3))), ft.mean(dim=(2, 3))
        if variant == "projector-nonorm":
            terms["pair"] = log_sum(zs, zt)
        elif variant == "projector-l2":
            terms["pair"] = F.mse_loss(batch_norm(zs), batch_norm(zt))
        else:
            terms["pair"] = log_sum(batch_norm(zs), batch_norm(zt))
        return dict(terms, total=terms["ce"] + terms["logits"] + 2.0 * terms["pair"])
    terms["logits"] = kd_kl(logits, t_logits, 4.0)
    total = 0.1 * terms["ce"] + 0.9 * terms["logits"]
    if variant == "fitnet":
        terms["pair"] = F.mse_loss(adapter(fs), ft)
        total = total + terms["pair"]
    return dict(terms, total=total)


# -- training ---------------------------------------------------------------------------------------------------------
def cosine(steps: int):
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))


def make_optimizer(params, lr: float, steps: int):
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, cosine(steps))


def train_step(variant: str, model, adapter, teacher, optimizer, scheduler, x, y) -> dict[str, float]:
    """One SGD step on a normalised batch; returns the terms of its loss (before the update)."""
    terms = step_loss(variant, model, adapter, teacher, x, y)
    optimizer.zero_grad(set_to_none=True)
    terms["total"].backward()
    optimizer.step()
    scheduler.step()
    return {k: float(v.detach()) for k, v in terms.items()}


@torch.no_grad()
def top1(model, x01, y, batch: int = 1000) -> float:
    model.eval()
    correct = sum(int((model(normalise(x01[i:i + batch])).argmax(1) == y[i:i + batch]).sum())
                  for i in range(0, len(y), batch))
    return correct / len(y)


def train(variant: str, seed: int, epochs: int, root: Path, teacher_path: Path | None, batch: int = 128,
          lr: float = 0.05, save: Path | None = None, teacher_widths=(16, 32, 64)) -> dict:
    torch.manual_seed(seed)
    x_train, y_train = load_split(root, "train")
    x_test, y_test = load_split(root, "test")
    model = Teacher(teacher_widths) if variant == "teacher" else Student()
    adapter = make_adapter(variant, teacher_width=teacher_widths[-1])
    teacher = None
    if variant not in ("alone", "teacher"):
        teacher = Teacher(teacher_widths)
        teacher.load_state_dict(load_file(str(teacher_path)))
        teacher.eval().requires_grad_(False)
    steps_per_epoch = math.ceil(len(y_train) / batch)
    optimizer, scheduler = make_optimizer([*model.parameters(), *adapter.parameters()], lr, epochs * steps_per_epoch)
    order_gen = torch.Generator().manual_seed(seed)
    aug_gen = torch.Generator().manual_seed(seed + 1)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        adapter.train()
        order = torch.randperm(len(y_train), generator=order_gen)
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            x = normalise(augment(x_train[idx], aug_gen))
            train_step(variant, model, adapter, teacher, optimizer, scheduler, x, y_train[idx])
        print(f"{variant} seed {seed} epoch {epoch + 1}: test top-1 {top1(model, x_test, y_test):.4f}", flush=True)
    accuracy = top1(model, x_test, y_test)
    row = {"variant": variant, "seed": seed, "epochs": epochs, "top1": accuracy, "metrics": {"val_top1": accuracy},
           "seconds": round(time.perf_counter() - start, 1)}
    if save is not None:
        save.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(save))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--root", type=Path, default=DEBIAN)
    parser.add_argument("--teacher", type=Path, default=None, help="the teacher's safetensors (distilled variants)")
    parser.add_argument("--save", type=Path, default=None, help="write the trained model here (safetensors)")
    parser.add_argument("--lr", type=float, default=None, help="default: 0.1 for the teacher, 0.05 otherwise")
    parser.add_argument("--teacher-widths", type=int, nargs=3, default=[16, 32, 64])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.variant not in ("alone", "teacher") and args.teacher is None:
        parser.error(f"{args.variant} needs --teacher")
    if args.threads:
        torch.set_num_threads(args.threads)
    lr = args.lr or (0.1 if args.variant == "teacher" else 0.05)
    row = train(args.variant, args.seed, args.epochs, args.root, args.teacher, lr=lr, save=args.save,
                teacher_widths=tuple(args.teacher_widths))
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
