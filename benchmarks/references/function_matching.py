"""Independent reference for issue #20: function matching ("a good teacher is patient and consistent") in plain PyTorch.

Imports nothing from kdgraph. Beyer et al., "Knowledge distillation: A good teacher is patient and consistent",
CVPR 2022, written out as the paper describes it, at a scale two CPU cores afford:

- data: a small training set, the first ``--train-size`` (512) images of the Fashion-MNIST idx files, and the full
  10,000-image test set; normalised with mean 0.2860, std 0.3530;
- teacher: the zoo ResNet (3x3 stem, three stages of two BasicBlocks, 16/32/64, 93.5% top-1, trained on all 60,000
  images: a good teacher that knows more than the small set shows), frozen, in eval mode;
- student: the zoo CNN (three conv-BN-ReLU blocks 16/32/32, 2x2 max-pool after the first two, GAP, fc; 14k
  parameters), trained from scratch;
- views: per image an "inception crop" (area fraction ~ U(0.5, 1), aspect ratio log-uniform in [3/4, 4/3], placed
  uniformly where it fits, resampled bilinearly at pixel centres with edge clamping) and a horizontal flip with
  p = 1/2; then mixup with one ratio per batch, ``a ~ Beta(1, 1)``, ``a <- max(a, 1 - a)``,
  ``x <- a x + (1 - a) roll(x, 1)``. Cropping and mixing are affine per pixel with weights summing to one, so they are
  done on the normalised images (the same as before normalising);
- loss: ``KL(softmax(t) || softmax(s))`` at T = 1 on the logits only, no labels;
- optimizer: AdamW, lr 3e-3, betas (0.9, 0.999), decoupled weight decay 1e-4 on weights (not on biases or BatchNorm
  parameters), gradient norm clipped to 1, per step: linear warmup over ``--warmup-epochs`` (20) then cosine to 0;
  batch 64, the last partial batch dropped.

Variants (the paper's ablation):
  ``function-matching``  consistent views: the teacher sees the student's exact augmented, mixed image;
  ``independent``        the teacher gets its own crop, flip and mixing ratio ("independent noise");
  ``fixed``              a fixed teacher: its logits computed once on the un-augmented images and reused, the student
                         trained on crops and mixup against the logits of the image it was mixed from most;
  ``fixed-nomix``        the fixed teacher without mixup (the student sees crops only);
  ``consistent-nomix``   consistent views without mixup ("consistent teaching");
  ``alone``              the student trained with CE on the same crops and mixup, the labels mixed with the images.

    python3 benchmarks/references/function_matching.py function-matching --seed 0 --epochs 1000 \\
        --teacher src/kdgraph/models/weights/fmnist_resnet.safetensors

Prints one JSON line per evaluation (every ``--eval-every`` epochs) and a final JSON line: variant, seed, epochs,
``metrics: {val_top1}``, the curve and seconds.
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
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
VARIANTS = ("function-matching", "independent", "fixed", "fixed-nomix", "consistent-nomix", "alone")


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
    """``(images float32 (N, 1, 28, 28) normalised, labels int64 (N,))``."""
    images, labels = (read_idx(find(root, name)) for name in FILES[split])
    x = torch.from_numpy(images.copy()).float().div(255.0).unsqueeze(1)
    return (x - MEAN) / STD, torch.from_numpy(labels.astype(np.int64))


def crop_boxes(n: int, generator: torch.Generator, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3)):
    """Inception-crop boxes ``(top, left, height, width)`` as fractions of the image, and flip flags."""
    area = scale[0] + (scale[1] - scale[0]) * torch.rand(n, generator=generator, dtype=torch.float64)
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand(n, generator=generator,
                                                                                        dtype=torch.float64)
    width = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)
    height = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
    top = (1 - height) * torch.rand(n, generator=generator, dtype=torch.float64)
    left = (1 - width) * torch.rand(n, generator=generator, dtype=torch.float64)
    flips = torch.rand(n, generator=generator) < 0.5
    return torch.stack([top, left, height, width], dim=1), flips


def interpolation_matrix(start: torch.Tensor, step: torch.Tensor, size: int, reverse: torch.Tensor) -> torch.Tensor:
    """``(B, size, size)`` linear-interpolation weights along one axis: output index ``i`` (``size - 1 - i`` where
    ``reverse``) reads the input at ``start + (i + 1/2) step - 1/2``, clamped to ``[0, size - 1]``, split between its two
    neighbouring pixels (the weights of a row sum to one)."""
    i = torch.arange(size, dtype=torch.float64)
    i = torch.where(reverse[:, None], size - 1 - i, i)
    pos = (start[:, None] + (i + 0.5) * step[:, None] - 0.5).clamp(0, size - 1)  # (B, size)
    low = pos.floor().long()
    high = (low + 1).clamp(max=size - 1)
    frac = pos - low
    weights = torch.zeros(len(pos), size, size, dtype=torch.float64)
    weights.scatter_add_(2, low[..., None], (1 - frac)[..., None])
    weights.scatter_add_(2, high[..., None], frac[..., None])
    return weights


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Each image's box resampled to the image size, bilinearly: output pixel (i, j) reads the input at
    ``(top H + (i + 1/2) height - 1/2, left W + (j + 1/2) width - 1/2)``, clamped to the image, mirrored if flipped.
    Bilinear interpolation is separable: rows, then columns, as two matrix products per image."""
    _, _, h, w = x.shape
    top, left, height, width = boxes.double().unbind(1)
    rows = interpolation_matrix(top * h, height, h, torch.zeros_like(flips))  # (B, H, H)
    cols = interpolation_matrix(left * w, width, w, flips)  # (B, W, W)
    return rows.to(x.dtype)[:, None] @ x @ cols.to(x.dtype).transpose(1, 2)[:, None]


def mix_ratio(rng: np.random.Generator, alpha: float = 1.0) -> float:
    """``a ~ Beta(alpha, alpha)``, ``max(a, 1 - a)``."""
    a = float(rng.beta(alpha, alpha))
    return max(a, 1.0 - a)


def mixup(x: torch.Tensor, a, partner: torch.Tensor | None = None) -> torch.Tensor:
    """``a x + (1 - a) partner``: the partner of image ``i`` is image ``i - 1`` of the batch (``roll(x, 1)``), the
    paper's, unless ``partner`` gives one per image; ``a`` one ratio, or one per image (a ``(B,)`` tensor, taken in
    ``x``'s dtype). The replay tests pass kdgraph's own partners and ratios (per image, ``kdgraph.data.views``)."""
    if isinstance(a, torch.Tensor):
        a = a.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return a * x + (1.0 - a) * (torch.roll(x, 1, dims=0) if partner is None else partner)


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
    """3x3 stem, three stages of two BasicBlocks (strides 1/2/2, widths 16/32/64), GAP, fc: the zoo teacher's layout."""

    def __init__(self, widths=(16, 32, 64), num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages, cin = [], widths[0]
        for i, width in enumerate(widths):
            stages.append(nn.Sequential(BasicBlock(cin, width, 1 if i == 0 else 2), BasicBlock(width, width, 1)))
            cin = width
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.layer3(self.layer2(self.layer1(self.stem(x)))).mean(dim=(2, 3)))


class Student(nn.Module):
    """Three conv-BN-ReLU blocks (16/32/32 channels, 2x2 max-pool after the first two), GAP, fc: the zoo student."""

    def __init__(self, widths=(16, 32, 32), num_classes: int = 10):
        super().__init__()
        blocks, cin = [], 1
        for i, width in enumerate(widths):
            block = [nn.Conv2d(cin, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            if i < len(widths) - 1:
                block.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*block))
            cin = width
        self.block1, self.block2, self.block3 = blocks
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.block3(self.block2(self.block1(x))).mean(dim=(2, 3)))


# -- one step ---------------------------------------------------------------------------------------------------------
def kl(student_logits, teacher_logits):
    """KL(softmax(t) || softmax(s)) at T = 1, mean over the batch."""
    log_pt = F.log_softmax(teacher_logits, dim=1)
    return (log_pt.exp() * (log_pt - F.log_softmax(student_logits, dim=1))).sum(dim=1).mean()


def draw_views(variant: str, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, rng: np.random.Generator,
               ratio_per_image: bool = False):
    """The student's batch, the teacher's (None: the same tensor) and the CE targets: crops from ``generator``,
    mixing ratios from ``rng`` (one per batch, the paper's; ``ratio_per_image``: one per image, as kdgraph draws
    them, a diagnostic); with independent views the teacher draws its own of both."""
    mixing = variant not in ("fixed-nomix", "consistent-nomix")
    boxes, flips = crop_boxes(len(x), generator)
    if ratio_per_image and mixing:
        a = torch.tensor([mix_ratio(rng) for _ in range(len(x))])
    else:
        a = mix_ratio(rng) if mixing else 1.0
    student = views(x, boxes, flips, a if mixing else None)
    teacher = None
    if variant == "independent":
        t_boxes, t_flips = crop_boxes(len(x), generator)
        teacher = views(x, t_boxes, t_flips, mix_ratio(rng))
    target = mixup(F.one_hot(y, 10).float(), a) if mixing else y
    return student, teacher, target


def views(x, boxes, flips, a, partner=None):
    """Inception crop, flip, then mixup with ratio ``a`` (None: no mixing); ``partner=(images, boxes, flips)``: each
    image mixed with its own partner, seen through the partner's crop (see :func:`mixup`)."""
    out = resized_crop(x, boxes, flips)
    if a is None:
        return out
    return mixup(out, a, None if partner is None else resized_crop(*partner))


def step_loss(variant: str, student, teacher, x, x_teacher, target, cached) -> dict[str, torch.Tensor]:
    """The loss of one step: KL to the teacher's logits (on the teacher's view, or cached), or CE for ``alone``."""
    logits = student(x)
    if variant == "alone":
        ce = F.cross_entropy(logits, target)
        return {"ce": ce, "total": ce}
    if cached is not None:
        t_logits = cached
    else:
        with torch.no_grad():
            t_logits = teacher(x if x_teacher is None else x_teacher)
    loss = kl(logits, t_logits)
    return {"logits": loss, "total": loss}


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warmup from 1/warmup to 1 over ``warmup`` steps, then cosine from 1 to 0 over the rest."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))


def make_optimizer(model: nn.Module, lr: float, steps: int, warmup: int, weight_decay: float = 1e-4):
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, warmup))


def train_step(variant, student, teacher, optimizer, scheduler, x, x_teacher, target, cached=None) -> dict[str, float]:
    terms = step_loss(variant, student, teacher, x, x_teacher, target, cached)
    optimizer.zero_grad(set_to_none=True)
    terms["total"].backward()
    nn.utils.clip_grad_norm_(list(student.parameters()), 1.0)
    optimizer.step()
    scheduler.step()
    return {k: float(v.detach()) for k, v in terms.items()}


@torch.no_grad()
def cached_logits(teacher, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """The fixed teacher: its logits on every un-augmented training image, once."""
    return torch.cat([teacher(x[i:i + batch]) for i in range(0, len(x), batch)])


@torch.no_grad()
def top1(model, x, y, batch: int = 1000) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(y), batch))
    model.train()
    return correct / len(y)


def train(variant: str, seed: int, epochs: int, root: Path, teacher_path: Path | None, train_size: int = 512,
          batch: int = 64, lr: float = 3e-3, warmup_epochs: int = 20, eval_every: int = 25,
          ratio_per_image: bool = False) -> dict:
    torch.manual_seed(seed)
    x_train, y_train = load_split(root, "train")
    x_train, y_train = x_train[:train_size], y_train[:train_size]
    x_test, y_test = load_split(root, "test")
    student, teacher = Student(), None
    if variant != "alone":
        from safetensors.torch import load_file

        teacher = Teacher()
        teacher.load_state_dict(load_file(str(teacher_path)))
        teacher.eval().requires_grad_(False)
    cache = cached_logits(teacher, x_train) if variant.startswith("fixed") else None
    for model in (student, teacher):  # channels-last convolutions: faster on CPUs, the same numbers up to rounding
        if model is not None:
            model.to(memory_format=torch.channels_last)
    steps_per_epoch = len(y_train) // batch
    optimizer, scheduler = make_optimizer(student, lr, epochs * steps_per_epoch, warmup_epochs * steps_per_epoch)
    order_gen = torch.Generator().manual_seed(seed)
    aug_gen = torch.Generator().manual_seed(seed + 1)
    mix_rng = np.random.default_rng(seed + 2)
    start, curve = time.perf_counter(), []
    for epoch in range(epochs):
        order = torch.randperm(len(y_train), generator=order_gen)
        for i in range(steps_per_epoch):
            idx = order[i * batch:(i + 1) * batch]
            x, x_t, target = draw_views(variant, x_train[idx], y_train[idx], aug_gen, mix_rng, ratio_per_image)
            x, x_t = (v if v is None else v.contiguous(memory_format=torch.channels_last) for v in (x, x_t))
            train_step(variant, student, teacher, optimizer, scheduler, x, x_t, target,
                       None if cache is None else cache[idx])
        if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
            curve.append({"epoch": epoch + 1, "val_top1": top1(student, x_test, y_test)})
            print(json.dumps(curve[-1]), flush=True)
    return {"variant": variant, "seed": seed, "epochs": epochs, "metrics": {"val_top1": curve[-1]["val_top1"]},
            "curve": curve, "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--train-size", type=int, default=512)
    parser.add_argument("--warmup-epochs", type=int, default=20)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--root", type=Path, default=DEBIAN)
    parser.add_argument("--teacher", type=Path, default=None, help="the teacher's safetensors")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--ratio-per-image", action="store_true",
                        help="one mixing ratio per image (kdgraph's draw) instead of one per batch (a diagnostic)")
    args = parser.parse_args()
    if args.variant != "alone" and args.teacher is None:
        parser.error(f"{args.variant} needs --teacher")
    if args.threads:
        torch.set_num_threads(args.threads)
    row = train(args.variant, args.seed, args.epochs, args.root, args.teacher, args.train_size,
                warmup_epochs=args.warmup_epochs, eval_every=args.eval_every, ratio_per_image=args.ratio_per_image)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
