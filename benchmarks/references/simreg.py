"""Independent reference for issue #20: SimReg (regression onto several teachers through MLP heads) in plain PyTorch.

Imports nothing from kdgraph. Navaneet et al., "SimReg: Regression as a Simple Yet Effective Tool for Self-supervised
Knowledge Distillation", BMVC 2021, written out as the paper describes it:

- teachers (frozen, eval mode): the zoo ResNet (3x3 stem, three stages of two BasicBlocks, 16/32/64; 64-d embedding)
  and the zoo wide CNN (conv-BN-ReLU blocks 48/96/96; 96-d embedding); the embedding of a model is the input of its
  classifier (global average pooling of the last stage);
- student: the zoo CNN (16/32/32; 32-d embedding), trained from scratch;
- one prediction head per teacher on the student's embedding ``d = 32``: the paper's MLP
  ``Linear(d, 2d) BN ReLU Linear(2d, d) Linear(d, 2d) BN ReLU Linear(2d, D_T)`` (``mlp-deep``), a shallower
  ``Linear(d, 2d) BN ReLU Linear(2d, D_T)`` (``mlp-shallow``) or ``Linear(d, D_T)`` (``linear``);
- loss per teacher: ``mean_b (2 - 2 cos(head(z_s), z_t))``, summed over the teachers; no labels (optionally + CE);
- views: every model sees the same weakly augmented image: a random resized crop of area fraction ~ U(0.5, 1), aspect
  ratio log-uniform in [3/4, 4/3], bilinear at pixel centres with edge clamping, and a horizontal flip with p = 1/2
  (done on the normalised image, which is the same: both are affine per pixel with weights summing to one);
- data: the Fashion-MNIST idx files (60,000 / 10,000; ``--data full``) or the class-balanced 12,000/2,000 subset
  kdgraph embeds (``--data embedded``, read from its .npz), mean 0.2860, std 0.3530; batch 128, the last partial batch
  dropped; SGD, lr 0.05, momentum 0.9, weight decay 5e-4 on weights only, per-step cosine to 0;
- evaluation without any head: k-NN top-1 (cosine similarity to the train embeddings, k = 20, majority vote,
  ties to the larger summed similarity) and a linear probe (logistic regression on the standardised frozen train
  embeddings, full-batch L-BFGS from zeros, 100 iterations, L2 1e-4).

Variants: ``simreg`` (two teachers, deep MLP heads, no labels), ``simreg-ce`` (+ CE), ``mlp-shallow``, ``linear``
(the head ablation, two teachers), ``resnet-only``, ``wide-only`` (one teacher, deep MLP head), ``alone`` (the
student with CE on the same views); the head-width search: ``simreg-wide-head``, ``simreg-ce-wide-head``,
``mlp-shallow-wide-head``, ``resnet-only-wide-head`` and ``wide-only-wide-head`` (hidden widths 8d instead of 2d).

    python3 benchmarks/references/simreg.py simreg --seed 0 --epochs 10

Prints one JSON line per evaluation and a final one: variant, seed, epochs, ``metrics: {val_knn, val_linear_probe}``,
the curve and seconds.
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
ROOT = Path(__file__).resolve().parents[2]
DEBIAN = Path("/usr/share/datasets/fashion-mnist")
EMBEDDED = ROOT / "src" / "kdgraph" / "data" / "embedded" / "fashion_mnist_subset.npz"
WEIGHTS = {"resnet": ROOT / "src" / "kdgraph" / "models" / "weights" / "fmnist_resnet.safetensors",
           "wide": ROOT / "src" / "kdgraph" / "models" / "weights" / "fmnist_cnn_wide.safetensors"}
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
VARIANTS = {  # variant: (teachers, head, CE weight)
    "alone": ((), None, 1.0),
    "simreg": (("resnet", "wide"), "mlp-deep", 0.0),
    "simreg-ce": (("resnet", "wide"), "mlp-deep", 1.0),
    "mlp-shallow": (("resnet", "wide"), "mlp-shallow", 0.0),
    "linear": (("resnet", "wide"), "linear", 0.0),
    "resnet-only": (("resnet",), "mlp-deep", 0.0),
    "wide-only": (("wide",), "mlp-deep", 0.0),
    # the head-width search: the same heads with hidden widths 8d instead of 2d
    "simreg-wide-head": (("resnet", "wide"), "mlp-deep-8d", 0.0),
    "mlp-shallow-wide-head": (("resnet", "wide"), "mlp-shallow-8d", 0.0),
    "simreg-ce-wide-head": (("resnet", "wide"), "mlp-deep-8d", 1.0),
    "resnet-only-wide-head": (("resnet",), "mlp-deep-8d", 0.0),
    "wide-only-wide-head": (("wide",), "mlp-deep-8d", 0.0),
}


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
    """``(images float32 (N, 1, 28, 28) normalised, labels int64 (N,))`` from the idx files or the embedded subset."""
    if data == "embedded":
        arrays = np.load(EMBEDDED)
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
    else:
        images, labels = (read_idx(find(root, name)) for name in FILES[split])
    x = torch.from_numpy(images.copy()).float().div(255.0).unsqueeze(1)
    return (x - MEAN) / STD, torch.from_numpy(labels.astype(np.int64))


def crop_boxes(n: int, generator: torch.Generator, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3)):
    """Random-resized-crop boxes ``(top, left, height, width)`` as fractions of the image, and flip flags."""
    area = scale[0] + (scale[1] - scale[0]) * torch.rand(n, generator=generator, dtype=torch.float64)
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand(n, generator=generator,
                                                                                        dtype=torch.float64)
    width = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)
    height = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
    top = (1 - height) * torch.rand(n, generator=generator, dtype=torch.float64)
    left = (1 - width) * torch.rand(n, generator=generator, dtype=torch.float64)
    return torch.stack([top, left, height, width], dim=1), torch.rand(n, generator=generator) < 0.5


def interpolation_matrix(start: torch.Tensor, step: torch.Tensor, size: int, reverse: torch.Tensor) -> torch.Tensor:
    """``(B, size, size)`` linear-interpolation weights along one axis: output index ``i`` (``size - 1 - i`` where
    ``reverse``) reads the input at ``start + (i + 1/2) step - 1/2``, clamped to ``[0, size - 1]``."""
    i = torch.arange(size, dtype=torch.float64)
    i = torch.where(reverse[:, None], size - 1 - i, i)
    pos = (start[:, None] + (i + 0.5) * step[:, None] - 0.5).clamp(0, size - 1)
    low = pos.floor().long()
    high = (low + 1).clamp(max=size - 1)
    frac = pos - low
    weights = torch.zeros(len(pos), size, size, dtype=torch.float64)
    weights.scatter_add_(2, low[..., None], (1 - frac)[..., None])
    weights.scatter_add_(2, high[..., None], frac[..., None])
    return weights


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Each image's box resampled bilinearly to the image size (rows, then columns), mirrored where flipped."""
    _, _, h, w = x.shape
    top, left, height, width = boxes.double().unbind(1)
    rows = interpolation_matrix(top * h, height, h, torch.zeros_like(flips))
    cols = interpolation_matrix(left * w, width, w, flips)
    return rows.to(x.dtype)[:, None] @ x @ cols.to(x.dtype).transpose(1, 2)[:, None]


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
    """The zoo teacher's layout; ``embed(x)`` is the pooled last stage (the classifier's input)."""

    def __init__(self, widths=(16, 32, 64), num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages, cin = [], widths[0]
        for i, width in enumerate(widths):
            stages.append(nn.Sequential(BasicBlock(cin, width, 1 if i == 0 else 2), BasicBlock(width, width, 1)))
            cin = width
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(cin, num_classes)

    def embed(self, x):
        return self.layer3(self.layer2(self.layer1(self.stem(x)))).mean(dim=(2, 3))

    def forward(self, x):
        return self.fc(self.embed(x))


class CNN(nn.Module):
    """The zoo CNN's layout (conv-BN-ReLU blocks, 2x2 max-pool after all but the last, GAP, fc): the student with
    widths 16/32/32, the wide teacher with 48/96/96."""

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

    def embed(self, x):
        return self.block3(self.block2(self.block1(x))).mean(dim=(2, 3))

    def forward(self, x):
        return self.fc(self.embed(x))


def make_teachers(names, paths=WEIGHTS) -> dict[str, nn.Module]:
    from safetensors.torch import load_file

    teachers = {}
    for name in names:
        model = ResNet() if name == "resnet" else CNN((48, 96, 96))
        model.load_state_dict(load_file(str(paths[name])))
        teachers[name] = model.eval().requires_grad_(False)
    return teachers


def make_head(kind: str, d: int, out: int) -> nn.Module:
    """``linear``, ``mlp-shallow`` or ``mlp-deep``; a suffix ``-8d`` makes the hidden width 8d instead of 2d."""
    if kind == "linear":
        return nn.Linear(d, out)
    kind, h = (kind[:-3], 8 * d) if kind.endswith("-8d") else (kind, 2 * d)
    if kind == "mlp-shallow":
        return nn.Sequential(nn.Linear(d, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Linear(h, out))
    return nn.Sequential(nn.Linear(d, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Linear(h, d),
                         nn.Linear(d, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Linear(h, out))


def make_heads(variant: str, d: int = 32) -> nn.ModuleDict:
    teachers, kind, _ = VARIANTS[variant]
    return nn.ModuleDict({name: make_head(kind, d, 64 if name == "resnet" else 96) for name in teachers})


# -- one step ---------------------------------------------------------------------------------------------------------
def cosine_distance(p, z):
    """mean_b (2 - 2 cos(p_b, z_b))."""
    return (2 - 2 * (F.normalize(p, dim=1) * F.normalize(z, dim=1)).sum(dim=1)).mean()


def step_loss(variant: str, student, heads, teachers, x, y) -> dict[str, torch.Tensor]:
    z = student.embed(x)
    ce_weight = VARIANTS[variant][2]
    terms, total = {}, 0.0
    if ce_weight:
        terms["ce"] = F.cross_entropy(student.fc(z), y)
        total = ce_weight * terms["ce"]
    for name, head in heads.items():
        with torch.no_grad():
            target = teachers[name].embed(x)
        terms[name] = cosine_distance(head(z), target)
        total = total + terms[name]
    return dict(terms, total=total)


def cosine(steps: int):
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))


def make_optimizer(params, lr: float, steps: int):
    params = list(params)
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": 5e-4},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=0.9)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, cosine(steps))


def train_step(variant, student, heads, teachers, optimizer, scheduler, x, y) -> dict[str, float]:
    terms = step_loss(variant, student, heads, teachers, x, y)
    optimizer.zero_grad(set_to_none=True)
    terms["total"].backward()
    optimizer.step()
    scheduler.step()
    return {k: float(v.detach()) for k, v in terms.items()}


# -- evaluation -------------------------------------------------------------------------------------------------------
@torch.no_grad()
def embeddings(model, x, batch: int = 1000) -> torch.Tensor:
    model.eval()
    out = torch.cat([model.embed(x[i:i + batch]) for i in range(0, len(x), batch)]).float()
    model.train()
    return out


def knn_top1(bank, bank_y, queries, y, k: int = 20, chunk: int = 1000) -> float:
    """Majority label of the k most cosine-similar bank rows; ties to the label with the larger summed similarity."""
    bank = F.normalize(bank, dim=1)
    correct = 0
    for i in range(0, len(queries), chunk):
        sim, idx = (F.normalize(queries[i:i + chunk], dim=1) @ bank.T).topk(k, dim=1)
        labels = bank_y[idx]
        votes = torch.zeros(len(idx), 10).scatter_add_(1, labels, torch.ones_like(sim))
        sims = torch.zeros(len(idx), 10).scatter_add_(1, labels, sim)
        correct += int(((votes + 1e-3 * sims / k).argmax(1) == y[i:i + chunk]).sum())
    return correct / len(queries)


def linear_probe_top1(train_e, train_y, test_e, test_y, steps: int = 100, l2: float = 1e-4) -> float:
    """Logistic regression on standardised embeddings (train statistics), full-batch L-BFGS from zeros."""
    mean, std = train_e.mean(0), train_e.std(0).clamp_min(1e-6)
    xs, xt = (train_e - mean) / std, (test_e - mean) / std
    w = torch.zeros(xs.shape[1], 10, requires_grad=True)
    b = torch.zeros(10, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(xs @ w + b, train_y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float(((xt @ w + b).argmax(1) == test_y).float().mean())


def evaluate(student, x_train, y_train, x_test, y_test) -> dict[str, float]:
    bank, queries = embeddings(student, x_train), embeddings(student, x_test)
    return {"val_knn": knn_top1(bank, y_train, queries, y_test),
            "val_linear_probe": linear_probe_top1(bank, y_train, queries, y_test)}


def train(variant: str, seed: int, epochs: int, root: Path, batch: int = 128, lr: float = 0.05,
          eval_every: int = 2, data: str = "full") -> dict:
    torch.manual_seed(seed)
    x_train, y_train = load_split(root, "train", data)
    x_test, y_test = load_split(root, "test", data)
    student, heads = CNN(), make_heads(variant)
    teachers = make_teachers(VARIANTS[variant][0])
    for model in (student, *teachers.values()):  # channels-last convolutions: faster on CPUs, the same up to rounding
        model.to(memory_format=torch.channels_last)
    steps_per_epoch = len(y_train) // batch
    optimizer, scheduler = make_optimizer([*student.parameters(), *heads.parameters()], lr, epochs * steps_per_epoch)
    order_gen = torch.Generator().manual_seed(seed)
    aug_gen = torch.Generator().manual_seed(seed + 1)
    start, curve = time.perf_counter(), []
    for epoch in range(epochs):
        order = torch.randperm(len(y_train), generator=order_gen)
        for i in range(steps_per_epoch):
            idx = order[i * batch:(i + 1) * batch]
            boxes, flips = crop_boxes(batch, aug_gen)
            x = resized_crop(x_train[idx], boxes, flips).contiguous(memory_format=torch.channels_last)
            train_step(variant, student, heads, teachers, optimizer, scheduler, x, y_train[idx])
        if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
            curve.append(dict(epoch=epoch + 1, **evaluate(student, x_train, y_train, x_test, y_test)))
            print(json.dumps(curve[-1]), flush=True)
    return {"variant": variant, "seed": seed, "epochs": epochs,
            "metrics": {k: v for k, v in curve[-1].items() if k != "epoch"}, "curve": curve,
            "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--eval-every", type=int, default=2)
    parser.add_argument("--root", type=Path, default=DEBIAN)
    parser.add_argument("--data", choices=["full", "embedded"], default="full",
                        help="the idx files under --root, or the 12,000/2,000 subset kdgraph embeds (its .npz)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(train(args.variant, args.seed, args.epochs, args.root, eval_every=args.eval_every,
                           data=args.data)), flush=True)


if __name__ == "__main__":
    main()
