"""GPU step throughput: the hand-written distillation steps of issue #3 side by side with kdgraph's trainer step.

Pairs (timm, random init): ``resnet34-resnet18`` (tap ``layer3`` on both, 256 channels each: no projector) and
``vit_small-vit_tiny`` (tap ``blocks.8`` tokens on both, 9 of 12 blocks like layer3 is 3 of 4 stages; a linear
projector 192 -> 384). Loss = 0.5 CE + 0.5 T^2 KL(T=4) + 1.0 MSE(proj(student tap), teacher tap). SGD lr 0.1,
momentum 0.9, weight decay 5e-5 on >1-D parameters. bf16 autocast on CUDA, fp32 on CPU. One synthetic batch,
already on the device. Variants:

  eager-hooks               forward hooks, eager
  compile-hooks             forward hooks, torch.compile of the loss function (default mode)
  fx-fullgraph              timm fx feature extractor, torch.compile(fullgraph=True)
  fx-reduce-overhead        fx features, torch.compile(mode="reduce-overhead")        (CUDA only: CUDA graphs)
  fx-reduce-overhead-fused  the same + SGD(fused=True)                                 (CUDA only)
  kdgraph                   kdgraph's own trainer step: resolve_plan -> Trainer.step, runtime auto

Every variant starts from the same weights: kdgraph's plan is resolved first and the hand-written variants copy
its student, teacher and projector (before the trainer touches them). The first step is timed alone (it includes
compilation); then --warmup untimed steps; then --steps timed steps between two synchronisations. CUDA peak
memory is reset before each variant is moved to the device, and every variant is freed before the next.

    python3 benchmarks/gpu_step.py --pairs resnet34-resnet18,vit_small-vit_tiny --batch 128 256 --out gpu.md
    python3 benchmarks/gpu_step.py --device cpu --image-size 64 --batch 8 --steps 3 --warmup 1 \\
        --variants eager-hooks,kdgraph --profile /tmp       # a smoke run on CPU, with profiles
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kdgraph.spec import spec_from_dict  # noqa: E402
from kdgraph.train.bench import BenchRow, measure  # noqa: E402
from kdgraph.train import Trainer  # noqa: E402
from kdgraph.plan import resolve_plan  # noqa: E402
from kdgraph.runtime import seed_everything  # noqa: E402

PAIRS = {
    "resnet34-resnet18": ("resnet34", "resnet18", "layer3", "fc"),
    "vit_small-vit_tiny": ("vit_small_patch16_224", "vit_tiny_patch16_224", "blocks.8", "head"),
}
VARIANTS = ("eager-hooks", "compile-hooks", "fx-fullgraph", "fx-reduce-overhead", "fx-reduce-overhead-fused",
            "kdgraph")
CUDA_ONLY = {"fx-reduce-overhead": "CUDA graphs", "fx-reduce-overhead-fused": "CUDA graphs"}
ISSUE = {  # hand-written images/s quoted in issue #3 (H100, bf16, batch 128 unless noted)
    "resnet34-resnet18": {"eager-hooks": 6438, "compile-hooks": 6897, "fx-fullgraph": 6080,
                          "fx-reduce-overhead": 9462, "fx-reduce-overhead-fused": 9798},
    "vit_small-vit_tiny": {"eager-hooks": 3283, "compile-hooks": 4686, "fx-fullgraph": 3801,
                           "fx-reduce-overhead": 8309, "fx-reduce-overhead-fused": 8445},
}
TEMP, W_CE, W_KD, W_FEAT, LR, MOMENTUM, WD = 4.0, 0.5, 0.5, 1.0, 0.1, 0.9, 5e-5


def make_spec(pair: str, device: str, image_size: int, batch: int):
    teacher, student, tap, _ = PAIRS[pair]
    kwargs = {"img_size": image_size} if teacher.startswith("vit") else {}
    return spec_from_dict({
        "name": f"gpu-step-{pair}",
        "teacher": {"model": f"timm:{teacher}", "kwargs": kwargs},
        "student": {"model": f"timm:{student}", "kwargs": kwargs},
        "data": {"dataset": "synthetic", "image_size": image_size, "batch_size": batch,
                 "synthetic": {"channels": 3, "classes": 1000, "train_size": batch}},
        "distill": {"logits": {"loss": "kl", "temperature": TEMP, "weight": W_KD},
                    "pairs": [{"teacher": tap, "student": tap, "loss": "mse", "weight": W_FEAT}]},
        "train": {"epochs": 1, "ce_weight": W_CE, "schedule": {"name": "constant"},
                  "optimizer": {"name": "sgd", "lr": LR, "momentum": MOMENTUM, "weight_decay": WD}},
        "runtime": {"device": device, "seed": 0},
    })


class HandKD(nn.Module):
    """The hand-written loss: teacher under no_grad, student, projector; features by hooks or by fx graphs."""

    def __init__(self, student: nn.Module, teacher: nn.Module, proj: nn.Module, tap: str, head: str, fx: bool):
        super().__init__()
        self.proj, self.fx = proj, fx
        teacher.eval().requires_grad_(False)
        if fx:
            from timm.models import create_feature_extractor

            nodes = {tap: "feat", head: "logits"}
            self.student = create_feature_extractor(student, return_nodes=nodes)
            self.teacher = create_feature_extractor(teacher, return_nodes=nodes).eval()
        else:
            self.student, self.teacher, self.feats = student, teacher, {}
            student.get_submodule(tap).register_forward_hook(lambda m, a, out: self.feats.__setitem__("s", out))
            teacher.get_submodule(tap).register_forward_hook(lambda m, a, out: self.feats.__setitem__("t", out))

    def train(self, mode: bool = True) -> "HandKD":
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_out = self.teacher(x)
        s_out = self.student(x)
        if self.fx:
            t_feat, t_logits, s_feat, logits = t_out["feat"], t_out["logits"], s_out["feat"], s_out["logits"]
        else:
            t_feat, t_logits, s_feat, logits = self.feats["t"], t_out, self.feats["s"], s_out
        ce = F.cross_entropy(logits, y)
        kd = F.kl_div(F.log_softmax(logits.float() / TEMP, 1), F.log_softmax(t_logits.float() / TEMP, 1),
                      reduction="batchmean", log_target=True) * (TEMP * TEMP)
        feat = F.mse_loss(self.proj(s_feat).float(), t_feat.float())
        return W_CE * ce + W_KD * kd + W_FEAT * feat


def hand_step(variant: str, templates: tuple[nn.Module, nn.Module, nn.Module], pair: str, device: torch.device,
              channels_last: bool, x: torch.Tensor, y: torch.Tensor) -> Callable[[], torch.Tensor]:
    """Build one hand-written variant on ``device`` from copies of the templates; returns its step function."""
    student, teacher, proj = (copy.deepcopy(m) for m in templates)
    _, _, tap, head = PAIRS[pair]
    fmt = {"memory_format": torch.channels_last} if channels_last else {}
    kd = HandKD(student, teacher, proj, tap, head, fx=variant.startswith("fx")).to(device, **fmt).train()
    params = [p for p in kd.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": WD},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    opt = torch.optim.SGD(groups, lr=LR, momentum=MOMENTUM, **({"fused": True} if variant.endswith("fused") else {}))
    loss_fn: Callable = kd
    if variant == "compile-hooks":
        loss_fn = torch.compile(kd)
    elif variant == "fx-fullgraph":
        loss_fn = torch.compile(kd, fullgraph=True)
    elif variant.startswith("fx-reduce-overhead"):
        loss_fn = torch.compile(kd, mode="reduce-overhead")
    autocast = device.type == "cuda"
    graphs = variant.startswith("fx-reduce-overhead")

    def step() -> torch.Tensor:
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach().clone()

    return step


def profile(step: Callable[[], object], device: torch.device, path: Path, steps: int = 5) -> None:
    """Where one variant's time goes: ``steps`` warm steps under torch.profiler, the top kernels by device time."""
    from torch.profiler import ProfilerActivity

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    averages = prof.key_averages()
    for key in ("self_device_time_total", "self_cuda_time_total", "self_cpu_time_total"):
        try:
            text = averages.table(sort_by=key, row_limit=40)
            break
        except (AttributeError, KeyError, RuntimeError):
            continue
    path.write_text(f"{steps} steps, sorted by {key}\n{text}\n")


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_pair(pair: str, batch: int, args, variants: list[str]) -> list[tuple[str, Optional[BenchRow], str]]:
    """Every requested variant for one pair and batch size: (variant, row, note), row None when skipped."""
    device = torch.device(args.device)
    seed_everything(0)
    resolved = resolve_plan(make_spec(pair, args.device, args.image_size, batch))
    rt = resolved.runtime
    adapter = resolved.graph.student_adapters[resolved.pairs[0].key]
    proj = copy.deepcopy(adapter[0]) if len(adapter) else nn.Identity()
    templates = (copy.deepcopy(resolved.student), copy.deepcopy(resolved.teacher), proj)
    g = torch.Generator().manual_seed(0)
    x = torch.randn((batch, 3, args.image_size, args.image_size), generator=g).to(device)
    y = torch.randint(1000, (batch,), generator=g).to(device)
    if rt.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = []
    for variant in variants:
        if variant in CUDA_ONLY and device.type != "cuda":
            out.append((variant, None, f"skipped on {device.type}: needs CUDA ({CUDA_ONLY[variant]})"))
            continue
        torch._dynamo.reset()  # drops compiled code (and CUDA graph pools) holding the previous variant
        free(device)
        if variant == "kdgraph":
            loop = Trainer(resolved, runtime=rt)
            loop.graph.train()
            row = measure("kdgraph", lambda: loop.step(x, y), device, batch, args.steps, args.warmup,
                          loss_of=lambda v: float(v["total"]))
            if args.profile:
                profile(lambda: loop.step(x, y), device, Path(args.profile) / f"profile-{pair}-{batch}-kdgraph.txt")
            mode = f"compile {rt.compile_mode}" if rt.compile_mode else "eager"
            if rt.compile_mode and loop.compiled is None:
                mode += " FAILED: ran eagerly"
            note = f"{rt.precision}, {mode}, fused SGD: {bool(loop.optimizer.defaults.get('fused'))}, " \
                   f"teacher BNs folded: {getattr(loop.graph.teacher, 'folded', 0)}"
            del loop
        else:
            step = hand_step(variant, templates, pair, device, rt.channels_last, x, y)
            row = measure(variant, step, device, batch, args.steps, args.warmup)
            if args.profile:
                profile(step, device, Path(args.profile) / f"profile-{pair}-{batch}-{variant}.txt")
            note = ""
            del step
        out.append((variant, row, note))
        print(f"  {pair} batch {batch} {variant}: {row.images_per_s:.0f} img/s, first step {row.first_step_s:.1f} s"
              + (f", peak {row.peak_mib:.0f} MiB" if row.peak_mib is not None else "")
              + f", loss {row.first_loss:.4f}", file=sys.stderr, flush=True)
    return out


def table(results: dict, args) -> str:
    lines = ["| pair | batch | variant | images/s | step ms | first step (compile) s | peak MiB | "
             "issue #3 hand-written img/s | loss at step 1 | note |", "|" + " --- |" * 10]
    for (pair, batch), rows in results.items():
        done = [r for _, r, _ in rows if r is not None]
        best = max((r for r in done if r.variant != "kdgraph"), key=lambda r: r.images_per_s, default=None)
        for _, row, note in rows:
            if row is None:
                continue
            quoted = ISSUE.get(pair, {}).get(row.variant, "") if batch == 128 else ""
            peak = f"{row.peak_mib:.0f}" if row.peak_mib is not None else "n/a"
            lines.append(f"| {pair} | {batch} | {row.variant} | {row.images_per_s:.0f} | {row.step_ms:.2f} | "
                         f"{row.first_step_s:.1f} | {peak} | {quoted} | {row.first_loss:.4f} | {note} |")
        for variant, row, note in rows:
            if row is None:
                lines.append(f"| {pair} | {batch} | {variant} | — | — | — | — | | | {note} |")
        kd = next((r for r in done if r.variant == "kdgraph"), None)
        if kd is not None and best is not None:
            mem = f", peak memory {kd.peak_mib / best.peak_mib:.3f}x" if kd.peak_mib and best.peak_mib else ""
            lines.append(f"| {pair} | {batch} | **kdgraph / best hand-written ({best.variant})** | "
                         f"**{kd.images_per_s / best.images_per_s:.3f}x** | | | | | | images/s ratio{mem} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--pairs", default=",".join(PAIRS), help=f"comma-separated, from {', '.join(PAIRS)}")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--batch", type=int, nargs="+", default=[128, 256])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default=None, metavar="FILE", help="also write the markdown table to FILE")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="after timing, profile 5 steps of each variant: top kernels to DIR/profile-*.txt")
    args = p.parse_args(argv)
    pairs, variants = args.pairs.split(","), args.variants.split(",")
    variants = sorted(variants, key=lambda v: v == "kdgraph")  # kdgraph last: its plan keeps its models alive
    for name, given, valid in (("--pairs", pairs, PAIRS), ("--variants", variants, VARIANTS)):
        bad = [v for v in given if v not in valid]
        if bad:
            p.error(f"{name}: unknown {', '.join(bad)}; valid: {', '.join(valid)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} logical)"
    header = (f"gpu_step.py on {where}, torch {torch.__version__}, image {args.image_size} px, "
              f"{args.steps} timed steps after {args.warmup} warm-up steps, {time.strftime('%Y-%m-%d')}")
    print(header, file=sys.stderr)
    results = {(pair, batch): run_pair(pair, batch, args, variants) for pair in pairs for batch in args.batch}
    text = f"{header}\n\n{table(results, args)}\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
