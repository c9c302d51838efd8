"""Step overhead: kdgraph's training step vs. a hand-written PyTorch step, same models, same losses.

Quickstart pair (teacher ``kdgraph:fmnist_resnet``, student ``kdgraph:fmnist_cnn``, ``specs/quickstart.yaml``):

(A) kdgraph: ``load_spec`` -> ``resolve_plan`` -> the ``Trainer`` (built as ``train()`` builds it, no run
    dir, quiet reporter); the timed call is ``loop.step(x, y)``.
(B) hand-written: fresh copies of the same models and adapter (identical weights), teacher stem->layer1..3->fc under
    ``torch.no_grad()`` in eval mode, student block1..3->pool->fc, ``CE + 0.9 * KL(T=4, T^2, batch mean) +
    1.0 * MSE(proj1x1(block3), layer3)``, SGD (same lr/momentum, weight decay on >1-D params only), LambdaLR cosine.

Both run one full step (forward, backward, optimizer step, scheduler step) on one fixed batch that is already on
the device, in the memory format the trainer uses. The variants are interleaved step by step (A B T, B T A, ...;
T = the hand-written teacher forward alone) so that load from other processes hits all of them alike; each trial
takes the median of its per-step times (one stalled step must not decide a trial), and the table reports every
trial plus the median and the min/max over trials, then the median of all per-round paired A/B ratios.

    python3 benchmarks/step_overhead.py                   # batch 128, 7 trials x 20 steps
    python3 benchmarks/step_overhead.py --channels-last off --threads 2
    python3 benchmarks/step_overhead.py --hand-fold-bn     # (B) also folds the teacher's BatchNorms
    python3 benchmarks/step_overhead.py --profile          # also: where kdgraph's extra time goes
    python3 benchmarks/step_overhead.py --teacher-cache    # (A) as from the second epoch on with teacher.cache: auto

On a machine where other processes keep the cores busy, ``--threads 1`` gives far steadier numbers: with more
torch threads than free cores every parallel op waits for a descheduled thread (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kdgraph.models import build_model  # noqa: E402
from kdgraph.models.weights import BUILTIN_DIR  # noqa: E402
from kdgraph.spec import load_spec  # noqa: E402
from kdgraph.train import Trainer  # noqa: E402
from kdgraph.train.optim import lr_factor  # noqa: E402
from kdgraph.plan import has_conv, resolve_plan  # noqa: E402
from kdgraph.runtime import resolve_runtime, seed_everything  # noqa: E402

SPEC = ROOT / "specs" / "quickstart.yaml"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def revision() -> str:
    """The kdgraph commit measured, with ``+dirty`` when src/kdgraph/ has uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "src/kdgraph"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def fold_teacher_bn(teacher: nn.Module) -> int:
    """Fold every BatchNorm2d into the Conv2d before it, by hand, for the zoo ResNet (stem, BasicBlocks, shortcuts)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    from kdgraph.models.zoo import BasicBlock

    folded = 0
    for m in teacher.modules():
        if isinstance(m, BasicBlock):
            for conv, bn in (("conv1", "bn1"), ("conv2", "bn2")):
                setattr(m, conv, fuse_conv_bn_eval(getattr(m, conv), getattr(m, bn)))
                setattr(m, bn, nn.Identity())
                folded += 1
        elif isinstance(m, nn.Sequential):
            for i in range(len(m) - 1):
                if isinstance(m[i], nn.Conv2d) and isinstance(m[i + 1], nn.BatchNorm2d):
                    m[i], m[i + 1] = fuse_conv_bn_eval(m[i], m[i + 1]), nn.Identity()
                    folded += 1
    return folded


class HandStep:
    """The hand-written step: what a careful PyTorch user would write for this spec."""

    def __init__(self, student: nn.Module, teacher: nn.Module, proj: nn.Module, spec, steps_per_epoch: int,
                 device: torch.device, channels_last: bool, fold_bn: bool = False):
        self.t = teacher.eval().requires_grad_(False)
        self.folded = fold_teacher_bn(self.t) if fold_bn else 0
        self.s, self.t, self.proj = student.to(device), self.t.to(device), proj.to(device)
        if channels_last:
            for m in (self.s, self.t, self.proj):
                m.to(memory_format=torch.channels_last)
        self.t.eval().requires_grad_(False)
        self.s.train()
        self.proj.train()
        self.ce_w = spec.train.ce_weight
        self.kd_w = spec.distill.logits.weight
        self.temp = spec.distill.logits.temperature
        self.mse_w = spec.distill.pairs[0].weight
        o = spec.train.optimizer
        params = list(self.s.parameters()) + list(self.proj.parameters())
        self.opt = torch.optim.SGD([{"params": [p for p in params if p.ndim > 1], "weight_decay": o.weight_decay},
                                    {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}],
                                   lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)
        total = steps_per_epoch * spec.train.epochs
        assert spec.train.schedule.name == "cosine" and spec.train.schedule.warmup_epochs == 0
        floor = spec.train.schedule.min_lr / o.lr
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda k: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, k / max(1, total)))))
        # sanity: the same schedule as kdgraph's
        for k in (0, 1, total // 3, total, total + 5):
            ref = lr_factor(spec.train.schedule, k, steps_per_epoch, spec.train.epochs, o.lr)
            assert abs(self.sched.lr_lambdas[0](k) - ref) < 1e-12

    @torch.no_grad()
    def teacher_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.t
        h = t.layer3(t.layer2(t.layer1(t.stem(x))))
        return h, t.fc(torch.flatten(t.pool(h), 1))

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t3, t_logits = self.teacher_forward(x)
        s = self.s
        s3 = s.block3(s.block2(s.block1(x)))
        logits = s.fc(torch.flatten(s.pool(s3), 1))
        temp = self.temp
        ce = F.cross_entropy(logits, y)
        kd = F.kl_div(F.log_softmax(logits / temp, 1), F.log_softmax(t_logits / temp, 1),
                      reduction="batchmean", log_target=True) * (temp * temp)
        mse = F.mse_loss(self.proj(s3), t3)
        return self.ce_w * ce + self.kd_w * kd + self.mse_w * mse

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = self.loss(x, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        return loss.detach()


def build(args):
    spec = load_spec(SPEC)
    teacher = None
    if not (BUILTIN_DIR / "fmnist_resnet.safetensors").is_file():
        spec.teacher.weights = None  # == --set teacher.weights=null: random teacher, same cost
    spec.runtime.channels_last = args.channels_last
    if args.threads:
        spec.runtime.threads = args.threads
    spec.data.batch_size = args.batch_size

    # (A) exactly as kdgraph.train.loop.train() builds it, minus the run dir.
    seed_everything(spec.runtime.seed)
    if spec.teacher.weights is None:
        # Random weights leave every BatchNorm the identity (mean 0, var 1, gamma 1, beta 0), which would make the
        # loss check blind to BatchNorm handling (kdgraph folds the teacher's BNs); give them non-trivial stats.
        teacher = build_model(spec.teacher.model, spec.teacher.kwargs, None)
        g = torch.Generator().manual_seed(1)
        for m in teacher.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=g))
                m.weight.data.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.data.copy_(0.2 * torch.randn(c, generator=g))
        seed_everything(spec.runtime.seed)
    resolved = resolve_plan(spec, teacher=teacher)  # a live teacher: the same path as kdgraph.distill(teacher=...)
    student, teacher, plan = resolved.student, resolved.teacher, resolved
    # (B) fresh copies, taken before anything is moved, converted or stepped: identical weights.
    b_student, b_teacher = copy.deepcopy(student), copy.deepcopy(teacher)
    key = plan.graph.terms[-1].adapter  # the one pair's adapters
    b_proj = copy.deepcopy(plan.graph.student_adapters[key])
    assert len(plan.graph.teacher_adapters[key]) == 0, "teacher adapter expected to be the identity"
    rt = resolve_runtime(spec.runtime, conv_net=has_conv(student, teacher))
    loop = Trainer(resolved, runtime=rt)
    loop.graph.train()  # as loop.epoch() does
    hand = HandStep(b_student, b_teacher, b_proj, spec, loop.steps, rt.device, rt.channels_last, args.hand_fold_bn)

    # One fixed batch from the real training set, on the device, in the trainer's memory format.
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(len(resolved.data.train), (args.batch_size,), generator=g).tolist()
    xs, ys = zip(*(resolved.data.train[i] for i in idx))
    x = torch.stack(xs).to(rt.device)
    y = torch.as_tensor(ys).to(rt.device)
    if rt.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return spec, rt, loop, hand, x, y


def check_same_loss(loop, hand, x, y) -> tuple[float, float]:
    """Total loss of both variants on the same batch from the same (initial) weights."""
    a = float(loop.step(x, y)["total"])
    b = float(hand.step(x, y))
    rel = abs(a - b) / max(abs(b), 1e-12)
    print(f"loss check (same batch, same initial weights): kdgraph {a:.7f}  hand-written {b:.7f}  "
          f"rel diff {rel:.2e}")
    assert rel <= 1e-4, f"losses differ: {a} vs {b}"
    return a, b


def timed(fn, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return time.perf_counter() - start


def profile(loop, hand, x, y, steps: int) -> None:
    """Where the two steps differ: per-step aten op counts, then interleaved micro-timings of the differing pieces."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    from kdgraph.losses import cross_entropy, kl_div, mse

    counts = {}
    for name, fn in (("A", lambda: loop.step(x, y)), ("B", lambda: hand.step(x, y))):
        with tprofile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                fn()
        counts[name] = {e.key: (e.count / 3, e.self_cpu_time_total / 3e3) for e in prof.key_averages()
                        if e.key.startswith("aten::")}
    print("\naten ops whose per-step call count differs (self CPU ms per step is load-sensitive)")
    print(f"  {'op':36s} {'calls A':>8} {'calls B':>8} {'ms A':>8} {'ms B':>8}")
    for key in sorted(set(counts["A"]) | set(counts["B"])):
        (ca, ta), (cb, tb) = counts["A"].get(key, (0, 0.0)), counts["B"].get(key, (0, 0.0))
        if ca != cb:
            print(f"  {key:36s} {ca:8.0f} {cb:8.0f} {ta:8.2f} {tb:8.2f}")

    g, fmt = loop.graph, torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else None
    bsz = x.shape[0]
    pair = g.terms[-1].adapter  # the one pair's adapters

    def feat(c: int, grad: bool) -> torch.Tensor:
        t = torch.randn(bsz, c, 7, 7, device=x.device)
        t = t.contiguous(memory_format=fmt) if fmt is not None else t
        return t.requires_grad_(grad)

    s_feat, t_feat = feat(64, True), feat(64, False)
    logits = torch.randn(bsz, 10, device=x.device, requires_grad=True)
    t_logits = torch.randn(bsz, 10, device=x.device)

    def fwd_bwd(fn):
        return lambda: fn().backward()

    pairs = {
        "MSE pair loss, fwd+bwd (B,64,7,7)": (
            fwd_bwd(lambda: mse(s_feat.float(), g.teacher_adapters[pair](t_feat.detach()).float())),
            fwd_bwd(lambda: F.mse_loss(s_feat, t_feat))),
        "KL T=4 logits loss, fwd+bwd": (
            fwd_bwd(lambda: kl_div(logits, t_logits.detach(), temperature=4.0)),
            fwd_bwd(lambda: F.kl_div(F.log_softmax(logits / 4, 1), F.log_softmax(t_logits / 4, 1),
                                     reduction="batchmean", log_target=True) * 16.0)),
        "CE loss, fwd+bwd": (fwd_bwd(lambda: cross_entropy(logits, y)), fwd_bwd(lambda: F.cross_entropy(logits, y))),
        "correct = (argmax(1) == y).sum()": (lambda: (logits.detach().argmax(1) == y).sum(), lambda: None),
        "teacher forward (no grad)": (lambda: g.teacher_features(x), lambda: hand.teacher_forward(x)),
        "student forward (no grad)": (
            lambda: _no_grad(g.student, x),
            lambda: _no_grad(lambda v: hand.s.fc(torch.flatten(hand.s.pool(
                hand.s.block3(hand.s.block2(hand.s.block1(v)))), 1)), x)),
    }
    print("\nmicro-timings, kdgraph piece vs hand-written piece, interleaved, median per call (ms)")
    print(f"  {'piece':40s} {'kdgraph':>9} {'hand':>9} {'extra':>9}")
    for name, (fa, fb) in pairs.items():
        heavy = "forward" in name
        reps, inner = (max(5, steps // 2), 1) if heavy else (max(15, steps), 50)
        fa(), fb()
        ta, tb = [], []
        for _ in range(reps):
            for fn, out in ((fa, ta), (fb, tb)):
                start = time.perf_counter()
                for _ in range(inner):
                    fn()
                out.append((time.perf_counter() - start) / inner * 1e3)
        ma, mb = statistics.median(ta), statistics.median(tb)
        print(f"  {name:40s} {ma:9.3f} {mb:9.3f} {ma - mb:+9.3f}")


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def _no_grad(fn, v):
    with torch.no_grad():
        return fn(v)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="steps per trial and variant")
    p.add_argument("--trials", type=int, default=7)
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per variant first")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                   help="runtime.channels_last of the spec; both variants use the resolved choice")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--hand-fold-bn", action="store_true",
                   help="fold the teacher's BatchNorms into its convs in (B) too, as kdgraph's frozen teacher does")
    p.add_argument("--profile", action="store_true", help="also time the pieces where the two steps differ")
    p.add_argument("--teacher-cache", action="store_true",
                   help="(A) reads the teacher's outputs from kdgraph's exact cache (teacher.cache: auto without "
                   "augmentation) as the trainer does from the second pass on, lookup included")
    args = p.parse_args(argv)

    spec, rt, loop, hand, x, y = build(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {os.cpu_count()} logical CPUs ({cpu_model()}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {rt.device}, load average {_loadavg()}")
    print(f"kdgraph {revision()}: teacher BatchNorms folded by kdgraph: {getattr(loop.graph.teacher, 'folded', 0)}, "
          f"by the hand-written step: {hand.folded}")
    print(f"pair: {spec.teacher.model} (weights: {spec.teacher.weights or 'random'}) -> {spec.student.model}; "
          f"batch {args.batch_size}x{tuple(x.shape[1:])}, channels_last {rt.channels_last}, {rt.precision}")
    check_same_loss(loop, hand, x, y)

    run_a = lambda: loop.step(x, y)  # noqa: E731
    if args.teacher_cache:
        from torch.utils.data import TensorDataset

        from kdgraph.train.teacher_cache import TeacherCache

        # the cache over this batch's images, in the training set's order (the trainer caches the whole set)
        cache = TeacherCache(spec, loop.graph.teachers, TensorDataset(x.cpu(), y.cpu()), rt.device, rt.channels_last)
        index = torch.arange(len(x))
        run_a = lambda: loop.step(x, y, cached=cache.lookup(index, rt.device))  # noqa: E731
        print("(A) uses the teacher cache: one index_select per tap and step instead of the teacher's forward")
    run_b = lambda: hand.step(x, y)  # noqa: E731
    run_t = lambda: hand.teacher_forward(x)  # noqa: E731
    for _ in range(args.warmup):
        run_a(), run_b(), run_t()

    rows = []
    n = args.steps
    sync = torch.cuda.synchronize if rt.device.type == "cuda" else (lambda: None)
    variants = [("A", run_a), ("B", run_b), ("T", run_t)]
    paired = []  # A/B step-time ratio of every round
    for trial in range(args.trials):
        t: dict[str, list[float]] = {"A": [], "B": [], "T": []}
        for i in range(n):
            # Step-level interleaving, order rotated every round: load spikes from other processes hit all three.
            k = (trial * n + i) % 3
            order = variants[k:] + variants[:k]
            if (trial * n + i) % 2:
                order = order[::-1]
            for key, fn in order:
                sync()
                start = time.perf_counter()
                fn()
                sync()
                t[key].append(time.perf_counter() - start)
            paired.append(t["A"][-1] / t["B"][-1])
        # Medians, not sums: one step stalled by another process (seconds, under heavy load) must not decide a trial.
        a, b, tt = (statistics.median(t[k]) for k in ("A", "B", "T"))
        rows.append((args.batch_size / a, args.batch_size / b, a / b, tt / b))
        print(f"  trial {trial + 1}/{args.trials} done", file=sys.stderr, flush=True)

    def stat(col: int) -> tuple[float, float, float]:
        vals = [r[col] for r in rows]
        return statistics.median(vals), min(vals), max(vals)

    print(f"\n{args.trials} trials x {n} steps per variant, interleaved step by step (A, B, teacher-forward T; "
          f"order rotated), after {args.warmup} warm-up steps each; img/s from each trial's median step time")
    print(f"{'trial':>6} {'A kdgraph img/s':>16} {'B hand img/s':>13} {'time A/B':>9} {'teacher fwd / B':>16}")
    for i, r in enumerate(rows):
        print(f"{i + 1:>6} {r[0]:16.0f} {r[1]:13.0f} {r[2]:9.3f} {r[3]:16.1%}")
    (ma, la, ha), (mb, lb, hb), (mr, lr_, hr), (mt, lt, ht) = stat(0), stat(1), stat(2), stat(3)
    print(f"{'median':>6} {ma:16.0f} {mb:13.0f} {mr:9.3f} {mt:16.1%}")
    print(f"{'min':>6} {la:16.0f} {lb:13.0f} {lr_:9.3f} {lt:16.1%}")
    print(f"{'max':>6} {ha:16.0f} {hb:13.0f} {hr:9.3f} {ht:16.1%}")
    print(f"\ntime ratio kdgraph / hand-written (<= 1.0: kdgraph is as fast): median {mr:.3f} "
          f"[min {lr_:.3f}, max {hr:.3f}] over trials; teacher forward is {mt:.0%} of the hand-written step")
    q = statistics.quantiles(paired, n=4)
    print(f"per-round paired ratio A/B over {len(paired)} rounds: median {statistics.median(paired):.3f}, "
          f"quartiles [{q[0]:.3f}, {q[2]:.3f}]")
    print(f"load average after: {_loadavg()}")
    if args.profile:
        profile(loop, hand, x, y, n)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
