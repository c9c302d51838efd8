"""Independent reference for issue #20: InDistill (pruned teacher layers, a curriculum over layers) in plain PyTorch.

Imports nothing from kdgraph. Sarridis et al., "InDistill: Information flow-preserving knowledge distillation for
model compression", WACV 2025, written out as the paper describes it, at a scale two CPU cores afford:

- teacher: the zoo ResNet (3x3 stem, three stages of two BasicBlocks, 16/32/64 channels at 28/14/7 px), frozen;
- student: the zoo CNN (conv-BN-ReLU blocks of 16/32/32 channels, 2x2 max-pool after the first two, GAP, fc). Its
  layers are aligned with the teacher's: block 1's activation before pooling (16 x 28 x 28) with stage 1, block 2's
  (32 x 14 x 14) with stage 2, block 3 (32 x 7 x 7) with stage 3;
- pruning instead of projecting: each teacher stage keeps as many channels as the student layer has, those whose
  filters in the stage's last convolution (``layerK.1.conv2``) have the largest L1 norm; the selected teacher channels
  are compared with the student's directly (stage 3: 32 of 64; stages 1 and 2 keep all);
- feature terms: the mean squared difference of the two maps, each normalised per channel over the batch and the
  positions (BatchNorm without affine parameters, batch statistics, eps 1e-4: the raw maps' scales differ by an order
  of magnitude between the two networks);
- the curriculum (``indistill``): stage 1 for 1 epoch, stage 2 for 1, stage 3 for 2 (deeper layers are harder), then
  8 epochs of knowledge distillation: ``0.9 T^2 KL(p_t || p_s)`` at T = 4 plus PKT on the embeddings (Passalis &
  Tefas: cosine kernels ``(cos + 1) / 2``, row-normalised, ``mean(P_t log((P_t + eps) / (P_s + eps)))``, eps 1e-7);
  cross-entropy on the labels throughout;
- the ablations: ``all-at-once`` (the three pruned layers together for 4 epochs, then the same KD), ``fitnet`` (one
  layer, stage 3, through a 1x1 convolution to the teacher's 64 channels, for 4 epochs, then the same KD), ``kd``
  (the KD stage for all 12 epochs), ``alone`` (CE);
- data: the Fashion-MNIST idx files (``--data full``) or the class-balanced 12,000/2,000 subset kdgraph embeds
  (``--data embedded``, read from its .npz), mean 0.2860, std 0.3530, no augmentation; batch 128, the last partial batch
  dropped; SGD, lr 0.05, momentum 0.9, weight decay 5e-4 on weights only, one per-step cosine over the whole run;
- evaluation: test top-1, and retrieval mAP: every test embedding (the student's pooled last block) queries the
  train embeddings ranked by cosine similarity; AP = (1/R) sum_k rel_k precision@k over the ranked list (R relevant
  items: the same label), averaged over the queries.

    python3 benchmarks/references/indistill.py indistill --seed 0 --epochs 12 \\
        --teacher src/kdgraph/models/weights/fmnist_resnet.safetensors

Prints a JSON line per evaluation and a final one: variant, seed, epochs, ``metrics: {val_top1, val_map}``, the
curve and seconds.
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
# each variant: its stages, (epochs, active terms); "kd" = KL on the logits + PKT on the embeddings. Epochs of the
# last stage grow or shrink with --epochs.
STAGES = {
    "alone": [(12, set())],
    "kd": [(12, {"kd"})],
    "indistill": [(1, {"layer1"}), (1, {"layer2"}), (2, {"layer3"}), (8, {"kd"})],
    "all-at-once": [(4, {"layer1", "layer2", "layer3"}), (8, {"kd"})],
    "fitnet": [(4, {"fitnet"}), (8, {"kd"})],
    # the stage-length search (run with --epochs 16): twice the feature epochs, the same 8 of KD
    "indistill-long": [(2, {"layer1"}), (2, {"layer2"}), (4, {"layer3"}), (8, {"kd"})],
    "all-at-once-long": [(8, {"layer1", "layer2", "layer3"}), (8, {"kd"})],
}
VARIANTS = tuple(STAGES)


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
    """The zoo teacher's layout. ``forward(x, feats=True)``: logits and the three stages and the pooled embedding."""

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
        return (logits, {"layer1": f1, "layer2": f2, "layer3": f3, "embedding": h}) if feats else logits


class Student(nn.Module):
    """The zoo student's layout (blocks of conv, BN, ReLU, then 2x2 max-pool after the first two). ``forward(x,
    feats=True)``: logits and the activations aligned with the teacher's stages (blocks 1 and 2 before pooling)."""

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

    def forward(self, x, feats=False):
        a1 = self.block1[2](self.block1[1](self.block1[0](x)))
        a2 = self.block2[2](self.block2[1](self.block2[0](self.block1[3](a1))))
        f3 = self.block3(self.block2[3](a2))
        h = f3.mean(dim=(2, 3))
        logits = self.fc(h)
        return (logits, {"layer1": a1, "layer2": a2, "layer3": f3, "embedding": h}) if feats else logits


def kept_channels(conv: nn.Conv2d, keep: int) -> torch.Tensor:
    """The ``keep`` filters of ``conv`` with the largest L1 norm, in increasing order."""
    norms = conv.weight.detach().abs().sum(dim=(1, 2, 3))
    return norms.argsort(descending=True)[:keep].sort().values


def pruned_channels(teacher: Teacher, student_widths=(16, 32, 32)) -> dict[str, torch.Tensor]:
    """Per teacher stage, the channels its pruned copy keeps (the filters of the stage's last convolution)."""
    stages = {"layer1": teacher.layer1, "layer2": teacher.layer2, "layer3": teacher.layer3}
    return {name: kept_channels(stage[-1].conv2, width) for (name, stage), width in zip(stages.items(), student_widths)}


# -- losses -----------------------------------------------------------------------------------------------------------
def batch_norm(x):
    """Per channel, over the batch and the positions: (x - mean) / sqrt(biased var + 1e-4); no affine parameters."""
    return F.batch_norm(x, None, None, training=True, eps=1e-4)


def kd_kl(student_logits, teacher_logits, temperature: float = 4.0):
    log_ps = F.log_softmax(student_logits / temperature, dim=1)
    log_pt = F.log_softmax(teacher_logits / temperature, dim=1)
    return (log_pt.exp() * (log_pt - log_ps)).sum(dim=1).mean() * temperature ** 2


def pkt(s, t, eps: float = 1e-7):
    """Probabilistic knowledge transfer with cosine kernels, as in the published code."""
    def probabilities(f):
        f = f / (f.norm(dim=1, keepdim=True) + eps)
        k = (f @ f.T + 1) / 2
        return k / k.sum(dim=1, keepdim=True)

    ps, pt = probabilities(s), probabilities(t)
    return (pt * torch.log((pt + eps) / (ps + eps))).mean()


def step_loss(active: set, student, teacher, fitnet, kept, x, y) -> dict[str, torch.Tensor]:
    """CE, plus the active terms: pruned layer pairs, the FitNet pair, or KD (0.9 KL at T = 4 + PKT)."""
    logits, fs = student(x, feats=True)
    terms = {"ce": F.cross_entropy(logits, y)}
    total = terms["ce"]
    if not active:
        return dict(terms, total=total)
    with torch.no_grad():
        t_logits, ft = teacher(x, feats=True)
    for name in ("layer1", "layer2", "layer3"):
        if name in active:
            terms[name] = F.mse_loss(batch_norm(fs[name]), batch_norm(ft[name].index_select(1, kept[name])))
            total = total + terms[name]
    if "fitnet" in active:
        terms["fitnet"] = F.mse_loss(batch_norm(fitnet(fs["layer3"])), batch_norm(ft["layer3"]))
        total = total + terms["fitnet"]
    if "kd" in active:
        terms["logits"] = kd_kl(logits, t_logits)
        terms["pkt"] = pkt(fs["embedding"], ft["embedding"])
        total = total + 0.9 * terms["logits"] + terms["pkt"]
    return dict(terms, total=total)


# -- training ---------------------------------------------------------------------------------------------------------
def cosine(steps: int):
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))


def make_optimizer(params, lr: float, steps: int):
    params = list(params)
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": 5e-4},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=0.9)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, cosine(steps))


def train_step(active, student, teacher, fitnet, kept, optimizer, scheduler, x, y) -> dict[str, float]:
    terms = step_loss(active, student, teacher, fitnet, kept, x, y)
    optimizer.zero_grad(set_to_none=True)
    terms["total"].backward()
    optimizer.step()
    scheduler.step()
    return {k: float(v.detach()) for k, v in terms.items()}


def stages_for(variant: str, epochs: int) -> list[tuple[int, set]]:
    """The variant's stages, the last one lengthened or shortened so that they add up to ``epochs``."""
    stages = [(n, set(terms)) for n, terms in STAGES[variant]]
    stages[-1] = (epochs - sum(n for n, _ in stages[:-1]), stages[-1][1])
    if stages[-1][0] < 1:
        raise ValueError(f"{variant} needs more than {sum(n for n, _ in stages[:-1])} epochs")
    return stages


def active_at(stages: list[tuple[int, set]], epoch: int) -> set:
    for n, terms in stages:
        if epoch < n:
            return terms
        epoch -= n
    raise IndexError(epoch)


@torch.no_grad()
def embeddings_and_logits(model, x, batch: int = 1000):
    model.eval()
    parts = [model(x[i:i + batch], feats=True) for i in range(0, len(x), batch)]
    model.train()
    return torch.cat([f["embedding"] for _, f in parts]).float(), torch.cat([logits for logits, _ in parts])


def mean_average_precision(queries, labels, database, database_labels, chunk: int = 250) -> float:
    """Rank the database by cosine similarity to each query; AP = (1/R) sum_k rel_k precision@k over the ranked list
    (R relevant items: the query's label); the mean over the queries. (Ties between similarities, which real-valued
    embeddings do not produce, would be ranked in database order here.)"""
    queries, database = F.normalize(queries, dim=1), F.normalize(database, dim=1)
    ranks = torch.arange(1, len(database) + 1, dtype=torch.float64)
    aps = []
    for i in range(0, len(queries), chunk):
        order = (queries[i:i + chunk] @ database.T).sort(dim=1, descending=True, stable=True).indices
        relevant = (database_labels[order] == labels[i:i + chunk, None]).double()
        precision = relevant.cumsum(dim=1) / ranks
        aps.append((precision * relevant).sum(dim=1) / relevant.sum(dim=1).clamp_min(1))
    return float(torch.cat(aps).mean())


def evaluate(student, x_train, y_train, x_test, y_test, with_map: bool = True) -> dict[str, float]:
    test_e, logits = embeddings_and_logits(student, x_test)
    row = {"val_top1": float((logits.argmax(1) == y_test).float().mean())}
    if with_map:
        train_e, _ = embeddings_and_logits(student, x_train)
        row["val_map"] = mean_average_precision(test_e, y_test, train_e, y_train)
    return row


def train(variant: str, seed: int, epochs: int, root: Path, teacher_path: Path | None, batch: int = 128,
          lr: float = 0.05, eval_every: int = 4, data: str = "full") -> dict:
    torch.manual_seed(seed)
    x_train, y_train = load_split(root, "train", data)
    x_test, y_test = load_split(root, "test", data)
    student = Student()
    teacher, kept, fitnet = None, {}, nn.Identity()
    if variant != "alone":
        from safetensors.torch import load_file

        teacher = Teacher()
        teacher.load_state_dict(load_file(str(teacher_path)))
        teacher.eval().requires_grad_(False)
        kept = pruned_channels(teacher)
    if variant == "fitnet":
        fitnet = nn.Conv2d(32, 64, 1, bias=False)
    stages = stages_for(variant, epochs)
    steps_per_epoch = len(y_train) // batch
    optimizer, scheduler = make_optimizer([*student.parameters(), *fitnet.parameters()], lr, epochs * steps_per_epoch)
    order_gen = torch.Generator().manual_seed(seed)
    start, curve = time.perf_counter(), []
    for epoch in range(epochs):
        active = active_at(stages, epoch)
        order = torch.randperm(len(y_train), generator=order_gen)
        for i in range(steps_per_epoch):
            idx = order[i * batch:(i + 1) * batch]
            train_step(active, student, teacher, fitnet, kept, optimizer, scheduler, x_train[idx], y_train[idx])
        if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
            curve.append(dict(epoch=epoch + 1, **evaluate(student, x_train, y_train, x_test, y_test)))
            print(json.dumps(curve[-1]), flush=True)
    return {"variant": variant, "seed": seed, "epochs": epochs,
            "metrics": {k: v for k, v in curve[-1].items() if k != "epoch"}, "curve": curve,
            "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--eval-every", type=int, default=4)
    parser.add_argument("--root", type=Path, default=DEBIAN)
    parser.add_argument("--data", choices=["full", "embedded"], default="full",
                        help="the idx files under --root, or the 12,000/2,000 subset kdgraph embeds (its .npz)")
    parser.add_argument("--teacher", type=Path, default=None, help="the teacher's safetensors")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.variant != "alone" and args.teacher is None:
        parser.error(f"{args.variant} needs --teacher")
    if args.threads:
        torch.set_num_threads(args.threads)
    row = train(args.variant, args.seed, args.epochs, args.root, args.teacher, eval_every=args.eval_every,
                data=args.data)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
